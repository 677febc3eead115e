//! The coordinator: opens every connection (and reconnects them all, for a storm),
//! waits for every `SUBSCRIBED`, runs the measured phase (or the ramp's steps) with
//! the publisher on its own thread, drains, samples the gateway around each phase,
//! prints the live progress line, and assembles the result.

use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::conn::{self, Clock, ConnectReport, Ctrl, Env};
use crate::plan::Plan;
use crate::procstat::{self, Sample};
use crate::publisher::{PhaseReport, Publisher, Target};
use crate::report::Curve;
use crate::result::{self, RampStep, Round, RunResult};
use crate::scenario::Scenario;
use crate::stats::{self, Counters, Percentiles};
use crate::token::TokenMaker;

/// Everything a run needs, resolved from the command line.
pub struct Options {
    pub scenario: Scenario,
    pub target: SocketAddr,
    pub url: String,
    pub publish: Target,
    pub jwt_secret: String,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub gateway_pid: Option<u32>,
    pub gateway_shards: Option<u32>,
    pub ramp: bool,
    pub run_id: u64,
    pub seed: u64,
    pub drop_events: BTreeSet<u64>,
    pub drop_every: u64,
    pub client_threads: usize,
    pub read_buffer: usize,
    pub progress_every: Option<Duration>,
    pub allow_connect_failures: bool,
    pub command: String,
}

/// The result plus what the report draws.
pub struct Outcome {
    pub result: RunResult,
    pub curves: Vec<Curve>,
}

/// The progress line: rewritten in place on a terminal, one line per tick otherwise.
struct Progress {
    every: Option<Duration>,
    tty: bool,
    last: std::time::Instant,
    dirty: bool,
}

