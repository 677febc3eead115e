//! The human report of a capacity plan: the host, the per-host limits, the target,
//! then the arithmetic, the assumptions, the warnings and what could not be
//! computed, in that order, so that every number can be checked by hand.

use super::Plan;
use crate::result::Measurement;
use crate::units::{bytes, float, int};

/// A figure, or `null` when the result lacks it.
pub(super) fn opt(v: Option<f64>) -> String {
    v.map(|x| float(x, if x.fract() == 0.0 { 0 } else { 2 }))
        .unwrap_or_else(|| "null".into())
}

/// A figure, or `unknown`.
fn known(v: Option<f64>) -> String {
    match v {
        Some(_) => opt(v),
        None => "unknown".into(),
    }
}

/// A count with thousands separators, or `unknown`.
pub(super) fn opt_int(v: Option<u64>) -> String {
    v.map(int).unwrap_or_else(|| "unknown".into())
}

/// The human report.
pub fn render(p: &Plan, m: &Measurement) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "xcord-tune capacity: host of {} cores, {}, {} shards, nofile {}\n",
        p.host.cores,
        bytes(p.host.mem_bytes),
        p.host.shards,
        int(p.host.nofile)
    ));
    o.push_str(&format!(
        "from: scenario {}, {} connections, {} deliveries/s, p99 {} ms, passed {}\n\n",
        m.scenario.clone().unwrap_or_else(|| "unknown".into()),
        known(m.established),
        known(m.per_sec_achieved),
        known(m.latency_p99_ms),
        m.passed
            .map(|b| b.to_string())
            .unwrap_or_else(|| "unknown".into())
    ));
    o.push_str("Per-host limits\n");
    o.push_str(&format!(
        "  connections by memory  {}\n",
        opt_int(p.limits.connections_by_memory)
    ));
    o.push_str(&format!(
        "  connections by fds     {}\n",
        int(p.limits.connections_by_fds)
    ));
    o.push_str(&format!(
        "  deliveries/s by CPU    {}{}\n",
        p.limits
            .deliveries_per_sec_by_cpu
            .map(|v| float(v, 0))
            .unwrap_or_else(|| "unknown".into()),
        match (
            p.limits.connections_by_cpu,
            p.limits.deliveries_per_sec_per_connection
        ) {
            (Some(c), Some(d)) => format!(
                "  (= {} connections at {} deliveries/s each)",
                int(c),
                float(d, 3)
            ),
            _ => String::new(),
        }
    ));
    if let Some(h) = &p.host_capacity {
        o.push_str(&format!(
            "  binds first: {} -> one host holds {} connections\n",
            h.binding,
            int(h.connections)
        ));
    }
    if let Some(t) = &p.target {
        o.push_str(&format!(
            "\nTarget: {} connections{}\n",
            int(t.connections),
            t.deliveries_per_sec
                .map(|d| format!(", {} deliveries/s", float(d, 0)))
                .unwrap_or_default()
        ));
        match (t.hosts, t.binding) {
            (Some(h), Some(b)) if h != u64::MAX => {
                o.push_str(&format!(
                    "  hosts needed: {}{h} (bound by {b}); {} to survive losing one\n",
                    if p.complete { "" } else { "at least " },
                    h + 1
                ));
                if let Some(c) = t.per_host_connections {
                    o.push_str(&format!(
                        "  at {h} host{} each carries {} connections{}\n",
                        if h == 1 { "" } else { "s" },
                        float(c, 0),
                        t.per_host_deliveries_per_sec
                            .map(|d| format!(" and {} deliveries/s", float(d, 0)))
                            .unwrap_or_default()
                    ));
                }
                for u in &t.usage {
                    o.push_str(&format!(
                        "    {:<6} {:>6.1}% of the host limit, headroom {:.1}%\n",
                        u.resource,
                        u.utilisation * 100.0,
                        u.headroom * 100.0
                    ));
                }
            }
            (Some(_), _) => o.push_str("  impossible: a per-host limit is 0\n"),
            _ => o.push_str("  hosts needed: unknown\n"),
        }
    }
    o.push_str("\nArithmetic\n");
    for l in &p.arithmetic {
        o.push_str(&format!("  {l}\n"));
    }
    o.push_str("\nAssumptions\n");
    for a in &p.assumptions {
        o.push_str(&format!("  - {a}\n"));
    }
    if !p.warnings.is_empty() {
        o.push_str("\nWarnings\n");
        for w in &p.warnings {
            o.push_str(&format!("  ! {w}\n"));
        }
    }
    if !p.missing.is_empty() {
        o.push_str("\nNot computed (incomplete plan)\n");
        for w in &p.missing {
            o.push_str(&format!("  x {w}\n"));
        }
    }
    o
}
