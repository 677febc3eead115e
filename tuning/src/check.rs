//! `xcord-tune check`: every host setting a gateway of N connections depends on,
//! its value, what N needs, PASS/WARN/FAIL, the exact line that fixes it, and why.
//!
//! FAIL means the gateway cannot reach N (it will refuse connections or not start);
//! WARN means it will get there but degrade under load or bursts; the process exits
//! non-zero only on FAIL.

use serde::Serialize;

use crate::host::{Host, Reading};
use crate::needs;
use crate::shards::{self, Shards};
use crate::units::{bytes, int, limit};

const SYSCTL_FILE: &str = "/etc/sysctl.d/99-xcord-gateway.conf";
const LIMITS_FILE: &str = "/etc/security/limits.d/xcord-gateway.conf";
const UNIT_FILE: &str = "xcord-gateway.service [Service]";

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
    let n = o.target;
    let usable = host.usable_cores();
    let cores_for_rule = usable.unwrap_or(1);
    let s = o.shards.resolve(cores_for_rule) as u64;
    let shards_source = match (o.shards, usable) {
        (Shards::Count(_), _) => "--shards".to_string(),
        (Shards::Auto, Some(c)) => format!("auto on {c} usable cores"),
        (Shards::Auto, None) => "auto; cores unknown, assumed 1".to_string(),
    };
    let fd_need = needs::fds_for(n, s);
    let rec_nofile = needs::recommended_nofile(n, s);
    let mut rows = Vec::new();

    // Cores and shards.
    rows.push(match (&host.cpus_online, usable) {
        (_, None) => unknown(
            "cores",
            "cores -> shards",
            format!("{s} shards"),
            host.cpus_online.as_ref().err().map(String::as_str).unwrap_or("unknown"),
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
                needed: format!("{s} shard{} ({shards_source}); auto = {}", if s == 1 { "" } else { "s" }, shards::auto_shards(u)),
                status: if over { Status::Warn } else { Status::Pass },
                fix: over.then(|| format!(
                    "{UNIT_FILE}: Environment=XCORD_SHARDS={}",
                    shards::auto_shards(u)
                )),
                why: if over {
                    format!("{s} shards on {u} cores: pinned executors share cores and steal each other's time. Rule: {}.", shards::RULE)
                } else {
                    format!("Rule: {}. `xcord-tune shards` explains it.", shards::RULE)
                },
            }
        }
    });

    // Memory.
    let mem_need = needs::memory(n, s, o.bytes_per_conn);
    rows.push(match &host.mem_total {
        Err(e) => unknown("memory", "memory (MemTotal)", format!("~{}", bytes(mem_need)), e, ""),
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
    });

    // Open files: hard, soft, nr_open, file-max.
    let nofile_fix_hard = format!(
        "{UNIT_FILE}: LimitNOFILE={rec_nofile}  (shell: `xcord hard nofile {rec_nofile}` in {LIMITS_FILE})"
    );
    let nofile_fix_soft = format!(
        "{UNIT_FILE}: LimitNOFILE={rec_nofile}  (shell: `xcord soft nofile {rec_nofile}` in {LIMITS_FILE})"
    );
    match &host.nofile {
        Err(e) => {
            rows.push(unknown(
                "nofile_hard",
                "ulimit -n (hard)",
                format!(">= {}", int(fd_need)),
                e,
                "",
            ));
            rows.push(unknown(
                "nofile_soft",
                "ulimit -n (soft)",
                format!(">= {}", int(fd_need)),
                e,
                "",
            ));
        }
        Ok(l) => {
            let hard_ok = l.hard >= fd_need;
            rows.push(Row {
                key: "nofile_hard",
                setting: "ulimit -n (hard)".into(),
                value: limit(l.hard),
                needed: format!(">= {}", int(fd_need)),
                status: if hard_ok { Status::Pass } else { Status::Fail },
                fix: (!hard_ok).then(|| nofile_fix_hard.clone()),
                why: format!(
                    "One fd per connection + {} + {} per shard: N + 64 + 8 x {s}. The gateway raises its soft limit to this hard limit and sets --max-connections = nofile - 64 - 8 x shards = {} here.",
                    needs::FD_BASE,
                    needs::FD_PER_SHARD,
                    int(needs::connections_for_nofile(l.hard, s))
                ),
            });
            let soft_ok = l.soft >= fd_need;
            rows.push(Row {
                key: "nofile_soft",
                setting: "ulimit -n (soft)".into(),
                value: limit(l.soft),
                needed: format!(">= {}", int(fd_need)),
                status: if soft_ok { Status::Pass } else { Status::Warn },
                fix: (!soft_ok).then(|| nofile_fix_soft.clone()),
                why: "The gateway raises soft to hard at start, so a low soft limit alone does not stop it; xcord-loadtest and other tools on the host may not.".into(),
            });
        }
    }
    rows.push(threshold(
        "fs.nr_open",
        "fs.nr_open",
        &host.nr_open,
        fd_need,
        Status::Fail,
        format!(
            "{SYSCTL_FILE}: fs.nr_open = {}",
            needs::recommended_nr_open(n, s)
        ),
        "The kernel's ceiling for any process's nofile: LimitNOFILE above it fails to apply."
            .into(),
    ));
    let fm_need = needs::file_max(n, s, o.with_loadgen);
    rows.push(match &host.file_max {
        Err(e) => unknown("fs.file-max", "fs.file-max", format!(">= {}", int(fm_need)), e, ""),
        Ok(v) => {
            let status = if *v < fm_need {
                Status::Fail
            } else if *v < fm_need.saturating_add(needs::FILE_MAX_MARGIN) {
                Status::Warn
            } else {
                Status::Pass
            };
            Row {
                key: "fs.file-max",
                setting: "fs.file-max".into(),
                value: v.to_string(),
                needed: format!(">= {} + {} for the rest", int(fm_need), int(needs::FILE_MAX_MARGIN)),
                status,
                fix: (status != Status::Pass).then(|| format!("{SYSCTL_FILE}: fs.file-max = {}", needs::recommended_file_max(n, s))),
                why: if o.with_loadgen {
                    "System-wide open files: the gateway's plus the load generator's (it holds the other end of every connection), plus the rest of the host.".into()
                } else {
                    "System-wide open files: the gateway's plus the rest of the host.".into()
                },
            }
        }
    });

    // Accept path.
    rows.push(threshold(
        "net.core.somaxconn",
        "net.core.somaxconn",
        &host.somaxconn,
        needs::LISTEN_BACKLOG,
        Status::Warn,
        format!("{SYSCTL_FILE}: net.core.somaxconn = {}", needs::LISTEN_BACKLOG),
        format!("Caps each shard's accept queue; the gateway asks listen({}). Below it, a reconnect storm overflows the queue (ListenOverflows in /proc/net/netstat) and clients retry after 1 s, 3 s, 7 s...", needs::LISTEN_BACKLOG),
    ));
    let syn_fix = format!(
        "{SYSCTL_FILE}: net.ipv4.tcp_max_syn_backlog = {}",
        needs::SYN_BACKLOG_RECOMMENDED
    );
    rows.push(match (&host.syn_backlog, &host.syncookies) {
        (Err(e), _) => unknown(
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.tcp_max_syn_backlog",
            format!(">= {}", int(needs::LISTEN_BACKLOG)),
            e,
            "",
        ),
        (Ok(v), cookies) => {
            let cookies_on = matches!(cookies, Ok(c) if *c >= 1);
            let low = *v < needs::LISTEN_BACKLOG;
            let status = if low && !cookies_on {
                Status::Warn
            } else {
                Status::Pass
            };
            Row {
                key: "net.ipv4.tcp_max_syn_backlog",
                setting: "net.ipv4.tcp_max_syn_backlog".into(),
                value: match cookies {
                    Ok(c) => format!("{v} (tcp_syncookies={c})"),
                    Err(_) => format!("{v} (tcp_syncookies unknown)"),
                },
                needed: format!(">= {}, or syncookies on", int(needs::LISTEN_BACKLOG)),
                status,
                fix: (status != Status::Pass).then(|| format!("{syn_fix}  and  net.ipv4.tcp_syncookies = 1")),
                why: if cookies_on {
                    "Half-open connections per listener. With tcp_syncookies on, the kernel bounds the SYN queue by the accept backlog and answers past it with cookies, so this value is not the limit.".into()
                } else {
                    "Half-open connections per listener. With tcp_syncookies off, SYNs are dropped once the queue nears this value: handshakes stall during reconnect storms.".into()
                },
            }
        }
    });

    // Ephemeral ports.
    rows.push(match &host.port_range {
        Err(e) => unknown("net.ipv4.ip_local_port_range", "net.ipv4.ip_local_port_range", "a few (Redis)".into(), e, ""),
        Ok((lo, hi)) => {
            let size = (hi - lo).saturating_add(1);
            let short = o.with_loadgen && size < n;
            Row {
                key: "net.ipv4.ip_local_port_range",
                setting: "net.ipv4.ip_local_port_range".into(),
                value: format!("{lo} {hi} ({} ports)", int(size)),
                needed: if o.with_loadgen {
                    format!(">= {} per load-generator source IP", int(n))
                } else {
                    "a few (Redis links)".into()
                },
                status: if short { Status::Warn } else { Status::Pass },
                fix: short.then(|| format!("{SYSCTL_FILE}: net.ipv4.ip_local_port_range = 1024 65535  (or more source IPs for the load generator)")),
                why: "Accepted connections use no local ports; only outbound ones do (the gateway's Redis links, and a load generator's N client sockets per source IP, which is why --with-loadgen checks it against N).".into(),
            }
        }
    });

    // Kernel socket memory.
    let tcp_need = needs::tcp_mem_pages(n);
    let rec_tcp = needs::recommended_tcp_mem(n);
    let tcp_high_bytes = host
        .tcp_mem
        .as_ref()
        .ok()
        .map(|m| m[2].saturating_mul(needs::PAGE));
    rows.push(match &host.tcp_mem {
        Err(e) => unknown("net.ipv4.tcp_mem", "net.ipv4.tcp_mem (pages)", format!("pressure >= {}", int(tcp_need)), e, ""),
        Ok([low, pressure, high]) => {
            let status = if *high < tcp_need {
                Status::Fail
            } else if *pressure < tcp_need {
                Status::Warn
            } else {
                Status::Pass
            };
            Row {
                key: "net.ipv4.tcp_mem",
                setting: "net.ipv4.tcp_mem (pages)".into(),
                value: format!("{low} {pressure} {high}"),
                needed: format!("pressure >= {} ({} x {})", int(tcp_need), int(n), bytes(needs::KERNEL_BYTES_PER_CONN)),
                status,
                fix: (status != Status::Pass).then(|| format!(
                    "{SYSCTL_FILE}: net.ipv4.tcp_mem = {} {} {}",
                    rec_tcp[0].max(*low), rec_tcp[1].max(*pressure), rec_tcp[2].max(*high)
                )),
                why: format!("All TCP sockets' buffer memory, in {}-byte pages. Above `pressure` the kernel shrinks every socket's buffers (throughput falls); at `high` it refuses to queue data. Assumes {} of socket memory per connection on average; keep `high` well below RAM.", needs::PAGE, bytes(needs::KERNEL_BYTES_PER_CONN)),
            }
        }
    });
    for (key, setting, reading, what) in [
        (
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_rmem",
            &host.tcp_rmem,
            "receive",
        ),
        (
            "net.ipv4.tcp_wmem",
            "net.ipv4.tcp_wmem",
            &host.tcp_wmem,
            "send",
        ),
    ] {
        rows.push(match reading {
            Err(e) => unknown(key, setting, "N x default <= tcp_mem high".into(), e, ""),
            Ok([min, def, max]) => {
                let worst = n.saturating_mul(*def);
                // Only a default above what we recommend is worth changing: at 16 KiB
                // the answer to "too much for tcp_mem" is the tcp_mem row.
                let status = match tcp_high_bytes {
                    Some(h) if worst > h && *def > needs::SOCKET_BUFFER_DEFAULT => Status::Warn,
                    _ => Status::Pass,
                };
                Row {
                    key,
                    setting: setting.into(),
                    value: format!("{min} {def} {max}"),
                    needed: match tcp_high_bytes {
                        Some(h) => format!("default <= {}, or {} x {} = {} <= tcp_mem high {}", bytes(needs::SOCKET_BUFFER_DEFAULT), int(n), bytes(*def), bytes(worst), bytes(h)),
                        None => format!("default <= {}, or {} x {} = {} <= tcp_mem high (unknown)", bytes(needs::SOCKET_BUFFER_DEFAULT), int(n), bytes(*def), bytes(worst)),
                    },
                    status,
                    fix: (status != Status::Pass).then(|| format!("{SYSCTL_FILE}: {key} = {min} {} {max}", needs::SOCKET_BUFFER_DEFAULT)),
                    why: format!("The middle value is each socket's starting {what} buffer. If every connection filled it at once the total would pass tcp_mem's `high`; a fan-out gateway's clients send little, and the gateway bounds its own per-connection send queue (--send-queue-bytes), so {} is enough to start with (autotuning grows busy sockets up to the max).", bytes(needs::SOCKET_BUFFER_DEFAULT)),
                }
            }
        });
    }
    let nd_need = needs::netdev_backlog(n);
    rows.push(threshold(
        "net.core.netdev_max_backlog",
        "net.core.netdev_max_backlog",
        &host.netdev_max_backlog,
        nd_need,
        Status::Warn,
        format!("{SYSCTL_FILE}: net.core.netdev_max_backlog = {}", needs::NETDEV_RECOMMENDED),
        format!("Per-CPU queue of received packets awaiting the stack (and every loopback packet, so it matters when the load generator is local). Fan-out to {} sockets makes bursts of ACKs; overflow shows as the 2nd column of /proc/net/softnet_stat.", int(n)),
    ));

    // Locked memory.
    let ml_need = needs::memlock(s);
    let ml_rec = needs::recommended_memlock(s);
    rows.push(match &host.memlock {
        Err(e) => unknown("memlock", "ulimit -l (memlock, soft)", format!(">= {}", bytes(ml_need)), e, ""),
        Ok(l) => {
            let ok = l.soft >= ml_need;
            Row {
                key: "memlock",
                setting: "ulimit -l (memlock, soft)".into(),
                value: format!("{} (hard {})", bytes(l.soft), bytes(l.hard)),
                needed: format!(">= {} ({s} x {})", bytes(ml_need), bytes(needs::IO_MEMORY_PER_SHARD + needs::RING_MEMLOCK_PER_SHARD)),
                status: if ok { Status::Pass } else { Status::Fail },
                fix: (!ok).then(|| format!(
                    "{UNIT_FILE}: LimitMEMLOCK={}M  (shell: `xcord soft memlock {}` and `xcord hard memlock {}` (KiB) in {LIMITS_FILE})",
                    ml_rec >> 20, ml_rec >> 10, ml_rec >> 10
                )),
                why: format!(
                    "Each shard registers {} of io memory with io_uring (pinned pages) plus its rings on kernels before 5.12; a shard that cannot lock it does not start. io_uring charges the pages to the user, so one gateway per user.",
                    bytes(needs::IO_MEMORY_PER_SHARD)
                ),
            }
        }
    });

    // io_uring.
    rows.push(io_uring_row(host));

    // What the host holds as configured.
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
    let holds = Holds {
        by_fds,
        by_memory,
        by_tcp_mem,
        connections: binding.map(|(_, v)| v),
        binding: binding.map(|(k, _)| k),
    };

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

    let status = rows.iter().map(|r| r.status).max().unwrap_or(Status::Pass);
    Report {
        target_connections: n,
        shards: s as usize,
        shards_source,
        shard_rule: shards::RULE,
        bytes_per_connection: o.bytes_per_conn,
        bytes_per_connection_source: o.bytes_per_conn_source.clone(),
        rows,
        holds,
        notes,
        status,
    }
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

