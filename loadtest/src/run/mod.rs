//! The coordinator of a run, phase by phase: plan the connections, open the
//! publisher (failing fast on an unreachable Redis or admin listener), open every
//! connection and run the reconnect rounds ([`connect`]), let the gateway's own
//! connect-time events settle, run the measured phase or the ramp's steps
//! ([`measure`]), stop every connection, and assemble the result ([`assemble`]).
//! The gateway is sampled around each phase; [`progress`] keeps the operator
//! informed on stderr.
//!
//! Ctrl-C stops the run at the next phase boundary and still writes the result,
//! marked failed; a second Ctrl-C quits at once.

mod assemble;
mod connect;
mod measure;
mod progress;

use anyhow::{bail, Result};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clock::Clock;
use crate::conn::{ConnectReport, Env};
use crate::plan::Plan;
use crate::procstat;
use crate::publisher::{Publisher, Target};
use crate::report::Curve;
use crate::result::RunResult;
use crate::scenario::Scenario;
use crate::stats::Counters;
use crate::token::TokenMaker;
use assemble::{assemble, Gathered};
use connect::{connect_all, Watch};
use measure::{measure, Bench};
use progress::{gw_text, Progress};

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

pub async fn run(o: Options) -> Result<Outcome> {
    let sc = &o.scenario;
    let started_at_unix = xcord_common::clock::unix_secs();
    let mut progress = Progress::new(o.progress_every);
    let counters = Arc::new(Counters::new());
    let clock = Clock::new();
    if let Some(pid) = o.gateway_pid {
        if !procstat::alive(pid) {
            bail!("--gateway-pid {pid}: no such process");
        }
    }
    let plan = Arc::new(plan(&o, &mut progress));
    let abort = interrupt_flag();
    let publisher = open_publisher(&o, &plan, clock, &counters).await?;
    let (rep_tx, mut rep_rx) = mpsc::unbounded_channel();
    let env = Arc::new(env(&o, plan.clone(), counters.clone(), clock, rep_tx));

    let mut w = Watch {
        sc,
        progress: &mut progress,
        pid: o.gateway_pid,
        abort: &abort,
    };
    let connected = connect_all(&env, &o.url, &mut rep_rx, &mut w).await;
    let established_now = connected.ready.iter().filter(|x| **x).count();
    let lost_before_measure = counters.lost.load(Relaxed);
    let settle_s = settle(&mut w, &counters, established_now).await;
    env.typing_on.store(true, Relaxed);
    let other_before = counters.other_events.load(Relaxed);

    let subs = Arc::new(plan.subscriber_counts(&connected.ready));
    let mean_fanout = plan.mean_fanout(&subs);
    let mut bench = Bench {
        o: &o,
        counters: &counters,
        clock: &clock,
        abort: &abort,
        progress: &mut progress,
        subs,
        grace: Duration::from_secs_f64(sc.drain_grace_s),
    };
    let (_publisher, steps) = measure(publisher, &mut bench, mean_fanout, established_now).await?;
    let g_end = o.gateway_pid.map(|p| procstat::sample(Some(p)));
    let self_end = procstat::sample(None);
    let other_during = counters.other_events.load(Relaxed) - other_before;
    env.typing_on.store(false, Relaxed);
    stop_all(&connected.ctrl, connected.handles, &mut progress).await;

    let gathered = Gathered {
        started_at_unix,
        first: connected.first,
        reconnects: connected.reconnects,
        errors: connected.errors,
        connect_phase_s: connected.connect_phase_s,
        established_now,
        lost_before_measure,
        mean_fanout,
        steps,
        other_during,
        settle_s,
        gw: [connected.gw_before, connected.gw_after, g_end],
        me: [connected.self_start, self_end],
    };
    let mut out = assemble(&o, &plan, &counters, gathered);
    if abort.load(Relaxed) {
        out.result
            .failure_reasons
            .push("interrupted before the end of the run".into());
        out.result.passed = Some(false);
    }
    Ok(out)
}

/// Build the plan of the run, and say what it holds.
fn plan(o: &Options, progress: &mut Progress) -> Plan {
    let sc = &o.scenario;
    progress.say(&format!(
        "xcord-loadtest {} run {}: planning {} connections",
        sc.name, o.run_id, sc.connections
    ));
    let plan = Plan::build(sc, o.seed);
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
    plan
}

