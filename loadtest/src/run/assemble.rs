//! The result of a run, assembled from what the phases gathered: the delivery
//! accounting against what was published, the verdict with its reasons, the ramp's
//! steps and saturation point, the gateway's memory and CPU, and the curves the
//! report draws.
//!
//! The verdict lists its reasons in a fixed order (deliveries, connections, what
//! was published, the ramp, publish errors), so two runs compare line by line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::connect::RoundStats;
use super::measure::StepOut;
use super::{Options, Outcome};
use crate::plan::Plan;
use crate::procstat::{self, Sample};
use crate::report::Curve;
use crate::result::{self, RampStep, Round, RunResult};
use crate::scenario::Scenario;
use crate::stats::{self, Counters, FromHistogram, Percentiles};

/// Everything the phases gathered.
pub(super) struct Gathered {
    /// Which connections of the plan this process had subscribed at the end.
    pub ready: Vec<bool>,
    /// The publisher's (or, connect-only, the replayed) schedule per channel.
    pub scheduled_per_channel: Vec<u64>,
    pub dropped_per_channel: Vec<u64>,
    pub started_at_unix: u64,
    pub first: RoundStats,
    pub reconnects: Vec<Round>,
    pub errors: BTreeMap<String, u64>,
    pub connect_phase_s: f64,
    pub established_now: usize,
    pub lost_before_measure: u64,
    pub mean_fanout: f64,
    pub steps: Vec<StepOut>,
    /// Other EVENT frames received while measuring.
    pub other_during: u64,
    pub settle_s: f64,
    /// The gateway before connecting, after connecting, at the end.
    pub gw: [Option<Sample>; 3],
    /// This tool at the start and at the end.
    pub me: [Sample; 2],
}

/// Totals over the measured steps.
struct Totals {
    expected: u64,
    distinct: u64,
    missing: u64,
    /// The publishing time of the steps.
    duration_s: f64,
    /// Publishing, or receiving when that ended later.
    window_s: f64,
    /// Every step's latencies.
    all: hdrhistogram::Histogram<u64>,
    gw_cpu: Option<f64>,
    cpu_window_s: f64,
    still_arriving: bool,
    client_cpu: Option<f64>,
    engine_cpu: Option<f64>,
}

impl Totals {
    fn of(steps: &[StepOut], counters: &Counters) -> Totals {
        let distinct = counters.distinct.load(Relaxed);
        let expected: u64 = steps.iter().map(|s| s.report.expected).sum();
        let duration_s = steps
            .iter()
            .map(|s| {
                s.report
                    .ended
                    .duration_since(s.report.started)
                    .as_secs_f64()
            })
            .sum();
        let window_s = steps
            .iter()
            .map(|s| {
                let publish = s.report.ended.duration_since(s.report.started);
                let recv = s.last_receive.min(s.eval).duration_since(s.report.started);
                publish.max(recv).as_secs_f64()
            })
            .sum();
        let mut all = stats::new_hist();
        for i in 0..steps.len() {
            let _ = all.add(stats::step_histogram(i));
        }
        Totals {
            expected,
            distinct,
            missing: expected.saturating_sub(distinct),
            duration_s,
            window_s,
            all,
            gw_cpu: steps.iter().map(|s| s.gw_cpu).sum(),
            cpu_window_s: steps.iter().map(|s| s.window.as_secs_f64()).sum(),
            still_arriving: steps.iter().any(|s| s.still_arriving),
            client_cpu: steps.iter().map(|s| s.client_cpu).sum(),
            engine_cpu: steps.iter().map(|s| s.engine_cpu).sum(),
        }
    }
}

