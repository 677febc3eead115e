//! `xcord-loadtest chaos`: reliability under faults (issue 12). The tool starts
//! and owns, on loopback, a `redis-server` and two gateway nodes
//! (`--gateway-bin`); connects `--clients` clients that implement SPEC §8's
//! client side ([`client`]), half on each node; publishes a steady rate through
//! Redis (`PUBLISH events:{channel}`, one sequence `k` per channel); and injects
//! faults on a schedule:
//! - random connection resets (RST through SO_LINGER 0) at `--reset-per-sec`;
//! - a Redis restart (SIGKILL, then started again on the same port) at
//!   `--redis-restart-at-s`, down for `--redis-down-s`;
//! - the second node drained with SIGTERM at `--drain-at-s` (its clients get
//!   4011 and move to the first node).
//!
//! Faults stop `--quiet-s` before publishing ends so that every client is back.
//! Then every event is accounted per client ([`account`]): missed while attached
//! or across a successful RESUME must be 0 (the run fails otherwise); missed
//! across INVALID_SESSION or the Redis outage is reported, per fault kind.

mod account;
mod client;
pub mod procs;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use account::{FaultStats, Pub, Totals};
use client::{Client, Node, Shared};

#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// The gateway binary to start (two nodes).
    #[arg(long)]
    pub gateway_bin: PathBuf,
    /// Clients, half on each node at the start.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Channels (`live:chaos{c}:chat`); each client subscribes to two.
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Events per second over all channels.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds of publishing (faults happen inside it).
    #[arg(long, default_value_t = 20.0)]
    pub duration_s: f64,
    /// Connection resets (RST) per second, on random attached clients.
    #[arg(long, default_value_t = 2.0)]
    pub reset_per_sec: f64,
    /// When Redis is killed (-9), seconds into publishing; negative = never.
    #[arg(long, default_value_t = 6.0, allow_negative_numbers = true)]
    pub redis_restart_at_s: f64,
    /// How long Redis stays down.
    #[arg(long, default_value_t = 1.0)]
    pub redis_down_s: f64,
    /// When the second node gets SIGTERM, seconds into publishing; negative = never.
    #[arg(long, default_value_t = 11.0, allow_negative_numbers = true)]
    pub drain_at_s: f64,
    /// The nodes' --drain-seconds.
    #[arg(long, default_value_t = 2)]
    pub node_drain_seconds: u64,
    /// No fault in the last this-many seconds of publishing.
    #[arg(long, default_value_t = 4.0)]
    pub quiet_s: f64,
    /// After publishing, wait this long for deliveries.
    #[arg(long, default_value_t = 2.0)]
    pub drain_grace_s: f64,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the fault schedule and the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The chaos result file (schema `xcord-loadtest-chaos/1`).
#[derive(Debug, Serialize)]
pub struct ChaosResult {
    pub schema: &'static str,
    pub command: String,
    pub clients: usize,
    pub channels: usize,
    pub rate_events_per_sec: f64,
    pub duration_s: f64,
    pub events_sent: u64,
    pub events_publish_failed: u64,
    pub deliveries: Totals,
    /// Per fault kind: `reset`, `redis`, `drain`, and `other` (drops nobody injected).
    pub faults: BTreeMap<&'static str, FaultStats>,
    /// Every reconnect across INVALID_SESSION, with its gap.
    pub reconnects_across_invalid_session: Vec<account::Gap>,
    pub clients_attached_at_end: usize,
    pub passed: bool,
    pub failure_reasons: Vec<String>,
}

/// The publisher's records, `[channel][k]`, and how many nodes should get each.
struct Publisher {
    pubs: Mutex<Vec<Vec<Pub>>>,
    want: AtomicU64,
}

