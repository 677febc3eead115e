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
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::engine::{ConnectReport, Ctrl, Engine, Env, Target as WsTarget};
use crate::fleet::{Barrier, Role, Shard};
use crate::plan::Plan;
use crate::procstat;
use crate::publisher::{Hooks, Publisher, Target};
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
    /// The gateway: address, Host header, path, TLS (`None` for `--publish-only`).
    pub target: Option<WsTarget>,
    /// The URL as given (shown, recorded).
    pub url: String,
    /// Source addresses to bind, connection `id` on `id % len`; empty = the kernel's.
    pub source_addrs: Vec<IpAddr>,
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
    pub duplicate_events: BTreeSet<u64>,
    pub client_threads: usize,
    /// Each engine thread's read buffer.
    pub read_buffer: usize,
    /// How long an engine thread sleeps outside epoll between busy turns.
    pub coalesce: Duration,
    /// Offer permessage-deflate.
    pub compression: bool,
    /// This process's slice of the plan, and what it does in a fleet.
    pub shard: Shard,
    pub role: Role,
    /// The Redis of the fleet barrier, and how long to wait there.
    pub barrier_redis: Option<String>,
    pub barrier_timeout: Duration,
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
    let ids: Vec<usize> = if o.role.connects() {
        o.shard.ids(plan.conns.len())
    } else {
        Vec::new()
    };
    let connected = connect_all(&env, o.client_threads, &ids, &o.url, &mut rep_rx, &mut w).await?;
    let established_now = connected.ready.iter().filter(|x| **x).count();
    let lost_before_measure = counters.lost.load(Relaxed);
    let settle_s = settle(&mut w, &counters, established_now).await;
    let first_start = meet(&o, clock, &mut progress).await?;
    env.typing_on.store(true, Relaxed);
    let other_before = counters.other_events.load(Relaxed);

    let subs = Arc::new(plan.subscriber_counts(&connected.ready));
    let mean_fanout = plan.mean_fanout(&subs);
    let mut bench = Bench {
        o: &o,
        env: &env,
        counters: &counters,
        clock: &clock,
        abort: &abort,
        progress: &mut progress,
        subs,
        grace: Duration::from_secs_f64(sc.drain_grace_s),
        first_start,
    };
    let measurable = established_now > 0 || !o.role.connects();
    let (publisher, steps) = measure(publisher, &mut bench, mean_fanout, measurable).await?;
    let g_end = o.gateway_pid.map(|p| procstat::sample(Some(p)));
    let self_end = procstat::sample(None);
    let other_during = counters.other_events.load(Relaxed) - other_before;
    env.typing_on.store(false, Relaxed);
    stop_all(connected.engine, &mut progress).await;

    let gathered = Gathered {
        ready: connected.ready,
        scheduled_per_channel: publisher.scheduled_per_channel,
        dropped_per_channel: publisher.dropped_per_channel,
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
    let hooks = Hooks {
        drop_events: o.drop_events.clone(),
        drop_every: o.drop_every,
        duplicate_events: o.duplicate_events.clone(),
    };
    let dry = !o.role.publishes();
    tokio::task::spawn_blocking(move || {
        Publisher::new(&t, dry, plan, clock, run_id, bytes, seed, hooks, counters)
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
        target: o.target.clone().unwrap_or_else(|| WsTarget {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
            host_header: String::new(),
            path: String::new(),
            tls: None,
        }),
        read_buffer: o.read_buffer,
        coalesce: o.coalesce,
        compression: o.compression,
        source_addrs: o.source_addrs.clone(),
        connect_timeout: Duration::from_secs_f64(sc.connect_timeout_s),
        connect_retries: sc.connect_retries,
        connect_backoff: Duration::from_millis(sc.connect_retry_backoff_ms),
        connect_rate: sc.connect_rate,
        connect_concurrency: sc.connect_concurrency,
        slots: AtomicU64::new(0),
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
        ctrl: Mutex::new(Ctrl {
            round: 0,
            stop: false,
            round_start: Instant::now(),
        }),
        tids: Mutex::new(Vec::new()),
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

/// A fleet's processes meet at the Redis barrier (`fleet`): returns the start
/// of the measured phase, or `None` for a single process (it starts at once).
async fn meet(o: &Options, clock: Clock, progress: &mut Progress) -> Result<Option<Instant>> {
    if o.shard.count == 1 && o.role == Role::Both {
        return Ok(None);
    }
    let Some(url) = o.barrier_redis.clone() else {
        bail!("a fleet run meets at a Redis barrier: give --redis");
    };
    progress.say(&format!(
        "fleet: shard {}/{} ({}) at the barrier of run {}",
        o.shard.index,
        o.shard.count,
        o.role.as_str(),
        o.run_id
    ));
    let (role, run_id, timeout, shards) = (o.role, o.run_id, o.barrier_timeout, o.shard.count);
    let start = tokio::task::spawn_blocking(move || -> Result<Instant> {
        let mut b = Barrier::open(&url, run_id, timeout)?;
        if role.connects() {
            b.arrive()?;
        }
        if role.publishes() {
            b.release(shards, &clock)
        } else {
            b.wait_start(&clock)
        }
    })
    .await??;
    progress.say(&format!(
        "fleet: start in {:.2} s",
        start
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    ));
    Ok(Some(start))
}

/// Tell every connection to close, and wait for the worker threads (at most 15 s).
async fn stop_all(engine: Option<Engine>, progress: &mut Progress) {
    progress.end_line();
    let Some(engine) = engine else { return };
    let _ = tokio::task::spawn_blocking(move || engine.stop(Duration::from_secs(15))).await;
}