fn io_uring_row(host: &Host) -> Row {
    let mut status = Status::Pass;
    let mut value = Vec::new();
    let mut fix = None;
    let mut why = vec!["Every shard is a glommio executor on io_uring: no io_uring, no gateway (kernel >= 5.8 for the operations glommio uses).".to_string()];
    match &host.kernel {
        Ok(k) => {
            value.push(format!("kernel {}", k.release));
            if !k.at_least(5, 8) {
                status = Status::Fail;
                fix = Some("upgrade the kernel to 5.8 or later (5.15+ recommended)".to_string());
            }
        }
        Err(e) => {
            value.push("kernel unknown".into());
            status = status.max(Status::Warn);
            why.push(format!("Cannot read the kernel release: {e}."));
        }
    }
    match &host.io_uring_disabled {
        Ok(None) => {}
        Ok(Some(0)) => value.push("io_uring_disabled=0".into()),
        Ok(Some(1)) => {
            value.push("io_uring_disabled=1".into());
            status = status.max(Status::Warn);
            fix.get_or_insert_with(|| format!("{SYSCTL_FILE}: kernel.io_uring_disabled = 0  (or run the gateway in group kernel.io_uring_group)"));
            why.push("io_uring_disabled=1 allows io_uring only to root and the group in kernel.io_uring_group.".into());
        }
        Ok(Some(v)) => {
            value.push(format!("io_uring_disabled={v}"));
            status = Status::Fail;
            fix.get_or_insert_with(|| format!("{SYSCTL_FILE}: kernel.io_uring_disabled = 0"));
            why.push("io_uring_disabled=2 forbids io_uring to everyone.".into());
        }
        Err(e) => {
            value.push("io_uring_disabled unreadable".into());
            status = status.max(Status::Warn);
            why.push(format!("Cannot read kernel.io_uring_disabled: {e}."));
        }
    }
    match &host.io_uring_probe {
        None => {}
        Some(Ok(())) => value.push("probe ok".into()),
        Some(Err(e)) => {
            value.push("probe failed".into());
            status = Status::Fail;
            fix.get_or_insert_with(|| "allow io_uring: kernel.io_uring_disabled = 0, and a seccomp profile that permits io_uring_setup/io_uring_enter/io_uring_register".to_string());
            why.push(format!("A real io_uring_setup failed: {e}."));
        }
    }
    Row {
        key: "io_uring",
        setting: "io_uring".into(),
        value: value.join(", "),
        needed: "kernel >= 5.8, enabled".into(),
        status,
        fix,
        why: why.join(" "),
    }
}