impl Progress {
    fn new(every: Option<Duration>) -> Progress {
        Progress {
            every,
            tty: std::io::stderr().is_terminal(),
            last: std::time::Instant::now(),
            dirty: false,
        }
    }
    fn due(&mut self) -> bool {
        match self.every {
            Some(e) if self.last.elapsed() >= e => {
                self.last = std::time::Instant::now();
                true
            }
            _ => false,
        }
    }
    fn show(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
            self.dirty = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
    fn say(&mut self, line: &str) {
        self.end_line();
        eprintln!("{line}");
    }
    fn end_line(&mut self) {
        if self.dirty {
            eprintln!();
            self.dirty = false;
        }
    }
}

fn gw_text(pid: Option<u32>, prev: &mut Option<(std::time::Instant, Sample)>) -> String {
    let Some(pid) = pid else {
        return String::new();
    };
    let s = procstat::sample(Some(pid));
    let now = std::time::Instant::now();
    let cpu = prev.as_ref().and_then(|(t, p)| {
        let dt = now.duration_since(*t).as_secs_f64();
        procstat::cpu_between(p, &s).map(|c| c / dt.max(1e-3) * 100.0)
    });
    *prev = Some((now, s));
    format!(
        " | gw rss {} cpu {}",
        s.rss_bytes
            .map_or("-".into(), |b| format!("{:.0}MiB", b as f64 / 1048576.0)),
        cpu.map_or("-".into(), |c| format!("{c:.0}%"))
    )
}

/// Per-round connection statistics.
struct RoundStats {
    round: Round,
    /// The gateway's RSS sampled as the connect phase passed 25%, 30%, … 100%
    /// of the connections: (established then, RSS bytes), for the marginal slope.
    rss_points: Vec<(usize, u64)>,
    ok: Vec<bool>,
    handshake: hdrhistogram::Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// An error as a map key: repeated context segments removed, length bounded.
fn error_kind(e: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in e.split(": ") {
        if parts.last() != Some(&p) {
            parts.push(p);
        }
    }
    let mut s = parts.join(": ");
    if s.contains("Handshake not finished") {
        s.push_str(" (the gateway closed the connection before answering the upgrade)");
    }
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
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

#[allow(clippy::too_many_arguments)]
async fn collect_round(
    round: u32,
    n: usize,
    sc: &Scenario,
    rx: &mut mpsc::UnboundedReceiver<ConnectReport>,
    start: Instant,
    progress: &mut Progress,
    pid: Option<u32>,
    abort: &AtomicBool,
) -> RoundStats {
    let mut ok = vec![false; n];
    let mut seen = vec![false; n];
    let mut hs = stats::new_hist();
    let mut sub = stats::new_hist();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut good, mut bad) = (0usize, 0usize);
    let mut last_ok = start;
    let waves = n.div_ceil(sc.connect_concurrency) as f64 + 1.0;
    let paced = if sc.connect_rate > 0.0 {
        n as f64 / sc.connect_rate
    } else {
        0.0
    };
    let retries = sc.connect_retries as f64;
    let deadline = start
        + Duration::from_secs_f64(
            sc.connect_timeout_s * (waves + retries) + retries * 5.0 + paced + 10.0,
        );
    let (mut attempts, mut retried) = (0u64, 0u64);
    let mut gw_prev = None;
    let mut rss_points: Vec<(usize, u64)> = Vec::new();
    let mut next_mark = n.div_ceil(4).max(1);
    while good + bad < n {
        let now = Instant::now();
        if now >= deadline || abort.load(Relaxed) {
            break;
        }
        let wait = (deadline - now).min(Duration::from_millis(200));
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(rep)) => {
                if rep.round != round || rep.id >= n || seen[rep.id] {
                    continue;
                }
                seen[rep.id] = true;
                attempts += rep.attempts as u64;
                retried += rep.attempts.saturating_sub(1) as u64;
                match rep.result {
                    Ok(c) => {
                        good += 1;
                        if good >= next_mark && n >= 20 {
                            if let Some(rss) = pid.and_then(|p| procstat::sample(Some(p)).rss_bytes)
                            {
                                rss_points.push((good, rss));
                            }
                            next_mark = good + n.div_ceil(20);
                        }
                        ok[rep.id] = true;
                        stats::record_into(&mut hs, c.handshake.as_micros() as u64);
                        stats::record_into(&mut sub, c.subscribe.as_micros() as u64);
                        last_ok = last_ok.max(c.at);
                    }
                    Err(e) => {
                        bad += 1;
                        *errors.entry(error_kind(&e)).or_insert(0) += 1;
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
        if progress.due() {
            let el = start.elapsed().as_secs_f64();
            let line = format!(
                "[connect round {round}] {good}/{n} subscribed, {bad} failed, {:.0}/s{}",
                good as f64 / el.max(1e-3),
                gw_text(pid, &mut gw_prev)
            );
            progress.show(&line);
        }
    }
    let missing = n - good - bad;
    if missing > 0 {
        *errors
            .entry("no answer before the connect phase ended (deadline or interrupt)".into())
            .or_insert(0) += missing as u64;
        bad += missing;
    }
    let span = last_ok.duration_since(start).as_secs_f64();
    RoundStats {
        rss_points,
        round: Round {
            round,
            target: n,
            established: good,
            failed: bad,
            duration_s: span,
            connect_rate_per_sec: (good > 0 && span > 0.0).then(|| good as f64 / span),
            handshake_latency_ms: Percentiles::of(&hs, false),
            subscribe_latency_ms: Percentiles::of(&sub, false),
            attempts,
            retried,
        },
        ok,
        handshake: hs,
        errors,
    }
}

/// One measured phase (a ramp step or the whole run) after its drain.
struct StepOut {
    report: PhaseReport,
    /// Between the CPU samples around the step.
    window: Duration,
    /// First receipts were still arriving when a timed-out drain ended.
    still_arriving: bool,
    eval: std::time::Instant,
    received_by_eval: u64,
    last_receive: std::time::Instant,
    gw_cpu: Option<f64>,
    client_cpu: Option<f64>,
    p: Percentiles,
}

#[allow(clippy::too_many_arguments)]
async fn measure_step(
    publisher: Publisher,
    step: u32,
    rate: f64,
    duration: Duration,
    subs: Arc<Vec<u32>>,
    grace: Duration,
    o: &Options,
    counters: &Counters,
    clock: &Clock,
    abort: &Arc<AtomicBool>,
    progress: &mut Progress,
) -> Result<(Publisher, StepOut)> {
    let pid = o.gateway_pid;
    let w0 = std::time::Instant::now();
    let g0 = pid.map(|p| procstat::sample(Some(p)));
    let c0 = procstat::sample(None);
    let ab = abort.clone();
    let mut publisher = publisher;
    let handle = tokio::task::spawn_blocking(move || {
        let r = publisher.run_phase(step, rate, duration, &subs, &ab);
        (publisher, r)
    });
    tokio::pin!(handle);
    let t0 = std::time::Instant::now();
    let mut gw_prev = None;
    let mut last_recv = counters.distinct.load(Relaxed);
    let mut last_t = std::time::Instant::now();
    let (publisher, report) = loop {
        tokio::select! {
            r = &mut handle => break r?,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if progress.due() {
            let now = std::time::Instant::now();
            let d = counters.distinct.load(Relaxed);
            let rate_now = (d - last_recv) as f64 / now.duration_since(last_t).as_secs_f64();
            last_recv = d;
            last_t = now;
            let iv = stats::take_interval();
            let p99 = Percentiles::of(&iv, false).p99;
            let line = format!(
                "[step {step} {rate:.1} ev/s] {:.1}/{:.0}s published {} | deliveries {}/{} ({rate_now:.0}/s) p99 {} | open {} lost {}{}",
                t0.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                counters.published.load(Relaxed),
                d,
                counters.expected.load(Relaxed),
                p99.map_or("-".into(), |v| format!("{v:.2}ms")),
                counters.open.load(Relaxed),
                counters.lost.load(Relaxed),
                gw_text(pid, &mut gw_prev)
            );
            progress.show(&line);
        }
    };
    // Drain: until every delivery that can arrive has, or the grace is over.
    let want = report.expected - report.dropped_expected - report.failed_expected;
    let deadline = std::time::Instant::now() + grace;
    let mut seen = counters.step_distinct(step as usize);
    let mut changed = std::time::Instant::now();
    while seen < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = counters.step_distinct(step as usize);
        if now != seen {
            seen = now;
            changed = std::time::Instant::now();
        }
    }
    let eval = std::time::Instant::now();
    let still_arriving = seen < want && eval.duration_since(changed) < Duration::from_millis(250);
    let received_by_eval = counters.step_distinct(step as usize);
    let last_ns = counters.last_receive_ns.load(Relaxed);
    let last_receive = clock_instant(clock, last_ns).max(report.started);
    let g1 = pid.map(|p| procstat::sample(Some(p)));
    let c1 = procstat::sample(None);
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
            still_arriving,
            eval,
            received_by_eval,
            last_receive,
            gw_cpu,
            client_cpu: procstat::cpu_between(&c0, &c1),
            p,
        },
    ))
}

/// The std Instant of a "nanoseconds since base" reading.
fn clock_instant(clock: &Clock, since_base_ns: u64) -> std::time::Instant {
    let now_ns = clock.since_base_ns(clock.now_unix_ns());
    let now = std::time::Instant::now();
    now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(since_base_ns)))
        .unwrap_or(now)
}

