//! The measured phase: one step (a plain run) or the ramp's steps, each published
//! open-loop by the publisher on a blocking thread while the progress line shows
//! the deliveries, then drained until every delivery that can arrive has (or the
//! grace is over), with the gateway and this tool sampled around it. A ramp stops
//! at the first step that breaks its bound; the final drain then gives a backlog
//! time to clear, so that late is not mistaken for missing.

use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::progress::{gw_text, Progress};
use super::Options;
use crate::clock::Clock;
use crate::procstat;
use crate::publisher::{PhaseReport, Publisher};
use crate::scenario::Scenario;
use crate::stats::{self, Counters, FromHistogram, Percentiles};

/// One measured phase (a ramp step or the whole run) after its drain.
pub(super) struct StepOut {
    pub report: PhaseReport,
    /// Between the CPU samples around the step.
    pub window: Duration,
    /// First receipts were still arriving when a timed-out drain ended.
    pub still_arriving: bool,
    pub eval: Instant,
    pub received_by_eval: u64,
    pub last_receive: Instant,
    pub gw_cpu: Option<f64>,
    pub client_cpu: Option<f64>,
    /// CPU of the connection engine's threads alone (no publisher, no coordinator).
    pub engine_cpu: Option<f64>,
    pub p: Percentiles,
}

impl StepOut {
    /// Deliveries the step owes: expected, less those of events skipped on purpose
    /// and of events that failed to publish.
    pub fn owed(&self) -> u64 {
        let r = &self.report;
        r.expected - r.dropped_expected - r.failed_expected
    }
}

/// What the steps share.
pub(super) struct Bench<'a> {
    pub o: &'a Options,
    pub env: &'a crate::engine::Env,
    pub counters: &'a Counters,
    pub clock: &'a Clock,
    pub abort: &'a Arc<AtomicBool>,
    pub progress: &'a mut Progress,
    /// Subscribers of each published channel.
    pub subs: Arc<Vec<u32>>,
    pub grace: Duration,
    /// When the first step starts (a fleet's barrier); `None` = at once.
    pub first_start: Option<Instant>,
}

/// The steps' (rate, seconds): the ramp's geometric rates, or the one plain step.
fn schedule(o: &Options, sc: &Scenario) -> Vec<(f64, f64)> {
    if o.ramp {
        let r0 = if sc.ramp_start_rate > 0.0 {
            sc.ramp_start_rate
        } else {
            sc.rate
        };
        (0..sc.ramp_max_steps)
            .map(|i| (r0 * sc.ramp_factor.powi(i as i32), sc.ramp_step_s))
            .collect()
    } else {
        vec![(sc.rate, sc.duration_s)]
    }
}

/// Run every step until the schedule ends, the ramp crosses its bound, or the run
/// is interrupted; then the final drain. Returns the publisher and the steps.
pub(super) async fn measure(
    mut publisher: Publisher,
    b: &mut Bench<'_>,
    mean_fanout: f64,
    measurable: bool,
) -> Result<(Publisher, Vec<StepOut>)> {
    let sc = &b.o.scenario;
    let mut outs: Vec<StepOut> = Vec::new();
    for (i, (rate, dur)) in schedule(b.o, sc).iter().enumerate() {
        if b.abort.load(Relaxed) || !measurable {
            break;
        }
        b.progress.say(&format!(
            "step {i}: publishing {rate:.1} events/s for {dur} s via {} (expected {:.0} deliveries/s)",
            sc.publisher.as_str(),
            rate * mean_fanout
        ));
        let (p, out) =
            measure_step(publisher, i as u32, *rate, Duration::from_secs_f64(*dur), b).await?;
        publisher = p;
        b.progress.say(&format!(
            "step {i}: {} events, {}/{} deliveries by the end of the drain, p99 {} ms",
            out.report.scheduled,
            out.received_by_eval,
            out.report.expected,
            out.p.p99.map_or("-".into(), |v| format!("{v:.2}"))
        ));
        let stop_ramp = b.o.ramp && crosses_bound(sc, &out, *dur);
        outs.push(out);
        if stop_ramp {
            break;
        }
    }
    final_drain(b, &outs).await;
    Ok((publisher, outs))
}

/// Whether a ramp step broke the scenario's bound: p99, achieved share, deliveries
/// still owed at the end of its drain, or publish errors.
fn crosses_bound(sc: &Scenario, out: &StepOut, dur: f64) -> bool {
    let exp_eff = out.owed();
    let behind = exp_eff.saturating_sub(out.received_by_eval);
    let window = out.eval.duration_since(out.report.started).as_secs_f64();
    let ratio = if exp_eff == 0 {
        1.0
    } else {
        (out.received_by_eval as f64 / window.max(1e-9)) / (exp_eff as f64 / dur.max(1e-9))
    };
    out.p.p99.is_some_and(|p| p > sc.ramp_p99_ms)
        || ratio < sc.ramp_min_achieved
        || behind > 0
        || out.report.errors > 0
}

