//! `xcord-loadtest merge A.json B.json … --out merged.json [--report x.html]`:
//! the results of a fleet's processes as one result, the same schema
//! (`xcord-tune capacity --from merged.json` reads it).
//!
//! Exact where it can be: the expected deliveries are recounted per channel from
//! the publisher's schedule (`fleet.events_per_channel`) times the subscribers of
//! every process (`fleet.subscribers_per_channel`); receipts, duplicates, out of
//! order, unexpected are sums (the processes hold disjoint connections);
//! `missing = expected − Σ first receipts`; latency, handshake and subscribe
//! percentiles come from the merged HDR histograms. The gateway figures are the
//! publishing process's samples (one gateway, one window), with CPU per delivery
//! recomputed over all deliveries; the tool's CPU is the sum over processes.
//! A reconnect round's percentiles are the worst process's (no histogram kept).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::result::{RunResult, Summary};
use crate::stats::{self, FromHistogram, Percentiles};
use xcord_common::result::{Fleet, Histograms};

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Result files of the fleet's processes (`--out` of each).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Write the merged result here.
    #[arg(long)]
    pub out: PathBuf,
    /// Write the merged report here (FILE.svg or FILE.html).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn main(a: &MergeArgs) -> Result<bool> {
    let mut parts = Vec::new();
    for p in &a.inputs {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let r: RunResult = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an xcord-loadtest result", p.display()))?;
        parts.push((p.display().to_string(), r));
    }
    let mut m = merge(&parts)?;
    m.command = std::iter::once("xcord-loadtest merge".to_owned())
        .chain(a.inputs.iter().map(|p| p.display().to_string()))
        .chain(["--out".to_owned(), a.out.display().to_string()])
        .collect::<Vec<_>>()
        .join(" ");
    print!("{}", m.summary());
    let json = serde_json::to_string_pretty(&m).context("cannot encode the result")?;
    std::fs::write(&a.out, json + "\n")
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    println!("result: {}", a.out.display());
    if let Some(path) = &a.report {
        let curves = vec![crate::report::Curve {
            label: format!("all deliveries ({} processes)", parts.len()),
            points: m.latency_percentiles.clone(),
        }];
        crate::report::write(path, &m, &curves, m.config.scenario.ramp_p99_ms)?;
        println!("report: {}", path.display());
    }
    Ok(m.passed())
}

fn hist(
    parts: &[(String, RunResult)],
    pick: impl Fn(&Histograms) -> &Option<String>,
) -> Result<hdrhistogram::Histogram<u64>> {
    let mut h = stats::new_hist();
    for (name, r) in parts {
        if let Some(s) = r.histograms.as_ref().and_then(|x| pick(x).as_deref()) {
            let part = stats::decode(s).with_context(|| name.clone())?;
            h.add(&part).map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
        }
    }
    Ok(h)
}

/// First receipts of one process.
fn distinct(r: &RunResult) -> u64 {
    let d = &r.deliveries;
    d.received
        .unwrap_or(0)
        .saturating_sub(d.duplicated.unwrap_or(0) + d.unexpected)
}

/// The merged result of `parts` (name, result).
pub fn merge(parts: &[(String, RunResult)]) -> Result<RunResult> {
    if parts.is_empty() {
        bail!("nothing to merge");
    }
    let run_ids: std::collections::BTreeSet<u64> = parts.iter().map(|(_, r)| r.run_id).collect();
    if run_ids.len() > 1 {
        bail!("the results come from different runs (run ids {run_ids:?})");
    }
    let publisher = parts
        .iter()
        .find(|(_, r)| {
            r.fleet
                .as_ref()
                .is_some_and(|f| f.events_per_channel.is_some())
        })
        .map(|(_, r)| r);
    let base = publisher.unwrap_or(&parts[0].1);
    let mut m = base.clone();
    let fleet = merged_fleet(parts, publisher);
    let all = hist(parts, |h| &h.latency_us)?;
    let hs = hist(parts, |h| &h.handshake_us)?;
    let sub = hist(parts, |h| &h.subscribe_us)?;
    let total_distinct: u64 = parts.iter().map(|(_, r)| distinct(r)).sum();
    merge_deliveries(&mut m, parts, publisher, &fleet, total_distinct);
    merge_connections(&mut m, parts);
    m.connections.handshake_latency_ms = Percentiles::of(&hs, false);
    m.connections.subscribe_latency_ms = Percentiles::of(&sub, false);
    m.latency_ms = Percentiles::of(&all, true);
    m.latency_percentiles = stats::spectrum(&all);
    merge_cpu(&mut m, parts, total_distinct);
    m.histograms = Some(Histograms {
        latency_us: stats::encode(&all),
        handshake_us: stats::encode(&hs),
        subscribe_us: stats::encode(&sub),
    });
    m.config.client_threads = parts.iter().map(|(_, r)| r.config.client_threads).sum();
    m.config.compression = parts.iter().any(|(_, r)| r.config.compression);
    let scheduled = m.deliveries.events_scheduled.max(1);
    m.config.mean_fanout = m.deliveries.expected.unwrap_or(0) as f64 / scheduled as f64;
    rescale_memory(&mut m, base);
    m.fleet = Some(fleet);
    m.failure_reasons = verdict(&m, parts);
    m.passed = Some(m.failure_reasons.is_empty());
    Ok(m)
}

