//! The network rows: the accept path (`somaxconn`, the SYN backlog), ephemeral
//! ports (which only outbound sockets use), and kernel socket memory (`tcp_mem`,
//! the default socket buffers, the receive backlog). Socket memory is assumed per
//! connection on average (`needs::KERNEL_BYTES_PER_CONN`).

use super::{threshold, unknown, Options, Row, Status, SYSCTL_FILE};
use crate::host::Host;
use crate::needs;
use crate::units::{bytes, int};

/// `somaxconn` and `tcp_max_syn_backlog` (which syncookies make moot).
pub(super) fn accept(host: &Host) -> Vec<Row> {
    let mut rows = Vec::new();
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

    rows
}

/// The local port range: only a local load generator's sockets use it.
pub(super) fn ports(host: &Host, o: &Options) -> Row {
    let n = o.target;
    match &host.port_range {
        Err(e) => unknown(
            "net.ipv4.ip_local_port_range",
            "net.ipv4.ip_local_port_range",
            "a few (Redis)".into(),
            e,
            "",
        ),
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
    }
}

/// `tcp_mem`, `tcp_rmem`/`tcp_wmem` and `netdev_max_backlog`.
pub(super) fn socket_memory(host: &Host, o: &Options) -> Vec<Row> {
    let n = o.target;
    let mut rows = Vec::new();
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

    rows
}