/// The human table, the "why" notes and the summary.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "xcord-tune check: {} connections, {} shard{} ({})\n\n",
        int(r.target_connections),
        r.shards,
        if r.shards == 1 { "" } else { "s" },
        r.shards_source
    ));
    let head = ["SETTING", "VALUE", "NEEDED", "STATUS", "FIX"];
    let cells: Vec<[String; 5]> = r
        .rows
        .iter()
        .map(|x| {
            [
                x.setting.clone(),
                x.value.clone(),
                x.needed.clone(),
                x.status.label().to_string(),
                x.fix.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut w = head.map(|h| h.len());
    for c in &cells {
        for i in 0..4 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |c: [&str; 5]| -> String {
        let mut s = String::new();
        for i in 0..4 {
            s.push_str(c[i]);
            s.push_str(&" ".repeat(w[i] - c[i].chars().count() + 2));
        }
        s.push_str(c[4]);
        s.push('\n');
        s
    };
    o.push_str(&line(head));
    for c in &cells {
        o.push_str(&line([&c[0], &c[1], &c[2], &c[3], &c[4]]));
    }
    o.push_str("\nWhy:\n");
    for x in &r.rows {
        o.push_str(&format!(
            "  {} [{}]: {}\n",
            x.setting,
            x.status.label(),
            x.why
        ));
    }
    o.push_str("\nAs configured this host holds:\n");
    let show = |v: Option<u64>| v.map(int).unwrap_or_else(|| "unknown".into());
    o.push_str(&format!(
        "  by fds     {} connections  (hard nofile - 64 - 8 x {} shards)\n",
        show(r.holds.by_fds),
        r.shards
    ));
    o.push_str(&format!(
        "  by memory  {} connections  (75% of MemTotal, {} per connection: {})\n",
        show(r.holds.by_memory),
        bytes(r.bytes_per_connection),
        r.bytes_per_connection_source
    ));
    o.push_str(&format!(
        "  by tcp_mem {} connections  (tcp_mem pressure at {} per connection)\n",
        show(r.holds.by_tcp_mem),
        bytes(needs::KERNEL_BYTES_PER_CONN)
    ));
    if let (Some(c), Some(b)) = (r.holds.connections, r.holds.binding) {
        o.push_str(&format!("  => about {} connections, bound by {b}; CPU (deliveries/s) needs a measurement: `xcord-tune capacity --from RESULT.json`\n", int(c)));
    }
    o.push_str(&format!(
        "\nShards: {} ({}). Rule: {}.\n",
        r.shards, r.shards_source, r.shard_rule
    ));
    for n in &r.notes {
        o.push_str(&format!("Note: {n}\n"));
    }
    let fails = r.rows.iter().filter(|x| x.status == Status::Fail).count();
    let warns = r.rows.iter().filter(|x| x.status == Status::Warn).count();
    o.push_str(&format!(
        "\nResult: {} ({fails} FAIL, {warns} WARN)\n",
        r.status.label()
    ));
    o
}