/// Build the result and the report's curves.
pub(super) fn assemble(o: &Options, plan: &Plan, counters: &Counters, g: Gathered) -> Outcome {
    let sc = &o.scenario;
    let t = Totals::of(&g.steps, counters);
    let mut failure_reasons = verdict(o, counters, &g, &t);
    let ramp = o
        .ramp
        .then(|| ramp_steps(sc, counters, &g.steps, &mut failure_reasons));
    let (ramp, saturation) = match ramp {
        Some((steps, sat)) => (Some(steps), sat),
        None => (None, None),
    };
    let deliveries = deliveries(counters, &g, &t, &mut failure_reasons);
    let curves = curves(o, &g.steps, &t.all);
    let result = RunResult {
        schema: Some(result::SCHEMA.into()),
        scenario: Some(sc.name.clone()),
        started_at_unix: g.started_at_unix,
        duration_s: Some(t.duration_s),
        host: result::Host {
            cores: Some(procstat::host_cores()),
            mem_bytes: procstat::host_mem_bytes(),
        },
        config: config(o, plan, g.mean_fanout),
        connections: connections(counters, &g),
        deliveries,
        latency_ms: Percentiles::of(&t.all, true),
        gateway: gateway(o, &g, &t),
        ramp,
        saturation_deliveries_per_sec: saturation.map(|(d, _)| d),
        passed: Some(failure_reasons.is_empty()),
        failure_reasons,
        command: o.command.clone(),
        run_id: o.run_id,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        saturation_rate_events_per_sec: saturation.map(|(_, r)| r),
        latency_percentiles: stats::spectrum(&t.all),
        client: client(o, &g, &t),
        histograms: Some(histograms(&t.all, &g.first)),
        fleet: Some(fleet(o, plan, &g)),
    };
    Outcome { result, curves }
}

/// Why the run failed, as far as deliveries, connections and scheduling go.
fn verdict(o: &Options, counters: &Counters, g: &Gathered, t: &Totals) -> Vec<String> {
    let c = |a: &AtomicU64| a.load(Relaxed);
    let sc = &o.scenario;
    let mut failure_reasons = Vec::new();
    if t.missing > 0 {
        failure_reasons.push(format!(
            "{} deliveries missing{}",
            t.missing,
            if t.still_arriving {
                " (still arriving when the drain ended: the gateway was behind; lower the rate or raise drain_grace_s)"
            } else {
                ""
            }
        ));
    }
    for (n, what) in [
        (c(&counters.duplicated), "deliveries duplicated"),
        (c(&counters.out_of_order), "deliveries out of order"),
        (
            c(&counters.unexpected),
            "deliveries to connections not subscribed to their channel",
        ),
        (c(&counters.seq_regressions), "EVENT seq regressions"),
    ] {
        if n > 0 {
            failure_reasons.push(format!("{n} {what}"));
        }
    }
    let first = &g.first.round;
    if first.failed > 0 && !o.allow_connect_failures {
        failure_reasons.push(format!(
            "{} of {} connections failed (--allow-connect-failures to accept)",
            first.failed, first.target
        ));
    }
    for r in &g.reconnects {
        if r.failed > 0 && !o.allow_connect_failures {
            failure_reasons.push(format!(
                "reconnect round {}: {} of {} failed",
                r.round, r.failed, r.target
            ));
        }
    }
    let lost = c(&counters.lost);
    if lost > 0 && !o.allow_connect_failures {
        failure_reasons.push(format!(
            "{lost} connections closed by the gateway or broken ({} before the measured phase)",
            g.lost_before_measure
        ));
    }
    if g.established_now == 0 && o.role.connects() {
        failure_reasons.push("no connection was established".into());
    }
    let scheduled: u64 = g.steps.iter().map(|s| s.report.scheduled).sum();
    if g.steps.is_empty() || (scheduled == 0 && sc.rate > 0.0 && sc.duration_s > 0.0) {
        failure_reasons.push("nothing was published".into());
    }
    failure_reasons
}