fn merged_fleet(parts: &[(String, RunResult)], publisher: Option<&RunResult>) -> Fleet {
    let n = parts
        .iter()
        .filter_map(|(_, r)| r.fleet.as_ref().map(|f| f.subscribers_per_channel.len()))
        .max()
        .unwrap_or(0);
    let mut subs = vec![0u32; n];
    for f in parts.iter().filter_map(|(_, r)| r.fleet.as_ref()) {
        for (i, s) in f.subscribers_per_channel.iter().enumerate() {
            subs[i] += s;
        }
    }
    let pf = publisher.and_then(|p| p.fleet.as_ref());
    Fleet {
        shard: 0,
        shards: parts
            .iter()
            .filter_map(|(_, r)| r.fleet.as_ref().map(|f| f.shards))
            .max()
            .unwrap_or(1),
        role: "merged".into(),
        subscribers_per_channel: subs,
        events_per_channel: pf.and_then(|f| f.events_per_channel.clone()),
        dropped_per_channel: pf.and_then(|f| f.dropped_per_channel.clone()),
        merged_from: parts.iter().map(|(n, _)| n.clone()).collect(),
    }
}

/// Σ events × subscribers over the channels.
fn owed(events: &[u64], subs: &[u32]) -> u64 {
    events.iter().zip(subs).map(|(e, s)| e * *s as u64).sum()
}

fn merge_deliveries(
    m: &mut RunResult,
    parts: &[(String, RunResult)],
    publisher: Option<&RunResult>,
    fleet: &Fleet,
    total_distinct: u64,
) {
    let sum = |f: &dyn Fn(&RunResult) -> u64| parts.iter().map(|(_, r)| f(r)).sum::<u64>();
    let d = &mut m.deliveries;
    let expected = match &fleet.events_per_channel {
        Some(ev) => owed(ev, &fleet.subscribers_per_channel),
        None => sum(&|r| r.deliveries.expected.unwrap_or(0)),
    };
    if let Some(dr) = &fleet.dropped_per_channel {
        d.deliveries_dropped_by_hook = owed(dr, &fleet.subscribers_per_channel);
    }
    d.expected = Some(expected);
    d.missing = Some(expected.saturating_sub(total_distinct));
    d.received = Some(sum(&|r| r.deliveries.received.unwrap_or(0)));
    d.duplicated = Some(sum(&|r| r.deliveries.duplicated.unwrap_or(0)));
    d.out_of_order = Some(sum(&|r| r.deliveries.out_of_order.unwrap_or(0)));
    d.unexpected = sum(&|r| r.deliveries.unexpected);
    d.stale_other_runs = sum(&|r| r.deliveries.stale_other_runs);
    d.other_events = sum(&|r| r.deliveries.other_events);
    d.other_events_during_measure = sum(&|r| r.deliveries.other_events_during_measure);
    d.seq_regressions = sum(&|r| r.deliveries.seq_regressions);
    d.wire_bytes = sum(&|r| r.deliveries.wire_bytes);
    d.compressed = sum(&|r| r.deliveries.compressed);
    d.wire_bytes_per_delivery =
        xcord_common::result::per_delivery(d.wire_bytes, d.received.unwrap_or(0));
    d.still_arriving_at_end = parts
        .iter()
        .any(|(_, r)| r.deliveries.still_arriving_at_end);
    d.per_sec_achieved = Some(
        parts
            .iter()
            .filter_map(|(_, r)| r.deliveries.per_sec_achieved)
            .sum(),
    );
    let dur = publisher
        .and_then(|p| p.duration_s)
        .or(m.duration_s)
        .unwrap_or(0.0);
    d.per_sec_expected = Some(if dur > 0.0 {
        expected as f64 / dur
    } else {
        0.0
    });
    if publisher.is_some() {
        // The schedule's own figures come from the process that published.
        let pubs: Vec<&RunResult> = parts
            .iter()
            .map(|(_, r)| r)
            .filter(|r| {
                r.fleet
                    .as_ref()
                    .is_some_and(|f| f.events_per_channel.is_some())
            })
            .collect();
        d.events_published = pubs.iter().map(|r| r.deliveries.events_published).sum();
        d.publish_errors = pubs.iter().map(|r| r.deliveries.publish_errors).sum();
    }
}

