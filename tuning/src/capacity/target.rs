//! From limits to hosts: the test's traffic per connection, the deliveries a target
//! asks for, the CPU limit expressed in connections, what one host holds, and how
//! many hosts the target needs with the utilisation and headroom of each resource.
//!
//! A limit of zero makes its host count "impossible" (`u64::MAX`), never a division
//! by zero; a limit that is unknown leaves the count a lower bound.

use super::render::opt_int;
use super::{HostCapacity, Limits, Notes, Options, Target, Usage};
use crate::result::Measurement;
use crate::units::{ceil_div, float, int};

/// The deliveries a plan works with, and where the figure comes from.
pub(super) type Deliveries = Option<(f64, String)>;

/// What the test's traffic was.
pub(super) struct Traffic {
    /// Subscribers per event.
    fanout: Option<f64>,
    /// (deliveries/s, connections, deliveries/s per connection).
    per_conn: Option<(f64, f64, f64)>,
}

impl Traffic {
    pub(super) fn of(m: &Measurement) -> Traffic {
        let fanout = m.subscribers_per_channel.filter(|f| *f > 0.0).or_else(|| {
            match (m.per_sec_expected, m.rate_events_per_sec) {
                (Some(d), Some(r)) if r > 0.0 => Some(d / r),
                _ => None,
            }
        });
        let rate = m.per_sec_achieved.filter(|r| *r > 0.0).or_else(|| {
            match (m.deliveries_received, m.duration_s) {
                (Some(r), Some(d)) if d > 0.0 => Some(r / d),
                _ => None,
            }
        });
        let per_conn = match (rate, m.established) {
            (Some(r), Some(e)) if e > 0.0 => Some((r, e, r / e)),
            _ => None,
        };
        Traffic { fanout, per_conn }
    }
}

/// The target's deliveries per second: its event rate times the fan-out, or else
/// its connections at the test's traffic per connection.
pub(super) fn deliveries(o: &Options, test: &Traffic, n: &mut Notes) -> Deliveries {
    if let Some(r) = o.target_events_per_sec {
        let Some(f) = o.fanout.or(test.fanout) else {
            n.missing.push("target deliveries: --target-events-per-sec needs a fan-out (subscribers per event): the result has no config.subscribers_per_channel; pass --fanout F".into());
            return None;
        };
        let src = if o.fanout.is_some() {
            "--fanout"
        } else {
            "the test's subscribers per channel"
        };
        if let (Some(tf), Some(f)) = (test.fanout, o.fanout) {
            if f < tf {
                n.warnings.push(format!(
                    "Target fan-out {} is below the test's {}: per-event work (parse, route) is spread over fewer deliveries, so each delivery costs more than measured.",
                    float(f, 1),
                    float(tf, 1)
                ));
            }
        }
        n.assumptions.push("Every node receives every published event (Redis PSUBSCRIBE events:*), and subscribers are spread evenly over hosts, so each host delivers 1/H of the deliveries.".into());
        Some((
            r * f,
            format!(
                "{} events/s x {} subscribers per event ({src})",
                float(r, 1),
                float(f, 1)
            ),
        ))
    } else if let (Some(c), Some((_, _, d))) = (o.target_connections, test.per_conn) {
        Some((
            c as f64 * d,
            format!(
                "{} connections x {} deliveries/s per connection (the test's traffic)",
                int(c),
                float(d, 3)
            ),
        ))
    } else {
        None
    }
}

/// The CPU limit in connections, at the target's (or else the test's) traffic.
pub(super) fn cpu_in_connections(
    o: &Options,
    test: &Traffic,
    deliveries: &Deliveries,
    limits: &mut Limits,
    n: &mut Notes,
) {
    let ar = &mut n.ar;
    let per_conn_traffic = match (deliveries, o.target_connections) {
        (Some((d, _)), Some(c)) if c > 0 => Some((d / c as f64, "the target's")),
        _ => test.per_conn.map(|(_, _, d)| (d, "the test's")),
    };
    let (Some(l), Some((d, whose))) = (limits.deliveries_per_sec_by_cpu, per_conn_traffic) else {
        return;
    };
    if d <= 0.0 {
        return;
    }
    let c = (l / d).floor() as u64;
    if let Some((r, e, _)) = test.per_conn.filter(|_| whose == "the test's") {
        ar.push(format!(
            "  per connection  = {} deliveries/s / {} connections = {} deliveries/s ({whose} traffic)",
            float(r, 1),
            int(e as u64),
            float(d, 3)
        ));
    } else {
        ar.push(format!(
            "  per connection  = {} deliveries/s ({whose} traffic)",
            float(d, 3)
        ));
    }
    ar.push(format!(
        "  as connections  = {} / {} = {} connections",
        float(l, 0),
        float(d, 3),
        int(c)
    ));
    limits.deliveries_per_sec_per_connection = Some(d);
    limits.connections_by_cpu = Some(c);
}

