//! The three per-host limits: connections by memory, connections by file
//! descriptors, deliveries per second by CPU. Each takes the measurement the result
//! gives (or the option that overrides it), shows its arithmetic, and when the
//! input is missing says so in `missing` instead of guessing.

use super::{HostModel, Limits, Notes, Options};
use crate::result::Measurement;
use crate::units::{bytes, float, int};

/// Connections by memory: usable RAM less the fixed cost, over the cost of one
/// connection (gateway RSS plus kernel socket memory).
pub(super) fn memory(
    m: &Measurement,
    o: &Options,
    h: &HostModel,
    limits: &mut Limits,
    n: &mut Notes,
) {
    let (mem_bytes, shards) = (h.mem_bytes, h.shards);
    let Notes {
        assumptions,
        warnings,
        missing,
        ar,
    } = n;
    ar.push("Connections by memory".to_string());
    let usable = mem_bytes as f64 * (1.0 - o.mem_reserve);
    ar.push(format!(
        "  usable memory   = {} B x (1 - {} reserve) = {} B",
        int(mem_bytes),
        o.mem_reserve,
        float(usable, 0)
    ));
    assumptions.push(format!(
        "Memory reserve: {:.0}% of RAM stays free for the kernel, page cache and bursts (a slow consumer holds up to --send-queue-bytes before it is closed 4010).",
        o.mem_reserve * 100.0
    ));
    let (base, base_src) = base_rss(m, o, assumptions);
    let replay = shards as f64 * o.replay_buffer_bytes as f64;
    let fixed = base + replay;
    ar.push(format!(
        "  fixed cost      = {} B {base_src} + {shards} shards x {} B replay buffer = {} B",
        float(base, 0),
        int(o.replay_buffer_bytes),
        float(fixed, 0)
    ));
    assumptions.push(format!(
        "Each shard's replay buffer (--replay-buffer-bytes, {}) is counted as full.",
        bytes(o.replay_buffer_bytes)
    ));
    let user_per_conn = user_bytes_per_connection(m, o, warnings);
    let kernel = o.kernel_bytes_per_conn as f64;
    assumptions.push(format!(
        "Kernel memory per connection (socket, file, queued skbs; not in the gateway's RSS): {}.",
        bytes(o.kernel_bytes_per_conn)
    ));
    match user_per_conn {
        Some((u, src)) => {
            let per = u + kernel;
            ar.push(format!(
                "  per connection  = {} B {src} + {} B kernel = {} B",
                float(u, 1),
                int(o.kernel_bytes_per_conn),
                float(per, 1)
            ));
            let l = ((usable - fixed) / per).floor().max(0.0) as u64;
            ar.push(format!(
                "  limit           = ({} - {}) / {} = {} connections",
                float(usable, 0),
                float(fixed, 0),
                float(per, 1),
                int(l)
            ));
            limits.connections_by_memory = Some(l);
            limits.bytes_per_connection = Some(per);
        }
        None => {
            ar.push("  per connection  = unknown".into());
            missing.push("connections by memory: no RSS per connection in the result (gateway.rss_bytes_per_connection, or rss before/after connect with connections.established); pass --bytes-per-connection B".into());
        }
    }
}

/// The gateway's fixed memory and where the figure comes from.
fn base_rss(m: &Measurement, o: &Options, assumptions: &mut Vec<String>) -> (f64, &'static str) {
    // With the marginal slope measured, the fixed cost is the line's intercept:
    // RSS after connect less the marginal cost of the connections it holds. It
    // includes what the first connections cost once (allocator segments, tables
    // grown by doubling), which RSS before connect does not.
    let settled = m.rss_end.or(m.rss_after);
    let intercept = match (
        o.bytes_per_conn,
        m.rss_per_connection_marginal,
        settled,
        m.established,
    ) {
        (None, Some(mc), Some(a), Some(e)) if mc > 0.0 && e > 0.0 => {
            Some(a - e * mc).filter(|i| m.rss_before.is_none_or(|b| *i >= b))
        }
        _ => None,
    };
    match (intercept, m.rss_before) {
        (Some(i), _) => (
            i,
            "settled RSS at the end of the run less the marginal cost of its connections",
        ),
        (None, Some(b)) => (b, "measured RSS before connect"),
        (None, None) => {
            assumptions.push(format!(
                "Base RSS not measured: assumed {}.",
                bytes(crate::needs::BASE_RSS)
            ));
            (crate::needs::BASE_RSS as f64, "assumed base RSS")
        }
    }
}