fn merge_connections(m: &mut RunResult, parts: &[(String, RunResult)]) {
    let k = &mut m.connections;
    let conns = || parts.iter().map(|(_, r)| &r.connections);
    k.target = Some(conns().filter_map(|c| c.target).sum());
    k.established = Some(conns().filter_map(|c| c.established).sum());
    k.failed = conns().map(|c| c.failed).sum();
    k.attempts = conns().map(|c| c.attempts).sum();
    k.retried = conns().map(|c| c.retried).sum();
    k.lost = conns().map(|c| c.lost).sum();
    k.pings_sent = conns().map(|c| c.pings_sent).sum();
    k.pongs_received = conns().map(|c| c.pongs_received).sum();
    k.typing_sent = conns().map(|c| c.typing_sent).sum();
    k.connect_phase_s = conns().map(|c| c.connect_phase_s).fold(0.0, f64::max);
    k.connect_rate_per_sec = conns().map(|c| c.connect_rate_per_sec).sum();
    let mut errors = BTreeMap::new();
    let mut closes = BTreeMap::new();
    for c in conns() {
        for (e, n) in &c.errors {
            *errors.entry(e.clone()).or_insert(0) += n;
        }
        for (e, n) in &c.close_reasons {
            *closes.entry(e.clone()).or_insert(0) += n;
        }
    }
    k.errors = errors;
    k.close_reasons = closes;
    let rounds = conns().map(|c| c.reconnects.len()).max().unwrap_or(0);
    k.reconnects = (0..rounds)
        .map(|i| {
            let rs: Vec<_> = conns().filter_map(|c| c.reconnects.get(i)).collect();
            let worst =
                |f: &dyn Fn(&Percentiles) -> Option<f64>,
                 pick: &dyn Fn(&xcord_common::result::Round) -> &Percentiles| {
                    rs.iter().filter_map(|r| f(pick(r))).reduce(f64::max)
                };
            let pct = |pick: &dyn Fn(&xcord_common::result::Round) -> &Percentiles| Percentiles {
                p50: worst(&|p| p.p50, pick),
                p90: worst(&|p| p.p90, pick),
                p99: worst(&|p| p.p99, pick),
                p999: worst(&|p| p.p999, pick),
                max: worst(&|p| p.max, pick),
                mean: None,
                count: rs.iter().map(|r| pick(r).count).sum(),
            };
            xcord_common::result::Round {
                round: rs.first().map_or(i as u32 + 1, |r| r.round),
                target: rs.iter().map(|r| r.target).sum(),
                established: rs.iter().map(|r| r.established).sum(),
                failed: rs.iter().map(|r| r.failed).sum(),
                duration_s: rs.iter().map(|r| r.duration_s).fold(0.0, f64::max),
                connect_rate_per_sec: rs.iter().map(|r| r.connect_rate_per_sec).sum(),
                handshake_latency_ms: pct(&|r| &r.handshake_latency_ms),
                subscribe_latency_ms: pct(&|r| &r.subscribe_latency_ms),
                attempts: rs.iter().map(|r| r.attempts).sum(),
                retried: rs.iter().map(|r| r.retried).sum(),
            }
        })
        .collect();
}

/// The publishing process sampled the gateway's RSS around its own connect
/// phase; over the whole fleet's connections that is approximate (the shards
/// connect at about the same time, not exactly).
fn rescale_memory(m: &mut RunResult, base: &RunResult) {
    let (Some(total), Some(mine)) = (m.connections.established, base.connections.established)
    else {
        return;
    };
    if let Some(g) = m.gateway.as_mut() {
        if total > 0 && mine > 0 {
            let k = mine as f64 / total as f64;
            g.rss_bytes_per_connection = g.rss_bytes_per_connection.map(|b| b * k);
            g.rss_bytes_per_connection_marginal =
                g.rss_bytes_per_connection_marginal.map(|b| b * k);
        }
    }
}