/// What one host holds: the smallest of the limits known in connections.
pub(super) fn host_capacity(limits: &Limits, n: &mut Notes) -> Option<HostCapacity> {
    let candidates = [
        ("memory", limits.connections_by_memory),
        ("fds", Some(limits.connections_by_fds)),
        ("cpu", limits.connections_by_cpu),
    ];
    let host_capacity = candidates
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .min_by_key(|(_, v)| *v)
        .map(|(k, v)| HostCapacity {
            connections: v,
            binding: k,
        });
    if let Some(h) = &host_capacity {
        n.ar.push(format!(
            "One host holds   = min({}, {}, {}) = {} connections, bound by {}",
            opt_int(limits.connections_by_memory),
            int(limits.connections_by_fds),
            opt_int(limits.connections_by_cpu),
            int(h.connections),
            h.binding
        ));
    }
    host_capacity
}

/// The hosts a target of `c` connections needs, resource by resource.
pub(super) fn hosts(
    c: u64,
    o: &Options,
    limits: &Limits,
    deliveries: Deliveries,
    n: &mut Notes,
) -> Target {
    let ar = &mut n.ar;
    let mut usage = Vec::new();
    ar.push(format!("Target: {} connections", int(c)));
    let by_memory = limits.connections_by_memory.map(|v| v as f64);
    usage.extend(usage_of("memory", c as f64, by_memory, "connections", ar));
    let by_fds = Some(limits.connections_by_fds as f64);
    usage.extend(usage_of("fds", c as f64, by_fds, "connections", ar));
    if let Some((d, src)) = &deliveries {
        ar.push(format!("  deliveries/s    = {src} = {}", float(*d, 0)));
        let by_cpu = limits.deliveries_per_sec_by_cpu;
        usage.extend(usage_of("cpu", *d, by_cpu, "deliveries/s", ar));
    } else if o.target_events_per_sec.is_none() {
        n.missing.push("hosts by CPU: no traffic for the target: pass --target-events-per-sec R (and --fanout F), or a result with deliveries.per_sec_achieved and connections.established".into());
    }
    let complete = usage.len() == 3;
    let worst = usage
        .iter()
        .max_by(|a, b| {
            a.ratio
                .partial_cmp(&b.ratio)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|u| (u.hosts, u.resource));
    let hosts = worst.map(|(h, _)| h);
    let possible = hosts.filter(|h| *h != u64::MAX);
    if let Some(h) = possible {
        for u in usage.iter_mut() {
            u.utilisation = u.ratio / h as f64;
            u.headroom = 1.0 - u.utilisation;
        }
    }
    let per_host_deliveries = match (possible, &deliveries) {
        (Some(h), Some((d, _))) => Some(d / h as f64),
        _ => None,
    };
    if let (Some(h), Some((_, b))) = (possible, worst) {
        n.ar.push(format!(
            "  hosts needed    = {}{h} (bound by {b}{}); {} to survive losing one host",
            if complete { "" } else { "at least " },
            if complete { "" } else { "; a limit is unknown" },
            h + 1
        ));
    }
    Target {
        connections: c,
        deliveries_per_sec: deliveries.as_ref().map(|(d, _)| *d),
        deliveries_source: deliveries.map(|(_, s)| s).unwrap_or_default(),
        hosts,
        binding: worst.map(|(_, b)| b),
        hosts_with_spare: hosts.map(|h| h.saturating_add(1)),
        usage,
        per_host_connections: possible.map(|h| c as f64 / h as f64),
        per_host_deliveries_per_sec: per_host_deliveries,
    }
}

/// The load of `demand` on one resource whose per-host limit is `limit` (none
/// when the limit is unknown), with the arithmetic line.
fn usage_of(
    resource: &'static str,
    demand: f64,
    limit: Option<f64>,
    unit: &str,
    ar: &mut Vec<String>,
) -> Option<Usage> {
    let l = limit?;
    if l > 0.0 {
        let hosts = ceil_div(demand, l).max(1);
        ar.push(format!(
            "  hosts by {resource:<6} = ceil({} / {} {unit}) = {hosts}",
            float(demand, 0),
            float(l, 0)
        ));
        Some(Usage {
            resource,
            ratio: demand / l,
            hosts,
            utilisation: 0.0,
            headroom: 0.0,
        })
    } else {
        ar.push(format!(
            "  hosts by {resource:<6} = impossible: one host's limit is 0"
        ));
        Some(Usage {
            resource,
            ratio: f64::INFINITY,
            hosts: u64::MAX,
            utilisation: f64::INFINITY,
            headroom: f64::NEG_INFINITY,
        })
    }
}