/// The ramp's steps, and the saturation point: (deliveries/s, events/s) of the
/// best ok step. A step that is not ok before the last one fails the run.
fn ramp_steps(
    sc: &Scenario,
    counters: &Counters,
    steps: &[StepOut],
    failure_reasons: &mut Vec<String>,
) -> (Vec<RampStep>, Option<(f64, f64)>) {
    let mut v = Vec::new();
    let mut saturation: Option<(f64, f64)> = None;
    let last = steps.len().saturating_sub(1);
    for (i, s) in steps.iter().enumerate() {
        let step = ramp_step(sc, counters, i, s);
        if step.ok && saturation.is_none_or(|(best, _)| step.deliveries_per_sec > best) {
            saturation = Some((step.deliveries_per_sec, step.rate_events_per_sec));
        }
        if !step.ok && i != last {
            failure_reasons.push(format!("ramp step {i} not ok before the last step"));
        }
        v.push(step);
    }
    (v, saturation)
}

/// Step `i` of a ramp, judged against the scenario's bounds.
fn ramp_step(sc: &Scenario, counters: &Counters, i: usize, s: &StepOut) -> RampStep {
    let r = &s.report;
    let dur = r.ended.duration_since(r.started).as_secs_f64();
    let nominal = r.scheduled as f64 / r.rate.max(1e-9);
    let exp_eff = s.owed();
    let window = s.eval.duration_since(r.started).as_secs_f64();
    let dps = s.received_by_eval as f64 / window.max(1e-9);
    let eps = exp_eff as f64 / nominal.max(1e-9);
    let ratio = if exp_eff == 0 { 1.0 } else { dps / eps };
    let step_missing = r.expected.saturating_sub(counters.step_distinct(i));
    let mut why = Vec::new();
    if let Some(p) = s.p.p99 {
        if p > sc.ramp_p99_ms {
            why.push(format!("p99 {p:.2} ms > {} ms", sc.ramp_p99_ms));
        }
    }
    if ratio < sc.ramp_min_achieved {
        why.push(format!(
            "achieved {:.1}% of expected < {:.0}%",
            ratio * 100.0,
            sc.ramp_min_achieved * 100.0
        ));
    }
    if s.received_by_eval < exp_eff {
        why.push(format!(
            "{} deliveries not in by the end of the drain",
            exp_eff - s.received_by_eval
        ));
    }
    if step_missing > 0 {
        why.push(format!("{step_missing} missing"));
    }
    if r.errors > 0 {
        why.push(format!("{} publish errors", r.errors));
    }
    let percent = |cpu: Option<f64>| cpu.map(|c| c / s.window.as_secs_f64().max(1e-9) * 100.0);
    RampStep {
        rate_events_per_sec: r.rate,
        deliveries_per_sec: dps,
        p99_ms: s.p.p99,
        missing: step_missing,
        ok: why.is_empty(),
        step: i as u32,
        expected: r.expected,
        received_by_eval: s.received_by_eval,
        expected_per_sec: eps,
        achieved_ratio: ratio,
        p50_ms: s.p.p50,
        p999_ms: s.p.p999,
        max_ms: s.p.max,
        duration_s: dur,
        drain_s: s.eval.duration_since(r.ended).as_secs_f64(),
        gateway_cpu_seconds: s.gw_cpu,
        gateway_cpu_percent: percent(s.gw_cpu),
        client_cpu_percent: percent(s.client_cpu),
        publisher_max_lag_ms: r.max_lag.as_secs_f64() * 1000.0,
        why,
    }
}

/// This tool's CPU, whole and the engine's threads alone, per million deliveries.
fn client(o: &Options, g: &Gathered, t: &Totals) -> result::Client {
    let per_million = |cpu: Option<f64>| {
        cpu.filter(|_| t.distinct > 0)
            .map(|c| c / (t.distinct as f64 / 1e6))
    };
    result::Client {
        threads: o.client_threads,
        cpu_seconds_measure: t.client_cpu,
        cpu_seconds_total: procstat::cpu_between(&g.me[0], &g.me[1]),
        rss_bytes_end: g.me[1].rss_bytes,
        engine_cpu_seconds_measure: t.engine_cpu,
        cpu_seconds_per_million_deliveries: per_million(t.client_cpu),
        engine_cpu_seconds_per_million_deliveries: per_million(t.engine_cpu),
        deliveries_per_engine_cpu_second: t
            .engine_cpu
            .filter(|c| *c > 0.0)
            .map(|c| t.distinct as f64 / c),
    }
}