/// The gateway's RSS per connection and where it comes from: the option, the
/// measured marginal slope, the measured average, or one derived from the RSS
/// before and after connecting.
fn user_bytes_per_connection(
    m: &Measurement,
    o: &Options,
    warnings: &mut Vec<String>,
) -> Option<(f64, String)> {
    match (o.bytes_per_conn, m.rss_per_connection) {
        (Some(b), _) => Some((b, "RSS per connection (--bytes-per-connection)".into())),
        (None, _) if m.rss_per_connection_marginal.is_some_and(|b| b > 0.0) => Some((
            m.rss_per_connection_marginal.unwrap_or_default(),
            "RSS per connection (measured: slope over the last 3/4 of the connect phase)".into(),
        )),
        (None, Some(b)) if b > 0.0 => Some((b, "RSS per connection (measured)".into())),
        (None, Some(b)) => {
            warnings.push(format!(
                "gateway.rss_bytes_per_connection is {b}: RSS did not grow with connections; the measurement is unusable."
            ));
            None
        }
        (None, None) => match (m.rss_before, m.rss_after, m.established) {
            (Some(b), Some(a), Some(e)) if e > 0.0 && a > b => Some((
                (a - b) / e,
                format!(
                    "RSS per connection (({} - {}) / {} established)",
                    float(a, 0),
                    float(b, 0),
                    int(e as u64)
                ),
            )),
            _ => None,
        },
    }
}

/// Connections by file descriptors: the gateway's own `--max-connections` rule.
pub(super) fn fds(h: &HostModel, limits: &mut Limits, n: &mut Notes) {
    let (nofile, shards, ar) = (h.nofile, h.shards, &mut n.ar);
    let by_fds = crate::needs::connections_for_nofile(nofile, shards);
    ar.push("Connections by file descriptors".to_string());
    ar.push(format!(
        "  limit           = {} nofile - {} - {} x {shards} shards = {} connections",
        int(nofile),
        crate::needs::FD_BASE,
        crate::needs::FD_PER_SHARD,
        int(by_fds)
    ));
    limits.connections_by_fds = by_fds;
}

/// Deliveries per second by CPU: the cores the gateway may use over the measured
/// cost of a million deliveries; and the ramp's saturation point as a cross-check.
pub(super) fn cpu(m: &Measurement, o: &Options, h: &HostModel, limits: &mut Limits, n: &mut Notes) {
    let cores = h.cores;
    let Notes {
        assumptions,
        missing,
        ar,
        ..
    } = n;
    ar.push("Deliveries per second by CPU".to_string());
    let cost: Option<(f64, String)> = match (o.cpu_seconds_per_million, m.cpu_seconds_per_million) {
        (Some(c), _) => Some((c, "(--cpu-seconds-per-million)".into())),
        (None, Some(c)) if c > 0.0 => Some((c, "(measured)".into())),
        _ => match (m.cpu_seconds_measure, m.deliveries_received) {
            (Some(cpu), Some(r)) if r > 0.0 && cpu > 0.0 => {
                let c = cpu / r * 1e6;
                Some((
                    c,
                    format!(
                        "({} CPU-s / {} deliveries x 10^6)",
                        float(cpu, 3),
                        int(r as u64)
                    ),
                ))
            }
            _ => None,
        },
    };
    assumptions.push(format!(
        "CPU: the gateway may use {:.0}% of all {cores} cores (one gateway per host; the rest absorbs bursts). The measured cost counts every gateway thread (shards and bus), not the load generator, and is taken to be the same per delivery at any shard count.",
        o.cpu_target * 100.0
    ));
    match &cost {
        Some((c, src)) if *c > 0.0 => {
            let l = cores as f64 * o.cpu_target * 1e6 / c;
            ar.push(format!(
                "  cost            = {} CPU-s per 10^6 deliveries {src}",
                float(*c, 3)
            ));
            ar.push(format!(
                "  limit           = {cores} cores x {} x 10^6 / {} = {} deliveries/s",
                o.cpu_target,
                float(*c, 3),
                float(l, 0)
            ));
            limits.deliveries_per_sec_by_cpu = Some(l);
            limits.cpu_seconds_per_million_deliveries = Some(*c);
        }
        _ => {
            ar.push("  cost            = unknown".into());
            missing.push("deliveries/s by CPU: no CPU cost in the result (gateway.cpu_seconds_per_million_deliveries, or gateway.cpu_seconds_measure with deliveries.received); pass --cpu-seconds-per-million S".into());
        }
    }
    if let (Some(sat), Some(tc), Some((c, _))) =
        (m.saturation_deliveries_per_sec, m.host_cores, &cost)
    {
        let model = tc * 1e6 / c;
        ar.push(format!(
            "  cross-check     = ramp saturation measured {} deliveries/s on the {} test cores; the model at 100% of them gives {} (not used above)",
            float(sat, 0),
            float(tc, 0),
            float(model, 0)
        ));
    }
}