pub async fn run(o: Options) -> Result<Outcome> {
    let sc = o.scenario.clone();
    let n = sc.connections;
    let started_at_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut progress = Progress::new(o.progress_every);
    let counters = Arc::new(Counters::new());
    let clock = Clock::new();
    if let Some(pid) = o.gateway_pid {
        if !procstat::alive(pid) {
            bail!("--gateway-pid {pid}: no such process");
        }
    }

    progress.say(&format!(
        "xcord-loadtest {} run {}: planning {} connections",
        sc.name, o.run_id, n
    ));
    let plan = Arc::new(Plan::build(&sc, o.seed));
    if plan.largest_server > 0 {
        progress.say(&format!(
            "chat: {} published channels, biggest server {} members{}",
            plan.channel_names.len(),
            plan.largest_server,
            if plan.presence_fanout > 0 {
                format!(
                    "; server trees: about {} presence deliveries owed as users come online",
                    plan.presence_fanout
                )
            } else {
                String::new()
            }
        ));
    }
    let abort = Arc::new(AtomicBool::new(false));
    {
        let abort = abort.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: stopping and finishing the report (again to quit now)");
                abort.store(true, Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    // Fail fast on an unreachable Redis or admin listener, before any connection.
    let publisher = {
        let t = o.publish.clone();
        let plan = plan.clone();
        let counters = counters.clone();
        let (run_id, bytes, seed) = (o.run_id, sc.event_bytes, o.seed);
        let (de, dv) = (o.drop_events.clone(), o.drop_every);
        tokio::task::spawn_blocking(move || {
            Publisher::new(&t, plan, clock, run_id, bytes, seed, de, dv, counters)
        })
        .await??
    };

    let ttl = (sc.duration_s
        + sc.settle_max_s
        + sc.connect_timeout_s
            * (sc.reconnect_rounds as f64 + 2.0)
            * (sc.connect_retries as f64 + 1.0)
        + if o.ramp {
            sc.ramp_max_steps as f64 * (sc.ramp_step_s + sc.drain_grace_s)
        } else {
            0.0
        }
        + 3600.0) as u64;
    let (rep_tx, mut rep_rx) = mpsc::unbounded_channel();
    let env = Arc::new(Env {
        target: o.target,
        url: o.url.clone(),
        ws_config: WebSocketConfig::default()
            .read_buffer_size(o.read_buffer)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20)),
        source_addrs: sc.effective_source_addrs(),
        connect_timeout: Duration::from_secs_f64(sc.connect_timeout_s),
        connect_retries: sc.connect_retries,
        connect_backoff: Duration::from_millis(sc.connect_retry_backoff_ms),
        connect_rate: sc.connect_rate,
        slots: AtomicU64::new(0),
        sem: Semaphore::new(sc.connect_concurrency),
        ping: sc.ping,
        ping_interval: (sc.ping_interval_ms > 0)
            .then(|| Duration::from_millis(sc.ping_interval_ms)),
        typing_mean: (sc.typing_per_sec > 0.0)
            .then(|| Duration::from_secs_f64(n as f64 / sc.typing_per_sec)),
        typing_on: AtomicBool::new(false),
        tokens: TokenMaker::new(
            &o.jwt_secret,
            o.jwt_issuer.clone(),
            o.jwt_audience.clone(),
            ttl,
        ),
        plan: plan.clone(),
        counters: counters.clone(),
        clock,
        run_id: o.run_id,
        reports: rep_tx,
    });

    // Connect.
    let g_before = o.gateway_pid.map(|p| procstat::sample(Some(p)));
    let self_start = procstat::sample(None);
    let round_start = Instant::now();
    let (ctrl_tx, ctrl_rx) = watch::channel(Ctrl {
        round: 0,
        stop: false,
        round_start,
    });
    progress.say(&format!(
        "connecting {n} to {} from {} source address(es), {} at a time{}",
        o.url,
        env.source_addrs,
        sc.connect_concurrency,
        if sc.connect_rate > 0.0 {
            format!(", {}/s", sc.connect_rate)
        } else {
            String::new()
        }
    ));
    let mut handles = Vec::with_capacity(n);
    for id in 0..n {
        handles.push(tokio::spawn(conn::run(id, env.clone(), ctrl_rx.clone())));
    }
    drop(ctrl_rx);
    let first = collect_round(
        0,
        n,
        &sc,
        &mut rep_rx,
        round_start,
        &mut progress,
        o.gateway_pid,
        &abort,
    )
    .await;
    let connect_phase_s = round_start.elapsed().as_secs_f64();
    progress.say(&format!(
        "round 0: {}/{} subscribed, {} failed in {:.2} s",
        first.round.established, n, first.round.failed, first.round.duration_s
    ));
    let g_after = o.gateway_pid.map(|p| procstat::sample(Some(p)));
    let mut errors = first.errors.clone();
    let mut ready = first.ok.clone();
    let mut reconnects = Vec::new();
    for r in 1..=sc.reconnect_rounds {
        if abort.load(Relaxed) {
            break;
        }
        env.slots.store(0, Relaxed);
        let start = Instant::now();
        ctrl_tx.send_modify(|c| {
            c.round = r;
            c.round_start = start;
        });
        progress.say(&format!("round {r}: every connection reconnects now"));
        let rs = collect_round(
            r,
            n,
            &sc,
            &mut rep_rx,
            start,
            &mut progress,
            o.gateway_pid,
            &abort,
        )
        .await;
        progress.say(&format!(
            "round {r}: {}/{} subscribed, {} failed in {:.2} s",
            rs.round.established, n, rs.round.failed, rs.round.duration_s
        ));
        for (k, v) in rs.errors {
            *errors.entry(format!("round {r}: {k}")).or_insert(0) += v;
        }
        ready = rs.ok;
        reconnects.push(rs.round);
    }
    let established_now = ready.iter().filter(|x| **x).count();
    let lost_before_measure = counters.lost.load(Relaxed);

    // Settle: the gateway's own connect-time events (presence to every member of
    // every server of every user) can keep it busy for a while; wait until they stop.
    let settle_start = std::time::Instant::now();
    if sc.settle_max_s > 0.0 && established_now > 0 {
        let max = Duration::from_secs_f64(sc.settle_max_s);
        let quiet = (n as u64 / 200).max(10);
        let mut last = counters.other_events.load(Relaxed);
        let mut gw_prev = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = counters.other_events.load(Relaxed);
            if now - last <= quiet || settle_start.elapsed() >= max || abort.load(Relaxed) {
                break;
            }
            if progress.due() {
                let line = format!(
                    "[settle] connect-time events still arriving: {}/s{}",
                    (now - last) * 2,
                    gw_text(o.gateway_pid, &mut gw_prev)
                );
                progress.show(&line);
            }
            last = now;
        }
    }
    let settle_s = settle_start.elapsed().as_secs_f64();
    if settle_s > 1.0 {
        progress.say(&format!(
            "settled for {settle_s:.1} s ({} connect-time events so far)",
            counters.other_events.load(Relaxed)
        ));
    }
    env.typing_on.store(true, Relaxed);
    let other_before = counters.other_events.load(Relaxed);

    // Measure.
    let subs = Arc::new(plan.subscriber_counts(&ready));
    let mean_fanout = plan.mean_fanout(&subs);
    let steps: Vec<(f64, f64)> = if o.ramp {
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
    };
    let mut publisher = publisher;
    let mut outs: Vec<StepOut> = Vec::new();
    let grace = Duration::from_secs_f64(sc.drain_grace_s);
    for (i, (rate, dur)) in steps.iter().enumerate() {
        if abort.load(Relaxed) || established_now == 0 {
            break;
        }
        progress.say(&format!(
            "step {i}: publishing {rate:.1} events/s for {dur} s via {} (expected {:.0} deliveries/s)",
            sc.publisher.as_str(),
            rate * mean_fanout
        ));
        let (p, out) = measure_step(
            publisher,
            i as u32,
            *rate,
            Duration::from_secs_f64(*dur),
            subs.clone(),
            grace,
            &o,
            &counters,
            &clock,
            &abort,
            &mut progress,
        )
        .await?;
        publisher = p;
        let exp_eff =
            out.report.expected - out.report.dropped_expected - out.report.failed_expected;
        let behind = exp_eff.saturating_sub(out.received_by_eval);
        progress.say(&format!(
            "step {i}: {} events, {}/{} deliveries by the end of the drain, p99 {} ms",
            out.report.scheduled,
            out.received_by_eval,
            out.report.expected,
            out.p.p99.map_or("-".into(), |v| format!("{v:.2}"))
        ));
        let stop_ramp = o.ramp && {
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
        };
        outs.push(out);
        if stop_ramp {
            break;
        }
    }
    // Final drain: a ramp's last step may have left a backlog; give it time to clear
    // (bounded) so that late is not mistaken for missing. Then let late duplicates in.
    let owed: u64 = outs
        .iter()
        .map(|s| s.report.expected - s.report.dropped_expected - s.report.failed_expected)
        .sum();
    let extra = if o.ramp {
        grace.max(Duration::from_secs(30))
    } else {
        Duration::ZERO // the step's own drain already waited
    };
    let deadline = std::time::Instant::now() + extra;
    while counters.distinct.load(Relaxed) < owed && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let g_end = o.gateway_pid.map(|p| procstat::sample(Some(p)));
    let self_end = procstat::sample(None);
    let other_during = counters.other_events.load(Relaxed) - other_before;
    env.typing_on.store(false, Relaxed);

    // Stop every connection.
    ctrl_tx.send_modify(|c| c.stop = true);
    progress.end_line();
    let stop_deadline = Instant::now() + Duration::from_secs(15);
    for h in handles {
        let left = stop_deadline.saturating_duration_since(Instant::now());
        let abort_handle = h.abort_handle();
        if tokio::time::timeout(left, h).await.is_err() {
            abort_handle.abort();
        }
    }

    let mut out = assemble(
        &o,
        &sc,
        &plan,
        &counters,
        started_at_unix,
        first,
        reconnects,
        errors,
        connect_phase_s,
        established_now,
        lost_before_measure,
        mean_fanout,
        outs,
        [other_during as f64, settle_s],
        [g_before, g_after, g_end],
        [self_start, self_end],
    );
    if abort.load(Relaxed) {
        out.result
            .failure_reasons
            .push("interrupted before the end of the run".into());
        out.result.passed = false;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    o: &Options,
    sc: &Scenario,
    plan: &Plan,
    counters: &Counters,
    started_at_unix: u64,
    first: RoundStats,
    reconnects: Vec<Round>,
    errors: BTreeMap<String, u64>,
    connect_phase_s: f64,
    established_now: usize,
    lost_before_measure: u64,
    mean_fanout: f64,
    outs: Vec<StepOut>,
    [other_during, settle_s]: [f64; 2],
    gw: [Option<Sample>; 3],
    me: [Sample; 2],
) -> Outcome {
    let c = |a: &AtomicU64| a.load(Relaxed);
    let distinct = c(&counters.distinct);
    let expected: u64 = outs.iter().map(|s| s.report.expected).sum();
    let missing = expected.saturating_sub(distinct);
    let duration_s: f64 = outs
        .iter()
        .map(|s| {
            s.report
                .ended
                .duration_since(s.report.started)
                .as_secs_f64()
        })
        .sum();
    let window_s: f64 = outs
        .iter()
        .map(|s| {
            let publish = s.report.ended.duration_since(s.report.started);
            let recv = s.last_receive.min(s.eval).duration_since(s.report.started);
            publish.max(recv).as_secs_f64()
        })
        .sum();
    let mut all = stats::new_hist();
    for i in 0..outs.len() {
        let _ = all.add(stats::step_histogram(i));
    }
    let latency_ms = Percentiles::of(&all, true);
    let gw_cpu_measure: Option<f64> = outs.iter().map(|s| s.gw_cpu).sum();
    let cpu_window_s: f64 = outs.iter().map(|s| s.window.as_secs_f64()).sum();
    let still_arriving = outs.iter().any(|s| s.still_arriving);
    let client_cpu_measure: Option<f64> = outs.iter().map(|s| s.client_cpu).sum();

    let mut failure_reasons = Vec::new();
    if missing > 0 {
        failure_reasons.push(format!(
            "{missing} deliveries missing{}",
            if still_arriving {
                " (still arriving when the drain ended: the gateway was behind; lower the rate or raise drain_grace_s)"
            } else {
                ""
            }
        ));
    }
    let dup = c(&counters.duplicated);
    if dup > 0 {
        failure_reasons.push(format!("{dup} deliveries duplicated"));
    }
    let ooo = c(&counters.out_of_order);
    if ooo > 0 {
        failure_reasons.push(format!("{ooo} deliveries out of order"));
    }
    let unexpected = c(&counters.unexpected);
    if unexpected > 0 {
        failure_reasons.push(format!(
            "{unexpected} deliveries to connections not subscribed to their channel"
        ));
    }
    let regress = c(&counters.seq_regressions);
    if regress > 0 {
        failure_reasons.push(format!("{regress} EVENT seq regressions"));
    }
    if first.round.failed > 0 && !o.allow_connect_failures {
        failure_reasons.push(format!(
            "{} of {} connections failed (--allow-connect-failures to accept)",
            first.round.failed, first.round.target
        ));
    }
    for r in &reconnects {
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
            "{lost} connections closed by the gateway or broken ({lost_before_measure} before the measured phase)"
        ));
    }
    if established_now == 0 {
        failure_reasons.push("no connection was established".into());
    }
    let scheduled: u64 = outs.iter().map(|s| s.report.scheduled).sum();
    if outs.is_empty() || (scheduled == 0 && sc.rate > 0.0 && sc.duration_s > 0.0) {
        failure_reasons.push("nothing was published".into());
    }

    // Ramp steps.
    let mut ramp = None;
    let mut saturation = None;
    let mut saturation_rate = None;
    if o.ramp {
        let mut v = Vec::new();
        let last = outs.len().saturating_sub(1);
        for (i, s) in outs.iter().enumerate() {
            let r = &s.report;
            let dur = r.ended.duration_since(r.started).as_secs_f64();
            let nominal = r.scheduled as f64 / r.rate.max(1e-9);
            let exp_eff = r.expected - r.dropped_expected - r.failed_expected;
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
            let ok = why.is_empty();
            if ok && saturation.is_none_or(|best| dps > best) {
                saturation = Some(dps);
                saturation_rate = Some(r.rate);
            }
            if !ok && i != last {
                failure_reasons.push(format!("ramp step {i} not ok before the last step"));
            }
            v.push(RampStep {
                rate_events_per_sec: r.rate,
                deliveries_per_sec: dps,
                p99_ms: s.p.p99,
                missing: step_missing,
                ok,
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
                gateway_cpu_percent: s
                    .gw_cpu
                    .map(|c| c / s.window.as_secs_f64().max(1e-9) * 100.0),
                client_cpu_percent: s
                    .client_cpu
                    .map(|c| c / s.window.as_secs_f64().max(1e-9) * 100.0),
                publisher_max_lag_ms: r.max_lag.as_secs_f64() * 1000.0,
                why,
            });
        }
        ramp = Some(v);
    }

    let per_conn = |a: Option<Sample>, b: Option<Sample>| -> Option<f64> {
        let (a, b) = (a?.rss_bytes?, b?.rss_bytes?);
        (first.round.established > 0)
            .then(|| (b as f64 - a as f64) / first.round.established as f64)
    };
    let [g_before, g_after, g_end] = gw;
    let gateway = o.gateway_pid.map(|pid| result::Gateway {
        pid,
        rss_bytes_before_connect: g_before.and_then(|s| s.rss_bytes),
        rss_bytes_after_connect: g_after.and_then(|s| s.rss_bytes),
        rss_bytes_end: g_end.and_then(|s| s.rss_bytes),
        rss_bytes_per_connection: per_conn(g_before, g_after),
        rss_bytes_per_connection_marginal: slope(&first.rss_points),
        cpu_seconds_connect: match (g_before, g_after) {
            (Some(a), Some(b)) => procstat::cpu_between(&a, &b),
            _ => None,
        },
        cpu_seconds_measure: gw_cpu_measure,
        cpu_seconds_per_million_deliveries: gw_cpu_measure
            .filter(|_| distinct > 0)
            .map(|cpu| cpu / (distinct as f64 / 1e6)),
        rss_bytes_peak: g_end.and_then(|s| s.peak_rss_bytes),
        cpu_percent_measure: gw_cpu_measure
            .filter(|_| cpu_window_s > 0.0)
            .map(|cpu| cpu / cpu_window_s * 100.0),
    });

    let drop_evs: u64 = outs.iter().map(|s| s.report.dropped).sum();
    let drop_del: u64 = outs.iter().map(|s| s.report.dropped_expected).sum();
    let pub_errors: u64 = outs.iter().map(|s| s.report.errors).sum();
    if pub_errors > 0 {
        failure_reasons.push(format!("{pub_errors} publish errors"));
    }
    let first_err = outs.iter().find_map(|s| s.report.first_error.clone());
    let max_lag = outs
        .iter()
        .map(|s| s.report.max_lag.as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);

    let n_ch = plan.channel_names.len();
    let ready_counts: Vec<u32> = plan.subscriber_counts(&vec![true; plan.conns.len()]);
    let subscribers_per_channel =
        ready_counts.iter().map(|x| *x as f64).sum::<f64>() / (n_ch.max(1) as f64);

    let curves: Vec<Curve> = if o.ramp {
        outs.iter()
            .enumerate()
            .map(|(i, s)| Curve {
                label: format!("step {i}: {:.1} ev/s", s.report.rate),
                points: stats::spectrum(&stats::step_histogram(i)),
            })
            .collect()
    } else {
        vec![Curve {
            label: "all deliveries".into(),
            points: stats::spectrum(&all),
        }]
    };

    let result = RunResult {
        schema: result::SCHEMA,
        scenario: sc.name.clone(),
        started_at_unix,
        duration_s,
        host: result::Host {
            cores: procstat::host_cores(),
            mem_bytes: procstat::host_mem_bytes(),
        },
        config: result::Config {
            connections: sc.connections,
            channels: n_ch,
            subscribers_per_channel: subscribers_per_channel.round() as u64,
            subscriptions_per_connection: plan.mean_subscriptions().round() as u64,
            subscribers_per_channel_mean: subscribers_per_channel,
            subscriptions_per_connection_mean: plan.mean_subscriptions(),
            rate_events_per_sec: sc.rate,
            event_bytes: sc.event_bytes,
            publisher: sc.publisher.as_str(),
            gateway_shards: o.gateway_shards,
            mean_fanout,
            seed: o.seed,
            source_addrs: sc.effective_source_addrs(),
            client_threads: o.client_threads,
            scenario: sc.clone(),
        },
        connections: result::Connections {
            target: first.round.target,
            established: first.round.established,
            failed: first.round.failed,
            connect_rate_per_sec: first.round.connect_rate_per_sec,
            handshake_latency_ms: Percentiles::of(&first.handshake, false),
            subscribe_latency_ms: first.round.subscribe_latency_ms.clone(),
            connect_phase_s,
            attempts: first.round.attempts,
            retried: first.round.retried,
            errors,
            lost,
            close_reasons: counters
                .close_codes
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            reconnects,
            pings_sent: c(&counters.pings),
            pongs_received: c(&counters.pongs),
            typing_sent: c(&counters.typing_sent),
        },
        deliveries: result::Deliveries {
            expected,
            received: c(&counters.received),
            missing,
            duplicated: dup,
            out_of_order: ooo,
            per_sec_expected: if duration_s > 0.0 {
                expected as f64 / duration_s
            } else {
                0.0
            },
            per_sec_achieved: if window_s > 0.0 {
                distinct as f64 / window_s
            } else {
                0.0
            },
            unexpected,
            stale_other_runs: c(&counters.stale),
            other_events: c(&counters.other_events),
            seq_regressions: regress,
            events_scheduled: scheduled,
            events_published: outs.iter().map(|s| s.report.published).sum(),
            events_dropped_by_hook: drop_evs,
            deliveries_dropped_by_hook: drop_del,
            publish_errors: pub_errors,
            publish_first_error: first_err,
            publisher_max_lag_ms: max_lag,
            other_events_during_measure: other_during as u64,
            still_arriving_at_end: still_arriving,
            settle_s,
        },
        latency_ms,
        gateway,
        ramp,
        saturation_deliveries_per_sec: saturation,
        passed: failure_reasons.is_empty(),
        failure_reasons,
        command: o.command.clone(),
        run_id: o.run_id,
        tool_version: env!("CARGO_PKG_VERSION"),
        saturation_rate_events_per_sec: saturation_rate,
        latency_percentiles: stats::spectrum(&all),
        client: result::Client {
            threads: o.client_threads,
            cpu_seconds_measure: client_cpu_measure,
            cpu_seconds_total: procstat::cpu_between(&me[0], &me[1]),
            rss_bytes_end: me[1].rss_bytes,
        },
    };
    Outcome { result, curves }
}
