//! The connect phase: every connection task is started at once (the scenario paces
//! and bounds the attempts), and each round's reports are tallied until every
//! connection has answered or the round's deadline has passed; then the reconnect
//! rounds, in which every connection closes and connects again at once.
//!
//! A connection that never answers by the deadline counts as failed, so a round
//! always accounts for all `n` connections.

use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::progress::{gw_text, Progress};
use crate::engine::{ConnectReport, Engine, Env};
use crate::procstat::{self, Sample};
use crate::result::Round;
use crate::scenario::Scenario;
use crate::stats::{self, FromHistogram, Percentiles};

/// What a round is watched with.
pub(super) struct Watch<'a> {
    pub sc: &'a Scenario,
    pub progress: &'a mut Progress,
    /// The gateway's PID, sampled for the progress line and the RSS slope.
    pub pid: Option<u32>,
    pub abort: &'a AtomicBool,
}

/// Per-round connection statistics.
pub(super) struct RoundStats {
    pub round: Round,
    /// The gateway's RSS sampled as the connect phase passed 25%, 30%, … 100%
    /// of the connections: (established then, RSS bytes), for the marginal slope.
    pub rss_points: Vec<(usize, u64)>,
    pub ok: Vec<bool>,
    pub handshake: hdrhistogram::Histogram<u64>,
    pub subscribe: hdrhistogram::Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

/// The connect phase as the rest of the run needs it.
pub(super) struct Connected {
    /// The worker threads that hold the connections (none for `--publish-only`).
    pub engine: Option<Engine>,
    pub first: RoundStats,
    pub reconnects: Vec<Round>,
    /// Failures of every round (reconnect rounds prefixed `round N:`).
    pub errors: BTreeMap<String, u64>,
    /// Which connections (of the whole plan) are subscribed after the last round.
    pub ready: Vec<bool>,
    /// Wall time of the first round, until every attempt answered.
    pub connect_phase_s: f64,
    /// The gateway before and after the first round; this tool before it.
    pub gw_before: Option<Sample>,
    pub gw_after: Option<Sample>,
    pub self_start: Sample,
}

/// Start every connection of this process (`ids`, plan indices) on `threads`
/// worker threads, collect the first round, then run the reconnect rounds.
pub(super) async fn connect_all(
    env: &Arc<Env>,
    threads: usize,
    ids: &[usize],
    url: &str,
    rx: &mut mpsc::UnboundedReceiver<ConnectReport>,
    w: &mut Watch<'_>,
) -> Result<Connected> {
    let (sc, n) = (w.sc, ids.len());
    let total = env.plan.conns.len();
    let gw_before = w.pid.map(|p| procstat::sample(Some(p)));
    let self_start = procstat::sample(None);
    let round_start = Instant::now();
    {
        let mut c = env.ctrl.lock().unwrap_or_else(|e| e.into_inner());
        c.round_start = round_start;
    }
    if n == 0 {
        w.progress
            .say("no connections in this process (--publish-only)");
    } else {
        w.progress.say(&format!(
            "connecting {n} to {url} on {threads} thread(s) from {}, {} at a time{}",
            if env.source_addrs.is_empty() {
                "the default source address".to_owned()
            } else {
                format!("{} source address(es)", env.source_addrs.len())
            },
            sc.connect_concurrency,
            if sc.connect_rate > 0.0 {
                format!(", {}/s", sc.connect_rate)
            } else {
                String::new()
            }
        ));
    }
    let engine = if ids.is_empty() {
        None
    } else {
        Some(Engine::start(env.clone(), threads, ids)?)
    };
    let first = collect_round(0, n, total, rx, round_start, w).await;
    let connect_phase_s = round_start.elapsed().as_secs_f64();
    w.progress.say(&format!(
        "round 0: {}/{} subscribed, {} failed in {:.2} s",
        first.round.established, n, first.round.failed, first.round.duration_s
    ));
    let gw_after = w.pid.map(|p| procstat::sample(Some(p)));
    let mut errors = first.errors.clone();
    let mut ready = first.ok.clone();
    let reconnects = match &engine {
        Some(e) => reconnect_rounds(e, n, total, rx, w, &mut errors, &mut ready).await,
        None => Vec::new(),
    };
    Ok(Connected {
        engine,
        first,
        reconnects,
        errors,
        ready,
        connect_phase_s,
        gw_before,
        gw_after,
        self_start,
    })
}

/// The scenario's reconnect rounds: each one makes every connection close and
/// connect again at once; `ready` ends as the last round left it.
async fn reconnect_rounds(
    engine: &Engine,
    n: usize,
    total: usize,
    rx: &mut mpsc::UnboundedReceiver<ConnectReport>,
    w: &mut Watch<'_>,
    errors: &mut BTreeMap<String, u64>,
    ready: &mut Vec<bool>,
) -> Vec<Round> {
    let mut reconnects = Vec::new();
    for r in 1..=w.sc.reconnect_rounds {
        if w.abort.load(Relaxed) {
            break;
        }
        let start = Instant::now();
        engine.next_round(r, start);
        w.progress
            .say(&format!("round {r}: every connection reconnects now"));
        let rs = collect_round(r, n, total, rx, start, w).await;
        w.progress.say(&format!(
            "round {r}: {}/{} subscribed, {} failed in {:.2} s",
            rs.round.established, n, rs.round.failed, rs.round.duration_s
        ));
        for (k, v) in rs.errors {
            *errors.entry(format!("round {r}: {k}")).or_insert(0) += v;
        }
        *ready = rs.ok;
        reconnects.push(rs.round);
    }
    reconnects
}

/// When a round gives up on connections that have not answered: every wave of
/// attempts and every retry may take the whole connect timeout, plus the pacing.
fn round_deadline(sc: &Scenario, n: usize, start: Instant) -> Instant {
    let waves = n.div_ceil(sc.connect_concurrency) as f64 + 1.0;
    let paced = if sc.connect_rate > 0.0 {
        n as f64 / sc.connect_rate
    } else {
        0.0
    };
    let retries = sc.connect_retries as f64;
    start
        + Duration::from_secs_f64(
            sc.connect_timeout_s * (waves + retries) + retries * 5.0 + paced + 10.0,
        )
}

/// Collect round `round`'s reports for this process's `n` connections (of the
/// plan's `total`).
async fn collect_round(
    round: u32,
    n: usize,
    total: usize,
    rx: &mut mpsc::UnboundedReceiver<ConnectReport>,
    start: Instant,
    w: &mut Watch<'_>,
) -> RoundStats {
    let mut t = Tally::new(n, total, start);
    let deadline = round_deadline(w.sc, n, start);
    let mut gw_prev = None;
    while t.good + t.bad < n {
        let now = Instant::now();
        if now >= deadline || w.abort.load(Relaxed) {
            break;
        }
        let wait = (deadline - now).min(Duration::from_millis(200));
        match tokio::time::timeout(wait, rx.recv()).await {
            // A report of another round, or a second one of a connection: not counted.
            Ok(Some(rep)) => {
                if rep.round != round || !t.record(rep, w.pid) {
                    continue;
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
        if w.progress.due() {
            let el = start.elapsed().as_secs_f64();
            let line = format!(
                "[connect round {round}] {}/{n} subscribed, {} failed, {:.0}/s{}",
                t.good,
                t.bad,
                t.good as f64 / el.max(1e-3),
                gw_text(w.pid, &mut gw_prev)
            );
            w.progress.show(&line);
        }
    }
    t.finish(round, start)
}

/// The running count of one round.
struct Tally {
    /// This process's connections.
    n: usize,
    ok: Vec<bool>,
    seen: Vec<bool>,
    hs: hdrhistogram::Histogram<u64>,
    sub: hdrhistogram::Histogram<u64>,
    errors: BTreeMap<String, u64>,
    good: usize,
    bad: usize,
    last_ok: Instant,
    attempts: u64,
    retried: u64,
    rss_points: Vec<(usize, u64)>,
    /// The next count of established connections at which to sample the RSS.
    next_mark: usize,
}

impl Tally {
    fn new(n: usize, total: usize, start: Instant) -> Tally {
        Tally {
            n,
            ok: vec![false; total],
            seen: vec![false; total],
            hs: stats::new_hist(),
            sub: stats::new_hist(),
            errors: BTreeMap::new(),
            good: 0,
            bad: 0,
            last_ok: start,
            attempts: 0,
            retried: 0,
            rss_points: Vec::new(),
            next_mark: n.div_ceil(4).max(1),
        }
    }

    /// Count one report of this round; `false` when it is a connection's second.
    fn record(&mut self, rep: ConnectReport, pid: Option<u32>) -> bool {
        let n = self.n;
        if rep.id >= self.seen.len() || self.seen[rep.id] {
            return false;
        }
        self.seen[rep.id] = true;
        self.attempts += rep.attempts as u64;
        self.retried += rep.attempts.saturating_sub(1) as u64;
        match rep.result {
            Ok(c) => {
                self.good += 1;
                if self.good >= self.next_mark && n >= 20 {
                    if let Some(rss) = pid.and_then(|p| procstat::sample(Some(p)).rss_bytes) {
                        self.rss_points.push((self.good, rss));
                    }
                    self.next_mark = self.good + n.div_ceil(20);
                }
                self.ok[rep.id] = true;
                stats::record_into(&mut self.hs, c.handshake.as_micros() as u64);
                stats::record_into(&mut self.sub, c.subscribe.as_micros() as u64);
                self.last_ok = self.last_ok.max(c.at);
            }
            Err(e) => {
                self.bad += 1;
                *self.errors.entry(error_kind(&e)).or_insert(0) += 1;
            }
        }
        true
    }

    /// The round's statistics; connections that never answered count as failed.
    fn finish(mut self, round: u32, start: Instant) -> RoundStats {
        let missing = self.n - self.good - self.bad;
        if missing > 0 {
            *self
                .errors
                .entry("no answer before the connect phase ended (deadline or interrupt)".into())
                .or_insert(0) += missing as u64;
            self.bad += missing;
        }
        let (good, span) = (self.good, self.last_ok.duration_since(start).as_secs_f64());
        RoundStats {
            rss_points: self.rss_points,
            round: Round {
                round,
                target: self.n,
                established: good,
                failed: self.bad,
                duration_s: span,
                connect_rate_per_sec: (good > 0 && span > 0.0).then(|| good as f64 / span),
                handshake_latency_ms: Percentiles::of(&self.hs, false),
                subscribe_latency_ms: Percentiles::of(&self.sub, false),
                attempts: self.attempts,
                retried: self.retried,
            },
            ok: self.ok,
            handshake: self.hs,
            subscribe: self.sub,
            errors: self.errors,
        }
    }
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
