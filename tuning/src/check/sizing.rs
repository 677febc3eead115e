//! The rows that size the gateway: cores (and so shards) and memory. Memory is
//! judged against MemTotal with a quarter kept free for the kernel, the page cache
//! and slow consumers' send queues.

use super::{unknown, Options, Row, Status, UNIT_FILE};
use crate::host::Host;
use crate::needs;
use crate::shards;
use crate::units::{bytes, int};

/// Cores and shards: more shards than usable cores is a WARN.
pub(super) fn cores(host: &Host, s: u64, usable: Option<usize>, shards_source: &str) -> Row {
    match (&host.cpus_online, usable) {
        (_, None) => unknown(
            "cores",
            "cores -> shards",
            format!("{s} shards"),
            host.cpus_online
                .as_ref()
                .err()
                .map(String::as_str)
                .unwrap_or("unknown"),
            "Cores come from cpuinfo and self/status (Cpus_allowed_list).",
        ),
        (online, Some(u)) => {
            let value = match online {
                Ok(on) if *on != u => format!("{u} usable of {on} online"),
                _ => format!("{u} usable"),
            };
            let over = s as usize > u;
            Row {
                key: "cores",
                setting: "cores -> shards".into(),
                value,
                needed: format!(
                    "{s} shard{} ({shards_source}); auto = {}",
                    if s == 1 { "" } else { "s" },
                    shards::auto_shards(u)
                ),
                status: if over { Status::Warn } else { Status::Pass },
                fix: over.then(|| {
                    format!(
                        "{UNIT_FILE}: Environment=XCORD_SHARDS={}",
                        shards::auto_shards(u)
                    )
                }),
                why: if over {
                    format!("{s} shards on {u} cores: pinned executors share cores and steal each other's time. Rule: {}.", shards::RULE)
                } else {
                    format!("Rule: {}. `xcord-tune shards` explains it.", shards::RULE)
                },
            }
        }
    }
}

/// Memory: FAIL above MemTotal, WARN above three quarters of it.
pub(super) fn memory(host: &Host, o: &Options, s: u64) -> Row {
    let n = o.target;
    let mem_need = needs::memory(n, s, o.bytes_per_conn);
    match &host.mem_total {
        Err(e) => unknown(
            "memory",
            "memory (MemTotal)",
            format!("~{}", bytes(mem_need)),
            e,
            "",
        ),
        Ok(total) => {
            let budget = (*total as f64 * (1.0 - needs::MEM_RESERVE)) as u64;
            let status = if mem_need > *total {
                Status::Fail
            } else if mem_need > budget {
                Status::Warn
            } else {
                Status::Pass
            };
            let avail = host
                .mem_available
                .as_ref()
                .map(|a| format!(" ({} available)", bytes(*a)))
                .unwrap_or_default();
            Row {
                key: "memory",
                setting: "memory (MemTotal)".into(),
                value: format!("{}{avail}", bytes(*total)),
                needed: format!(
                    "~{} (<= {} = 75%)",
                    bytes(mem_need),
                    bytes(budget)
                ),
                status,
                fix: (status != Status::Pass).then(|| {
                    "more RAM, or fewer connections per host: see `xcord-tune capacity`".to_string()
                }),
                why: format!(
                    "{} base + {s} shards x {} replay buffer + {} connections x {} ({}). 25% stays free for the kernel, page cache and slow consumers' send queues.",
                    bytes(needs::BASE_RSS),
                    bytes(needs::REPLAY_PER_SHARD),
                    int(n),
                    bytes(o.bytes_per_conn),
                    o.bytes_per_conn_source
                ),
            }
        }
    }
}