/// The run's HDR histograms, serialised for a merge.
fn histograms(all: &hdrhistogram::Histogram<u64>, first: &RoundStats) -> result::Histograms {
    result::Histograms {
        latency_us: stats::encode(all),
        handshake_us: stats::encode(&first.handshake),
        subscribe_us: stats::encode(&first.subscribe),
    }
}

/// What a merge needs of this process: its subscribers and the schedule per channel.
fn fleet(o: &Options, plan: &Plan, g: &Gathered) -> result::Fleet {
    let publishes = o.role.publishes();
    result::Fleet {
        shard: o.shard.index,
        shards: o.shard.count,
        role: o.role.as_str().into(),
        subscribers_per_channel: plan.subscriber_counts(&g.ready),
        events_per_channel: publishes.then(|| g.scheduled_per_channel.clone()),
        dropped_per_channel: publishes.then(|| g.dropped_per_channel.clone()),
        merged_from: Vec::new(),
    }
}

/// The gateway's memory and CPU, when its PID was given.
fn gateway(o: &Options, g: &Gathered, t: &Totals) -> Option<result::Gateway> {
    let established = g.first.round.established;
    let per_conn = |a: Option<Sample>, b: Option<Sample>| -> Option<f64> {
        let (a, b) = (a?.rss_bytes?, b?.rss_bytes?);
        (established > 0).then(|| (b as f64 - a as f64) / established as f64)
    };
    let [g_before, g_after, g_end] = g.gw;
    let gw_cpu = t.gw_cpu;
    o.gateway_pid.map(|pid| result::Gateway {
        pid,
        rss_bytes_before_connect: g_before.and_then(|s| s.rss_bytes),
        rss_bytes_after_connect: g_after.and_then(|s| s.rss_bytes),
        rss_bytes_end: g_end.and_then(|s| s.rss_bytes),
        rss_bytes_per_connection: per_conn(g_before, g_after),
        rss_bytes_per_connection_marginal: slope(&g.first.rss_points),
        cpu_seconds_connect: match (g_before, g_after) {
            (Some(a), Some(b)) => procstat::cpu_between(&a, &b),
            _ => None,
        },
        cpu_seconds_measure: gw_cpu,
        cpu_seconds_per_million_deliveries: gw_cpu
            .filter(|_| t.distinct > 0)
            .map(|cpu| cpu / (t.distinct as f64 / 1e6)),
        rss_bytes_peak: g_end.and_then(|s| s.peak_rss_bytes),
        cpu_percent_measure: gw_cpu
            .filter(|_| t.cpu_window_s > 0.0)
            .map(|cpu| cpu / t.cpu_window_s * 100.0),
    })
}