/// A flag that the first Ctrl-C sets; the second exits at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    let abort = Arc::new(AtomicBool::new(false));
    let flag = abort.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping and finishing the report (again to quit now)");
            flag.store(true, Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    abort
}

/// Open the publisher before any connection, so that an unreachable Redis or admin
/// listener fails the run at once.
async fn open_publisher(
    o: &Options,
    plan: &Arc<Plan>,
    clock: Clock,
    counters: &Arc<Counters>,
) -> Result<Publisher> {
    let t = o.publish.clone();
    let plan = plan.clone();
    let counters = counters.clone();
    let (run_id, bytes, seed) = (o.run_id, o.scenario.event_bytes, o.seed);
    let (de, dv) = (o.drop_events.clone(), o.drop_every);
    tokio::task::spawn_blocking(move || {
        Publisher::new(&t, plan, clock, run_id, bytes, seed, de, dv, counters)
    })
    .await?
}

/// Token lifetime: longer than the run can possibly last (every connect round at
/// its worst, every ramp step, an hour to spare), so no token expires mid-run.
fn token_ttl(o: &Options) -> u64 {
    let sc = &o.scenario;
    (sc.duration_s
        + sc.settle_max_s
        + sc.connect_timeout_s
            * (sc.reconnect_rounds as f64 + 2.0)
            * (sc.connect_retries as f64 + 1.0)
        + if o.ramp {
            sc.ramp_max_steps as f64 * (sc.ramp_step_s + sc.drain_grace_s)
        } else {
            0.0
        }
        + 3600.0) as u64
}

/// What every connection task shares.
fn env(
    o: &Options,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    clock: Clock,
    reports: mpsc::UnboundedSender<ConnectReport>,
) -> Env {
    let sc = &o.scenario;
    Env {
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
            .then(|| Duration::from_secs_f64(sc.connections as f64 / sc.typing_per_sec)),
        typing_on: AtomicBool::new(false),
        tokens: TokenMaker::new(
            &o.jwt_secret,
            o.jwt_issuer.clone(),
            o.jwt_audience.clone(),
            token_ttl(o),
        ),
        plan,
        counters,
        clock,
        run_id: o.run_id,
        reports,
    }
}

/// Wait (at most `settle_max_s`) until the gateway's own connect-time events
/// (presence to every member of every server of every user) stop arriving, so they
/// do not load the measured phase. Returns the seconds waited.
async fn settle(w: &mut Watch<'_>, counters: &Counters, established_now: usize) -> f64 {
    let sc = w.sc;
    let settle_start = std::time::Instant::now();
    if sc.settle_max_s > 0.0 && established_now > 0 {
        let max = Duration::from_secs_f64(sc.settle_max_s);
        let quiet = (sc.connections as u64 / 200).max(10);
        let mut last = counters.other_events.load(Relaxed);
        let mut gw_prev = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = counters.other_events.load(Relaxed);
            if now - last <= quiet || settle_start.elapsed() >= max || w.abort.load(Relaxed) {
                break;
            }
            if w.progress.due() {
                let line = format!(
                    "[settle] connect-time events still arriving: {}/s{}",
                    (now - last) * 2,
                    gw_text(w.pid, &mut gw_prev)
                );
                w.progress.show(&line);
            }
            last = now;
        }
    }
    let settle_s = settle_start.elapsed().as_secs_f64();
    if settle_s > 1.0 {
        w.progress.say(&format!(
            "settled for {settle_s:.1} s ({} connect-time events so far)",
            counters.other_events.load(Relaxed)
        ));
    }
    settle_s
}

/// Tell every connection to close, and wait for them (at most 15 s in all).
async fn stop_all(
    ctrl: &tokio::sync::watch::Sender<crate::conn::Ctrl>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    progress: &mut Progress,
) {
    ctrl.send_modify(|c| c.stop = true);
    progress.end_line();
    let stop_deadline = Instant::now() + Duration::from_secs(15);
    for h in handles {
        let left = stop_deadline.saturating_duration_since(Instant::now());
        let abort_handle = h.abort_handle();
        if tokio::time::timeout(left, h).await.is_err() {
            abort_handle.abort();
        }
    }
}