/// A ramp's last step may have left a backlog: give it time to clear (bounded),
/// then let late duplicates in.
async fn final_drain(b: &Bench<'_>, outs: &[StepOut]) {
    let owed: u64 = outs.iter().map(StepOut::owed).sum();
    let extra = if b.o.ramp {
        b.grace.max(Duration::from_secs(30))
    } else {
        Duration::ZERO // the step's own drain already waited
    };
    let deadline = Instant::now() + extra;
    while b.counters.distinct.load(Relaxed) < owed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// One step: publish (on a blocking thread) while showing progress, drain, sample.
async fn measure_step(
    publisher: Publisher,
    step: u32,
    rate: f64,
    duration: Duration,
    b: &mut Bench<'_>,
) -> Result<(Publisher, StepOut)> {
    let pid = b.o.gateway_pid;
    let w0 = Instant::now();
    let g0 = pid.map(|p| procstat::sample(Some(p)));
    let c0 = procstat::sample(None);
    let e0 = crate::engine::thread_cpu_seconds(b.env);
    let (publisher, report) = publish(publisher, step, rate, duration, b).await?;
    let drained = drain(b.counters, step as usize, &report, b.grace).await;
    let last_ns = b.counters.last_receive_ns.load(Relaxed);
    let last_receive = clock_instant(b.clock, last_ns).max(report.started);
    let g1 = pid.map(|p| procstat::sample(Some(p)));
    let c1 = procstat::sample(None);
    let e1 = crate::engine::thread_cpu_seconds(b.env);
    let window = w0.elapsed();
    let gw_cpu = match (g0, g1) {
        (Some(a), Some(b)) => procstat::cpu_between(&a, &b),
        _ => None,
    };
    let p = Percentiles::of(&stats::step_histogram(step as usize), true);
    Ok((
        publisher,
        StepOut {
            report,
            window,
            still_arriving: drained.still_arriving,
            eval: drained.eval,
            received_by_eval: drained.received,
            last_receive,
            gw_cpu,
            client_cpu: procstat::cpu_between(&c0, &c1),
            engine_cpu: e0.zip(e1).map(|(a, b)| b - a),
            p,
        },
    ))
}

/// Publish one step on a blocking thread, showing the progress line meanwhile.
async fn publish(
    mut publisher: Publisher,
    step: u32,
    rate: f64,
    duration: Duration,
    b: &mut Bench<'_>,
) -> Result<(Publisher, PhaseReport)> {
    let (subs, ab) = (b.subs.clone(), b.abort.clone());
    let start = b
        .first_start
        .take()
        .unwrap_or_else(|| Instant::now() + Duration::from_millis(5));
    let handle = tokio::task::spawn_blocking(move || {
        let r = publisher.run_phase(step, rate, duration, start, &subs, &ab);
        (publisher, r)
    });
    tokio::pin!(handle);
    let t0 = Instant::now();
    let mut gw_prev = None;
    let c = b.counters;
    let mut last_recv = c.distinct.load(Relaxed);
    let mut last_t = Instant::now();
    let (publisher, report) = loop {
        tokio::select! {
            r = &mut handle => break r?,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if b.progress.due() {
            let now = Instant::now();
            let d = c.distinct.load(Relaxed);
            let rate_now = (d - last_recv) as f64 / now.duration_since(last_t).as_secs_f64();
            last_recv = d;
            last_t = now;
            let iv = stats::take_interval();
            let p99 = Percentiles::of(&iv, false).p99;
            let line = format!(
                "[step {step} {rate:.1} ev/s] {:.1}/{:.0}s published {} | deliveries {}/{} ({rate_now:.0}/s) p99 {} | open {} lost {}{}",
                t0.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                c.published.load(Relaxed),
                d,
                c.expected.load(Relaxed),
                p99.map_or("-".into(), |v| format!("{v:.2}ms")),
                c.open.load(Relaxed),
                c.lost.load(Relaxed),
                gw_text(b.o.gateway_pid, &mut gw_prev)
            );
            b.progress.show(&line);
        }
    };
    Ok((publisher, report))
}

/// Where a step's drain ended.
struct Drained {
    eval: Instant,
    /// First receipts of the step by then.
    received: u64,
    still_arriving: bool,
}

/// Wait until every delivery the step owes has arrived, or the grace is over.
async fn drain(counters: &Counters, step: usize, report: &PhaseReport, grace: Duration) -> Drained {
    let want = report.expected - report.dropped_expected - report.failed_expected;
    let deadline = Instant::now() + grace;
    let mut seen = counters.step_distinct(step);
    let mut changed = Instant::now();
    while seen < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = counters.step_distinct(step);
        if now != seen {
            seen = now;
            changed = Instant::now();
        }
    }
    let eval = Instant::now();
    Drained {
        eval,
        still_arriving: seen < want && eval.duration_since(changed) < Duration::from_millis(250),
        received: counters.step_distinct(step),
    }
}

/// The std Instant of a "nanoseconds since base" reading.
fn clock_instant(clock: &Clock, since_base_ns: u64) -> Instant {
    let now_ns = clock.since_base_ns(clock.now_unix_ns());
    let now = Instant::now();
    now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(since_base_ns)))
        .unwrap_or(now)
}
