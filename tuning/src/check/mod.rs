//! `xcord-tune check`: every host setting a gateway of N connections depends on,
//! its value, what N needs, PASS/WARN/FAIL, the exact line that fixes it, and why.
//!
//! FAIL means the gateway cannot reach N (it will refuse connections or not start);
//! WARN means it will get there but degrade under load or bursts; the process exits
//! non-zero only on FAIL. A value that cannot be read is a WARN that says why.
//!
//! The rows, in the order of the table: [`sizing`] (cores, memory), [`files`]
//! (open files), [`network`] (accept path, ports, socket memory), [`kernel`]
//! (locked memory, io_uring); [`render`] prints the report.

use serde::Serialize;

mod files;
mod kernel;
mod network;
mod render;
mod sizing;

use crate::host::{Host, Reading};
use crate::needs;
use crate::shards::{self, Shards};
use crate::units::int;

pub use render::render;

pub(crate) const SYSCTL_FILE: &str = "/etc/sysctl.d/99-xcord-gateway.conf";
pub(crate) const LIMITS_FILE: &str = "/etc/security/limits.d/xcord-gateway.conf";
pub(crate) const UNIT_FILE: &str = "xcord-gateway.service [Service]";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable identifier (the sysctl name, or `nofile_hard`, `memlock`, ...).
    pub key: &'static str,
    pub setting: String,
    pub value: String,
    pub needed: String,
    pub status: Status,
    /// The line that fixes it, and where it goes; `None` when nothing needs fixing.
    pub fix: Option<String>,
    pub why: String,
}

/// What `check` is asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: u64,
    pub shards: Shards,
    /// Gateway + kernel memory per connection, and where the figure comes from.
    pub bytes_per_conn: u64,
    pub bytes_per_conn_source: String,
    /// A load generator (xcord-loadtest) runs on this host too.
    pub with_loadgen: bool,
}

/// How many connections the host holds as configured, by each limit.
#[derive(Debug, Clone, Serialize)]
pub struct Holds {
    pub by_fds: Option<u64>,
    pub by_memory: Option<u64>,
    pub by_tcp_mem: Option<u64>,
    pub connections: Option<u64>,
    pub binding: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target_connections: u64,
    pub shards: usize,
    pub shards_source: String,
    pub shard_rule: &'static str,
    pub bytes_per_connection: u64,
    pub bytes_per_connection_source: String,
    pub rows: Vec<Row>,
    pub holds: Holds,
    pub notes: Vec<String>,
    pub status: Status,
}

/// Evaluate the host against the target.
pub fn evaluate(host: &Host, o: &Options) -> Report {
    let usable = host.usable_cores();
    let s = o.shards.resolve(usable.unwrap_or(1)) as u64;
    let shards_source = match (o.shards, usable) {
        (Shards::Count(_), _) => "--shards".to_string(),
        (Shards::Auto, Some(c)) => format!("auto on {c} usable cores"),
        (Shards::Auto, None) => "auto; cores unknown, assumed 1".to_string(),
    };
    let mut rows = vec![
        sizing::cores(host, s, usable, &shards_source),
        sizing::memory(host, o, s),
    ];
    rows.extend(files::nofile(host, o, s));
    rows.push(files::file_max(host, o, s));
    rows.extend(network::accept(host));
    rows.push(network::ports(host, o));
    rows.extend(network::socket_memory(host, o));
    rows.push(kernel::memlock(host, s));
    rows.push(kernel::io_uring(host));
    let status = rows.iter().map(|r| r.status).max().unwrap_or(Status::Pass);
    Report {
        target_connections: o.target,
        shards: s as usize,
        shards_source,
        shard_rule: shards::RULE,
        bytes_per_connection: o.bytes_per_conn,
        bytes_per_connection_source: o.bytes_per_conn_source.clone(),
        rows,
        holds: holds(host, o, s),
        notes: notes(host),
        status,
    }
}

/// How many connections the host holds as configured, by each limit.
fn holds(host: &Host, o: &Options, s: u64) -> Holds {
    let by_fds = host
        .nofile
        .as_ref()
        .ok()
        .map(|l| needs::connections_for_nofile(l.hard, s));
    let by_memory = host
        .mem_total
        .as_ref()
        .ok()
        .map(|t| needs::connections_for_memory(*t, s, o.bytes_per_conn));
    let by_tcp_mem = host
        .tcp_mem
        .as_ref()
        .ok()
        .map(|m| m[1].saturating_mul(needs::PAGE) / needs::KERNEL_BYTES_PER_CONN);
    let binding = [
        ("fds", by_fds),
        ("memory", by_memory),
        ("tcp_mem", by_tcp_mem),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .min_by_key(|(_, v)| *v);
    Holds {
        by_fds,
        by_memory,
        by_tcp_mem,
        connections: binding.map(|(_, v)| v),
        binding: binding.map(|(k, _)| k),
    }
}

/// Where the limits were read, and how to apply the fixes.
fn notes(host: &Host) -> Vec<String> {
    let mut notes = Vec::new();
    if host.process != "self" {
        notes.push(format!(
            "Limits and CPU mask are those of process {} (--pid), not this shell's.",
            host.process
        ));
    } else if host.live {
        notes.push("Limits are this shell's (inherited by what it starts); under systemd the unit's LimitNOFILE/LimitMEMLOCK apply instead: check the running gateway with `xcord-tune check --pid $(pidof xcord-gateway)`.".to_string());
    }
    notes.push("Sysctl fixes: add the line to the file named, then `sudo sysctl --system`; `xcord-tune profile` writes all of them.".to_string());
    notes
}

/// A row for a value that could not be read: WARN, with the reason.
fn unknown(key: &'static str, setting: &str, needed: String, reason: &str, why: &str) -> Row {
    Row {
        key,
        setting: setting.into(),
        value: "unreadable".into(),
        needed,
        status: Status::Warn,
        fix: None,
        why: format!("Cannot tell: {reason}. {why}")
            .trim_end()
            .to_string(),
    }
}

/// `value >= need`, else `below`.
fn threshold(
    key: &'static str,
    setting: &str,
    r: &Reading<u64>,
    need: u64,
    below: Status,
    fix: String,
    why: String,
) -> Row {
    match r {
        Err(e) => unknown(key, setting, format!(">= {}", int(need)), e, &why),
        Ok(v) => {
            let ok = *v >= need;
            Row {
                key,
                setting: setting.into(),
                value: v.to_string(),
                needed: format!(">= {}", int(need)),
                status: if ok { Status::Pass } else { below },
                fix: (!ok).then_some(fix),
                why,
            }
        }
    }
}