pub fn main(a: ChaosArgs, command: String) -> Result<bool> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if a.clients < 2 || a.channels < 2 || !positive(a.rate) || !positive(a.duration_s) {
        bail!("chaos needs --clients >= 2, --channels >= 2, a positive --rate and --duration-s");
    }
    if a.duration_s > 600.0 {
        bail!("--duration-s is bounded to 600 s");
    }
    fastrand::seed(a.seed);
    let secret = format!("chaos-{:016x}", fastrand::u64(..));
    let mut redis = procs::Redis::start(procs::free_low_port()?)?;
    let extra: Vec<String> = vec!["--drain-seconds".into(), a.node_drain_seconds.to_string()];
    let mut gws = [
        procs::Gateway::start(&a.gateway_bin, &redis.url(), &secret, &extra)?,
        procs::Gateway::start(&a.gateway_bin, &redis.url(), &secret, &extra)?,
    ];
    eprintln!(
        "chaos: redis :{}, nodes {} and {}; {} clients",
        redis.port, gws[0].addr, gws[1].addr, a.clients
    );
    let nodes: Arc<Vec<Node>> = Arc::new(
        gws.iter()
            .map(|g| Node {
                addr: g.addr,
                alive: AtomicBool::new(true),
            })
            .collect(),
    );
    let run = start_clients(&a, &secret, nodes.clone())?;
    let attached = wait_attached(&run.shared, Duration::from_secs(30));
    if attached < a.clients {
        run.stop.store(true, Relaxed);
        bail!(
            "only {attached} of {} clients attached at the start",
            a.clients
        );
    }
    let publisher = Arc::new(Publisher {
        pubs: Mutex::new(vec![Vec::new(); a.channels]),
        want: AtomicU64::new(0),
    });
    let injected = inject(&a, &run, &publisher, &mut redis, &mut gws, &nodes)?;
    std::thread::sleep(Duration::from_secs_f64(a.drain_grace_s));
    let at_end = run
        .shared
        .iter()
        .filter(|s| s.attached.load(Relaxed))
        .count();
    let t_end = run.base.elapsed().as_secs_f64();
    run.stop.store(true, Relaxed);
    let logs: Vec<client::Log> = run
        .handles
        .into_iter()
        .filter_map(|h| h.join().ok())
        .collect();
    let pubs = std::mem::take(&mut *publisher.pubs.lock().unwrap_or_else(|e| e.into_inner()));
    let (totals, mut faults, gaps) = account::account(&pubs, &logs, t_end);
    for (k, n) in injected {
        faults.entry(k).or_default().injected = n;
    }
    drop(gws);
    let mut r = result(&a, command, &pubs, totals, faults, at_end);
    r.reconnects_across_invalid_session = gaps;
    print!("{}", summary(&r));
    if let Some(p) = &a.out {
        let json = serde_json::to_string_pretty(&r).context("encode the result")?;
        std::fs::write(p, json + "\n").with_context(|| format!("cannot write {}", p.display()))?;
        println!("result: {}", p.display());
    }
    Ok(r.passed)
}

/// The running clients.
struct Run {
    shared: Vec<Arc<Shared>>,
    handles: Vec<std::thread::JoinHandle<client::Log>>,
    stop: Arc<AtomicBool>,
    base: Instant,
    run_id: u64,
    channel_names: Vec<String>,
}