/// Least-squares slope of RSS over established connections (bytes per connection),
/// from the samples of the last three quarters of the connect phase: the allocator
/// grows RSS in steps, so a fit over many points beats two.
fn slope(points: &[(usize, u64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    let sxy: f64 = points
        .iter()
        .map(|p| (p.0 as f64 - mx) * (p.1 as f64 - my))
        .sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The `config` section: the scenario and what the plan derived from it.
fn config(o: &Options, plan: &Plan, mean_fanout: f64) -> result::Config {
    let sc = &o.scenario;
    let n_ch = plan.channel_names.len();
    let ready_counts: Vec<u32> = plan.subscriber_counts(&vec![true; plan.conns.len()]);
    let subscribers_per_channel =
        ready_counts.iter().map(|x| *x as f64).sum::<f64>() / (n_ch.max(1) as f64);
    result::Config {
        connections: sc.connections,
        channels: n_ch,
        subscribers_per_channel: Some(subscribers_per_channel.round() as u64),
        subscriptions_per_connection: plan.mean_subscriptions().round() as u64,
        subscribers_per_channel_mean: subscribers_per_channel,
        subscriptions_per_connection_mean: plan.mean_subscriptions(),
        rate_events_per_sec: Some(sc.rate),
        event_bytes: sc.event_bytes,
        publisher: sc.publisher.as_str().into(),
        gateway_shards: o.gateway_shards,
        mean_fanout,
        seed: o.seed,
        source_addrs: sc.effective_source_addrs(),
        client_threads: o.client_threads,
        compression: o.compression,
        scenario: sc.clone(),
    }
}

/// The `connections` section: the first round, the reconnects and the losses.
fn connections(counters: &Counters, g: &Gathered) -> result::Connections {
    let c = |a: &AtomicU64| a.load(Relaxed);
    let first = &g.first.round;
    result::Connections {
        target: Some(first.target),
        established: Some(first.established),
        failed: first.failed,
        connect_rate_per_sec: first.connect_rate_per_sec,
        handshake_latency_ms: Percentiles::of(&g.first.handshake, false),
        subscribe_latency_ms: first.subscribe_latency_ms.clone(),
        connect_phase_s: g.connect_phase_s,
        attempts: first.attempts,
        retried: first.retried,
        errors: g.errors.clone(),
        lost: c(&counters.lost),
        close_reasons: counters
            .close_codes
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default(),
        reconnects: g.reconnects.clone(),
        pings_sent: c(&counters.pings),
        pongs_received: c(&counters.pongs),
        typing_sent: c(&counters.typing_sent),
    }
}

/// The `deliveries` section. Publish errors fail the run.
fn deliveries(
    counters: &Counters,
    g: &Gathered,
    t: &Totals,
    failure_reasons: &mut Vec<String>,
) -> result::Deliveries {
    let c = |a: &AtomicU64| a.load(Relaxed);
    let steps = &g.steps;
    let publish_errors: u64 = steps.iter().map(|s| s.report.errors).sum();
    if publish_errors > 0 {
        failure_reasons.push(format!("{publish_errors} publish errors"));
    }
    result::Deliveries {
        expected: Some(t.expected),
        received: Some(c(&counters.received)),
        missing: Some(t.missing),
        duplicated: Some(c(&counters.duplicated)),
        out_of_order: Some(c(&counters.out_of_order)),
        per_sec_expected: Some(if t.duration_s > 0.0 {
            t.expected as f64 / t.duration_s
        } else {
            0.0
        }),
        per_sec_achieved: Some(if t.window_s > 0.0 {
            t.distinct as f64 / t.window_s
        } else {
            0.0
        }),
        unexpected: c(&counters.unexpected),
        stale_other_runs: c(&counters.stale),
        other_events: c(&counters.other_events),
        seq_regressions: c(&counters.seq_regressions),
        events_scheduled: steps.iter().map(|s| s.report.scheduled).sum(),
        events_published: steps.iter().map(|s| s.report.published).sum(),
        events_dropped_by_hook: steps.iter().map(|s| s.report.dropped).sum(),
        deliveries_dropped_by_hook: steps.iter().map(|s| s.report.dropped_expected).sum(),
        publish_errors,
        publish_first_error: steps.iter().find_map(|s| s.report.first_error.clone()),
        publisher_max_lag_ms: steps
            .iter()
            .map(|s| s.report.max_lag.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max),
        other_events_during_measure: g.other_during,
        still_arriving_at_end: t.still_arriving,
        settle_s: g.settle_s,
        wire_bytes: c(&counters.wire_bytes),
        wire_bytes_per_delivery: result::per_delivery(
            c(&counters.wire_bytes),
            c(&counters.received),
        ),
        compressed: c(&counters.compressed),
    }
}

/// The report's latency curves: one per ramp step, or one for the whole run.
fn curves(o: &Options, steps: &[StepOut], all: &hdrhistogram::Histogram<u64>) -> Vec<Curve> {
    if o.ramp {
        steps
            .iter()
            .enumerate()
            .map(|(i, s)| Curve {
                label: format!("step {i}: {:.1} ev/s", s.report.rate),
                points: stats::spectrum(&stats::step_histogram(i)),
            })
            .collect()
    } else {
        vec![Curve {
            label: "all deliveries".into(),
            points: stats::spectrum(all),
        }]
    }
}