fn merge_cpu(m: &mut RunResult, parts: &[(String, RunResult)], total_distinct: u64) {
    let per_million = |cpu: Option<f64>| {
        cpu.filter(|_| total_distinct > 0)
            .map(|c| c / (total_distinct as f64 / 1e6))
    };
    if let Some(g) = m.gateway.as_mut() {
        g.cpu_seconds_per_million_deliveries = per_million(g.cpu_seconds_measure);
    } else if let Some(g) = parts.iter().find_map(|(_, r)| r.gateway.clone()) {
        let cpu = g.cpu_seconds_measure;
        m.gateway = Some(xcord_common::result::Gateway {
            cpu_seconds_per_million_deliveries: per_million(cpu),
            ..g
        });
    }
    let sum = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Option<f64> {
        parts.iter().map(|(_, r)| f(r)).sum()
    };
    let c = &mut m.client;
    c.threads = parts.iter().map(|(_, r)| r.client.threads).sum();
    c.cpu_seconds_measure = sum(&|r| r.client.cpu_seconds_measure);
    c.cpu_seconds_total = sum(&|r| r.client.cpu_seconds_total);
    c.rss_bytes_end = parts.iter().map(|(_, r)| r.client.rss_bytes_end).sum();
    // A publish-only process has no engine: count what the engines did.
    c.engine_cpu_seconds_measure = parts
        .iter()
        .filter_map(|(_, r)| r.client.engine_cpu_seconds_measure)
        .reduce(|a, b| a + b);
    c.cpu_seconds_per_million_deliveries = per_million(c.cpu_seconds_measure);
    c.engine_cpu_seconds_per_million_deliveries = per_million(c.engine_cpu_seconds_measure);
    c.deliveries_per_engine_cpu_second = c
        .engine_cpu_seconds_measure
        .filter(|x| *x > 0.0)
        .map(|x| total_distinct as f64 / x);
}

/// The merged verdict: the delivery checks recounted, plus every other reason
/// an input gave (prefixed with its file).
fn verdict(m: &RunResult, parts: &[(String, RunResult)]) -> Vec<String> {
    let d = &m.deliveries;
    let mut v = Vec::new();
    for (n, what) in [
        (d.missing.unwrap_or(0), "deliveries missing"),
        (d.duplicated.unwrap_or(0), "deliveries duplicated"),
        (d.out_of_order.unwrap_or(0), "deliveries out of order"),
        (
            d.unexpected,
            "deliveries to connections not subscribed to their channel",
        ),
        (d.seq_regressions, "EVENT seq regressions"),
    ] {
        if n > 0 {
            v.push(format!("{n} {what}"));
        }
    }
    for (name, r) in parts {
        for reason in &r.failure_reasons {
            let delivery = [
                "deliveries missing",
                "deliveries duplicated",
                "deliveries out of order",
                "deliveries to connections",
                "EVENT seq regressions",
            ]
            .iter()
            .any(|k| reason.contains(k));
            if !delivery {
                v.push(format!("{name}: {reason}"));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(role: &str, subs: Vec<u32>, events: Option<Vec<u64>>, received: u64) -> RunResult {
        let mut h = stats::new_hist();
        for v in 0..received {
            stats::record_into(&mut h, 100 + v);
        }
        let mut r = RunResult {
            run_id: 9,
            passed: Some(true),
            ..RunResult::default()
        };
        r.deliveries.received = Some(received);
        r.deliveries.duplicated = Some(1);
        r.client.engine_cpu_seconds_measure = Some(0.5);
        r.histograms = Some(Histograms {
            latency_us: stats::encode(&h),
            ..Histograms::default()
        });
        r.fleet = Some(Fleet {
            role: role.into(),
            subscribers_per_channel: subs,
            dropped_per_channel: events.as_ref().map(|e| vec![0; e.len()]),
            events_per_channel: events,
            ..Fleet::default()
        });
        r
    }

    #[test]
    fn sums_exactly_and_recounts_expected() {
        // Two channels with 3 and 2 events; shard 0 holds 2+1 subscribers, shard
        // 1 holds 1+1: expected = 3*3 + 2*2 = 13.
        let a = part("connect+publish", vec![2, 1], Some(vec![3, 2]), 9);
        let b = part("connect", vec![1, 1], None, 4);
        let m = merge(&[("a".into(), a), ("b".into(), b)]).expect("merge");
        assert_eq!(m.deliveries.expected, Some(13));
        assert_eq!(m.deliveries.received, Some(13));
        assert_eq!(m.deliveries.duplicated, Some(2));
        // First receipts: (9-1) + (4-1) = 11.
        assert_eq!(m.deliveries.missing, Some(2));
        assert_eq!(m.latency_ms.count, 13);
        assert_eq!(m.client.engine_cpu_seconds_measure, Some(1.0));
        assert_eq!(m.passed, Some(false));
        let f = m.fleet.expect("fleet");
        assert_eq!(f.subscribers_per_channel, vec![3, 2]);
        assert_eq!(f.merged_from, vec!["a", "b"]);
        let other = RunResult {
            run_id: 10,
            ..RunResult::default()
        };
        assert!(merge(&[
            ("a".into(), other),
            ("b".into(), part("connect", vec![], None, 0))
        ])
        .is_err());
    }
}