fn start_clients(a: &ChaosArgs, secret: &str, nodes: Arc<Vec<Node>>) -> Result<Run> {
    let tokens = crate::token::TokenMaker::new(secret, None, None, 3600);
    let stop = Arc::new(AtomicBool::new(false));
    let base = Instant::now();
    let run_id = fastrand::u64(1..(1u64 << 53));
    let channel_names: Vec<String> = (0..a.channels)
        .map(|c| format!("live:chaos{c}:chat"))
        .collect();
    let mut shared = Vec::new();
    let mut handles = Vec::new();
    for i in 0..a.clients {
        let mut chans = vec![(i % a.channels) as u32, ((i + 1) % a.channels) as u32];
        chans.sort_unstable();
        let plan = crate::plan::ConnPlan {
            user: format!("chaos{i}"),
            servers: vec![],
            dms: vec![],
            subscribe: vec![],
            tracked: vec![],
            typing: vec![],
        };
        let sh = Arc::new(Shared::new());
        shared.push(sh.clone());
        let c = Client {
            token: tokens.sign(&plan)?,
            channel_names: chans
                .iter()
                .map(|c| channel_names[*c as usize].clone())
                .collect(),
            channels: chans,
            nodes: nodes.clone(),
            node: i % nodes.len(),
            shared: sh,
            stop: stop.clone(),
            base,
            run_id,
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("chaos-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || c.run())
                .context("spawn a client thread")?,
        );
    }
    Ok(Run {
        shared,
        handles,
        stop,
        base,
        run_id,
        channel_names,
    })
}

fn wait_attached(shared: &[Arc<Shared>], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = shared.iter().filter(|s| s.attached.load(Relaxed)).count();
        if n == shared.len() || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publish for the whole duration on a thread, injecting the faults on this
/// one. Returns the faults injected per kind.
fn inject(
    a: &ChaosArgs,
    run: &Run,
    publisher: &Arc<Publisher>,
    redis: &mut procs::Redis,
    gws: &mut [procs::Gateway; 2],
    nodes: &Arc<Vec<Node>>,
) -> Result<BTreeMap<&'static str, u64>> {
    publisher.want.store(2, Relaxed);
    let t0 = Instant::now();
    let pub_thread = {
        let (p, url, base, stop) = (publisher.clone(), redis.url(), run.base, run.stop.clone());
        let (names, run_id, rate, dur) =
            (run.channel_names.clone(), run.run_id, a.rate, a.duration_s);
        std::thread::spawn(move || publish(&p, &url, base, &names, run_id, rate, dur, &stop))
    };
    let mut injected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let quiet_from = a.duration_s - a.quiet_s;
    let mut next_reset = exp(a.reset_per_sec);
    let (mut redis_done, mut drain_done) = (a.redis_restart_at_s < 0.0, a.drain_at_s < 0.0);
    while t0.elapsed().as_secs_f64() < a.duration_s {
        let t = t0.elapsed().as_secs_f64();
        if t >= next_reset && t < quiet_from {
            let k = fastrand::usize(..run.shared.len());
            if run.shared[k].reset() {
                *injected.entry("reset").or_insert(0) += 1;
            }
            next_reset = t + exp(a.reset_per_sec);
        }
        if !redis_done && t >= a.redis_restart_at_s && t < quiet_from {
            redis_done = true;
            eprintln!("chaos: t={t:.1}s redis killed (-9)");
            redis.kill9();
            std::thread::sleep(Duration::from_secs_f64(a.redis_down_s));
            redis.restart()?;
            eprintln!("chaos: redis restarted on :{}", redis.port);
            *injected.entry("redis").or_insert(0) += 1;
        }
        if !drain_done && t >= a.drain_at_s && t < quiet_from {
            drain_done = true;
            eprintln!("chaos: t={t:.1}s node 2 drained (SIGTERM)");
            nodes[1].alive.store(false, Relaxed);
            publisher.want.store(1, Relaxed);
            gws[1].sigterm();
            *injected.entry("drain").or_insert(0) += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = pub_thread.join();
    let _ = gws[1].exited();
    Ok(injected)
}

/// An exponential draw with rate `per_sec` (infinity when 0).
fn exp(per_sec: f64) -> f64 {
    if per_sec <= 0.0 {
        return f64::INFINITY;
    }
    -fastrand::f64().max(1e-12).ln() / per_sec
}

/// The steady publisher: round-robin over the channels, each event recorded
/// with its send time and how many subscribers Redis gave it to.
#[allow(clippy::too_many_arguments)]
fn publish(
    p: &Publisher,
    url: &str,
    base: Instant,
    names: &[String],
    run_id: u64,
    rate: f64,
    dur: f64,
    stop: &AtomicBool,
) {
    let client = redis::Client::open(url).ok();
    let mut conn: Option<redis::Connection> = None;
    let start = Instant::now();
    let n = (rate * dur).round() as u64;
    for seq in 0..n {
        let due = start + Duration::from_secs_f64(seq as f64 / rate);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        if stop.load(Relaxed) {
            break;
        }
        let ch = (seq % names.len() as u64) as usize;
        let k = p.pubs.lock().map(|v| v[ch].len() as u64).unwrap_or(0);
        let body = format!(
            r#"{{"type":"lt.event","payload":{{"lt":{{"run":{run_id},"seq":{seq},"ch":{ch},"k":{k},"s":0,"t":0}}}}}}"#
        );
        if conn.is_none() {
            conn = client.as_ref().and_then(|c| {
                c.get_connection_with_timeout(Duration::from_millis(200))
                    .ok()
            });
        }
        let t_send = base.elapsed().as_secs_f64();
        let want = p.want.load(Relaxed);
        let receivers = conn.as_mut().and_then(|c| {
            redis::cmd("PUBLISH")
                .arg(format!("events:{}", names[ch]))
                .arg(&body)
                .query::<u64>(c)
                .ok()
        });
        if receivers.is_none() {
            conn = None;
        }
        if let Ok(mut v) = p.pubs.lock() {
            v[ch].push(Pub {
                t_send,
                receivers,
                want,
            });
        }
    }
}

fn result(
    a: &ChaosArgs,
    command: String,
    pubs: &[Vec<Pub>],
    totals: Totals,
    faults: BTreeMap<&'static str, FaultStats>,
    at_end: usize,
) -> ChaosResult {
    let mut reasons = Vec::new();
    if totals.missed_attached_or_resumed > 0 {
        reasons.push(format!(
            "{} events missed while attached or across a successful RESUME",
            totals.missed_attached_or_resumed
        ));
    }
    if totals.duplicated > 0 {
        reasons.push(format!("{} events duplicated", totals.duplicated));
    }
    if totals.out_of_order > 0 {
        reasons.push(format!("{} events out of order", totals.out_of_order));
    }
    if at_end < a.clients {
        reasons.push(format!(
            "{} clients not attached at the end",
            a.clients - at_end
        ));
    }
    if totals.delivered == 0 {
        reasons.push("nothing was delivered".into());
    }
    ChaosResult {
        schema: "xcord-loadtest-chaos/1",
        command,
        clients: a.clients,
        channels: a.channels,
        rate_events_per_sec: a.rate,
        duration_s: a.duration_s,
        events_sent: pubs.iter().map(|c| c.len() as u64).sum(),
        events_publish_failed: pubs
            .iter()
            .flatten()
            .filter(|p| p.receivers.is_none())
            .count() as u64,
        deliveries: totals,
        faults,
        reconnects_across_invalid_session: Vec::new(),
        clients_attached_at_end: at_end,
        passed: reasons.is_empty(),
        failure_reasons: reasons,
    }
}

fn summary(r: &ChaosResult) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let d = &r.deliveries;
    let _ = writeln!(s, "== xcord-loadtest chaos ==\ncommand: {}", r.command);
    let _ = writeln!(
        s,
        "load: {} clients, {} channels, {} events/s for {} s; {} events sent, {} failed to publish (Redis down)",
        r.clients, r.channels, r.rate_events_per_sec, r.duration_s, r.events_sent, r.events_publish_failed
    );
    let _ = writeln!(
        s,
        "deliveries: owed {} delivered {}; missed while attached/across RESUME {} | across INVALID_SESSION {} | Redis outage {} | unresolved at end {}; duplicated {} out of order {}",
        d.owed, d.delivered, d.missed_attached_or_resumed, d.missed_invalid_session, d.missed_redis_outage,
        d.unresolved_at_end, d.duplicated, d.out_of_order
    );
    let _ = writeln!(
        s,
        "  kind    injected  reconnects  resumes ok (replayed)  invalid  missed  gap events mean/max  gap s mean/max"
    );
    for (k, f) in &r.faults {
        let _ = writeln!(
            s,
            "  {k:<7} {:>8}  {:>10}  {:>10} {:>10}  {:>7}  {:>6}  {:>9.1} / {:<6}  {:>6.2} / {:.2}",
            f.injected,
            f.reconnects,
            f.resumes_ok,
            format!("({})", f.events_replayed),
            f.invalid_sessions,
            f.events_missed,
            f.gap_events_mean,
            f.gap_events_max,
            f.gap_seconds_mean,
            f.gap_seconds_max
        );
    }
    let _ = writeln!(
        s,
        "clients attached at the end: {}/{}",
        r.clients_attached_at_end, r.clients
    );
    if r.passed {
        let _ = writeln!(s, "PASSED");
    } else {
        let _ = writeln!(s, "FAILED: {}", r.failure_reasons.join("; "));
    }
    s
}
