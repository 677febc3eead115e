//! The open-loop publisher. It runs on its own OS thread; event `i` of a phase has
//! the intended send time `start + i / rate`, fixed before the phase starts, and
//! that time travels in the event — so when the publisher, Redis or the gateway
//! stalls, every event behind the stall is charged for it (no coordinated
//! omission). Events that are due are sent as one Redis pipeline (or, for the
//! admin route, one keep-alive POST after another).
//!
//! Each event: `{"type":"lt.event","payload":{"lt":{"run":R,"seq":S,"ch":C,"k":K,
//! "s":STEP,"t":INTENDED_UNIX_NS},"pad":"…"}}`, padded to `event_bytes` with chat-like
//! words (a different sentence per event, so that permessage-deflate meets text
//! as compressible as a real message, not a run of one letter). `seq` is
//! global, `k` counts the events of channel `C`. With `--routing roots` the body
//! is `{"channel":CH,"type":"lt.event","payload":…}` on `SPUBLISH xcord:{ROOT}`
//! (SPEC §9). The test hooks (`--drop-event`, `--drop-every`) skip chosen events
//! while still counting them as expected; `--duplicate-event` publishes chosen
//! events twice.

mod admin;
mod sink;

use anyhow::{anyhow, Context, Result};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::plan::Plan;
use crate::scenario::PublisherKind;
use crate::stats::Counters;
use crate::target::redact_url;
use admin::AdminClient;
use sink::Sink;

/// How events are published on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingKind {
    /// `PUBLISH events:{channel}` (SPEC §5).
    Pattern,
    /// `SPUBLISH xcord:{ROOT}` with the channel in the body (SPEC §9).
    Roots,
}

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: PublisherKind,
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster, comma-separated.
    pub redis_cluster: Option<String>,
    pub routing: RoutingKind,
    pub admin_addr: Option<SocketAddr>,
    pub admin_token: Option<String>,
}

/// What one publishing phase did.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    pub rate: f64,
    /// Events the schedule held (published + deliberately dropped).
    pub scheduled: u64,
    pub published: u64,
    pub dropped: u64,
    /// Events published a second time by the duplicate hook.
    pub duplicated: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Deliveries owed for the scheduled events (dropped ones included).
    pub expected: u64,
    /// Of which owed for deliberately dropped events.
    pub dropped_expected: u64,
    /// Of which owed for events whose publish failed.
    pub failed_expected: u64,
    pub started: Instant,
    pub ended: Instant,
    /// How far behind its schedule the publisher fell at worst.
    pub max_lag: Duration,
}

/// The test hooks: events skipped (still owed) and events published twice.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub drop_events: BTreeSet<u64>,
    pub drop_every: u64,
    pub duplicate_events: BTreeSet<u64>,
}

pub struct Publisher {
    sink: Sink,
    kind: PublisherKind,
    routing: RoutingKind,
    plan: Arc<Plan>,
    clock: Clock,
    run_id: u64,
    event_bytes: usize,
    rng: fastrand::Rng,
    next_k: Vec<u64>,
    next_seq: u64,
    hooks: Hooks,
    counters: Arc<Counters>,
    /// Events scheduled per channel over every phase (dropped ones included).
    pub scheduled_per_channel: Vec<u64>,
    /// Of which skipped by the drop hook.
    pub dropped_per_channel: Vec<u64>,
}

/// Most events sent in one pipeline.
const MAX_BATCH: usize = 512;

/// Open the sink of `target`, failing fast when it cannot be reached.
fn open_sink(target: &Target) -> Result<Sink> {
    Ok(match target.kind {
        PublisherKind::Redis => {
            if let Some(seeds) = &target.redis_cluster {
                let nodes: Vec<&str> = seeds.split(',').map(str::trim).collect();
                let client = redis::cluster::ClusterClient::new(nodes)
                    .context("bad --redis-cluster seed list")?;
                let conn = client.get_connection().with_context(|| {
                    format!("cannot reach the Redis Cluster at {}", redact_url(seeds))
                })?;
                return Ok(Sink::Cluster {
                    client,
                    conn: Some(Box::new(conn)),
                });
            }
            let url = target
                .redis_url
                .as_deref()
                .ok_or_else(|| anyhow!("--publisher redis needs --redis URL"))?;
            let client = redis::Client::open(url).context("bad --redis URL")?;
            let mut conn = client
                .get_connection_with_timeout(Duration::from_secs(5))
                .with_context(|| format!("cannot connect to Redis at {}", redact_url(url)))?;
            let _: String = redis::cmd("PING").query(&mut conn).context("Redis PING")?;
            Sink::Redis {
                client,
                conn: Some(conn),
                routing: target.routing,
            }
        }
        PublisherKind::Admin => {
            let addr = target
                .admin_addr
                .ok_or_else(|| anyhow!("--publisher admin needs --admin ADDR"))?;
            let token = target
                .admin_token
                .clone()
                .ok_or_else(|| anyhow!("--publisher admin needs --admin-token"))?;
            Sink::Admin(AdminClient {
                addr,
                token,
                conn: None,
            })
        }
    })
}

impl Publisher {
    /// A publisher to `target`; `dry` publishes nothing (a `--connect-only`
    /// process replays the schedule to know what it is owed).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &Target,
        dry: bool,
        plan: Arc<Plan>,
        clock: Clock,
        run_id: u64,
        event_bytes: usize,
        seed: u64,
        hooks: Hooks,
        counters: Arc<Counters>,
    ) -> Result<Publisher> {
        let sink = if dry { Sink::Dry } else { open_sink(target)? };
        let n = plan.channel_names.len();
        Ok(Publisher {
            sink,
            kind: target.kind,
            routing: if target.redis_cluster.is_some() {
                RoutingKind::Roots
            } else {
                target.routing
            },
            plan,
            clock,
            run_id,
            event_bytes,
            rng: fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15),
            next_k: vec![0; n],
            next_seq: 0,
            hooks,
            counters,
            scheduled_per_channel: vec![0; n],
            dropped_per_channel: vec![0; n],
        })
    }

    fn body(&self, seq: u64, ch: u32, k: u64, step: u32, t: u64) -> String {
        let lt = format!(
            r#"{{"lt":{{"run":{},"seq":{seq},"ch":{ch},"k":{k},"s":{step},"t":{t}}}"#,
            self.run_id
        );
        let name = &self.plan.channel_names[ch as usize];
        let head = match (self.kind, self.routing) {
            (PublisherKind::Admin, _) => {
                format!(r#"{{"channel":"{name}","event":"lt.event","payload":"#)
            }
            (PublisherKind::Redis, RoutingKind::Roots) => {
                format!(r#"{{"channel":"{name}","type":"lt.event","payload":"#)
            }
            (PublisherKind::Redis, RoutingKind::Pattern) => {
                r#"{"type":"lt.event","payload":"#.to_owned()
            }
        };
        let tail = "}";
        let bare = head.len() + lt.len() + 1 + tail.len();
        let with_pad = bare + r#","pad":"""#.len();
        let mut out = String::with_capacity(self.event_bytes.max(bare));
        out.push_str(&head);
        out.push_str(&lt);
        if self.event_bytes > with_pad {
            out.push_str(r#","pad":""#);
            chat_words(seq, self.event_bytes - with_pad, &mut out);
            out.push('"');
        }
        out.push('}');
        out.push_str(tail);
        out
    }

    fn is_dropped(&self, seq: u64) -> bool {
        let h = &self.hooks;
        h.drop_events.contains(&seq) || (h.drop_every > 0 && (seq + 1) % h.drop_every == 0)
    }

    /// Publish `round(rate * duration)` events of `step` at `rate`, open loop,
    /// event `i` due at `start + i / rate`. `subscribers[ch]` is how many ready
    /// connections cover channel `ch`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_phase(
        &mut self,
        step: u32,
        rate: f64,
        duration: Duration,
        start: Instant,
        subscribers: &[u32],
        abort: &AtomicBool,
    ) -> PhaseReport {
        let n = (rate * duration.as_secs_f64()).round().max(0.0) as u64;
        let mut r = PhaseReport {
            rate,
            scheduled: 0,
            published: 0,
            dropped: 0,
            duplicated: 0,
            errors: 0,
            first_error: None,
            expected: 0,
            dropped_expected: 0,
            failed_expected: 0,
            started: start,
            ended: start,
            max_lag: Duration::ZERO,
        };
        let intended = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
        let mut i = 0u64;
        let mut batch: Vec<(u32, String)> = Vec::with_capacity(MAX_BATCH);
        let mut batch_owed: Vec<u64> = Vec::with_capacity(MAX_BATCH);
        while i < n {
            if abort.load(Relaxed) {
                break;
            }
            let now = Instant::now();
            let due = intended(i);
            if due > now {
                std::thread::sleep(due - now);
                continue;
            }
            r.max_lag = r.max_lag.max(now - due);
            batch.clear();
            batch_owed.clear();
            while i < n && batch.len() < MAX_BATCH {
                let t_i = intended(i);
                if t_i > now {
                    break;
                }
                self.schedule_one(step, t_i, subscribers, &mut r, &mut batch, &mut batch_owed);
                i += 1;
            }
            self.send_batch(&batch, &batch_owed, &mut r);
        }
        r.ended = Instant::now();
        r
    }

    /// The next event of the schedule: count it, and queue it unless dropped.
    fn schedule_one(
        &mut self,
        step: u32,
        t_i: Instant,
        subscribers: &[u32],
        r: &mut PhaseReport,
        batch: &mut Vec<(u32, String)>,
        batch_owed: &mut Vec<u64>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let ch = self.plan.chooser.pick(seq, &mut self.rng);
        let k = self.next_k[ch as usize];
        self.next_k[ch as usize] += 1;
        let owed = subscribers.get(ch as usize).copied().unwrap_or(0) as u64;
        r.scheduled += 1;
        r.expected += owed;
        self.scheduled_per_channel[ch as usize] += 1;
        self.counters.expected.fetch_add(owed, Relaxed);
        if self.is_dropped(seq) {
            r.dropped += 1;
            r.dropped_expected += owed;
            self.dropped_per_channel[ch as usize] += 1;
            return;
        }
        let body = self.body(seq, ch, k, step, self.clock.unix_ns(t_i));
        if self.hooks.duplicate_events.contains(&seq) {
            r.duplicated += 1;
            batch.push((ch, body.clone()));
            batch_owed.push(0);
        }
        batch.push((ch, body));
        batch_owed.push(owed);
    }

    fn send_batch(&mut self, batch: &[(u32, String)], batch_owed: &[u64], r: &mut PhaseReport) {
        if batch.is_empty() {
            return;
        }
        let (failed, err) = self.sink.send(batch, &self.plan);
        if failed > 0 {
            r.errors += failed;
            // A failed pipeline loses all of it; admin failures are per event
            // but we cannot tell which here, so charge the batch's mean.
            let owed: u64 = batch_owed.iter().sum();
            r.failed_expected += owed * failed / batch.len() as u64;
            if r.first_error.is_none() {
                r.first_error = err;
            }
        }
        let ok = batch.len() as u64 - failed;
        r.published += ok;
        self.counters.published.fetch_add(ok, Relaxed);
    }
}

/// Words of chat messages, for the padding.
const WORDS: &[&str] = &[
    "the", "a", "to", "and", "you", "i", "it", "is", "that", "for", "on", "in", "we", "this",
    "lol", "ok", "yes", "no", "what", "just", "now", "game", "tonight", "raid", "server", "anyone",
    "online", "brb", "gg", "thanks", "meeting", "later", "push", "build", "fixed", "patch",
    "deploy", "channel", "voice", "join", "here", "can", "someone", "check", "link", "stream",
    "starting", "soon", "who", "wants", "play", "ranked", "again", "nice", "clip", "haha", "wait",
    "really", "sure", "maybe", "tomorrow", "morning", "night", "update",
];

/// Append exactly `len` bytes of words (chosen by `seq`, so each event differs).
fn chat_words(seq: u64, len: usize, out: &mut String) {
    let end = out.len() + len;
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < end {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = WORDS[(x % WORDS.len() as u64) as usize];
        let room = end - out.len();
        if w.len() < room {
            out.push_str(w);
            out.push(' ');
        } else {
            out.extend(std::iter::repeat_n('.', room));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn publisher(kind: PublisherKind, bytes: usize) -> Publisher {
        let plan = Arc::new(Plan::build(&Scenario::default(), 1));
        let n = plan.channel_names.len();
        Publisher {
            sink: Sink::Dry,
            kind,
            routing: RoutingKind::Pattern,
            plan,
            clock: Clock::new(),
            run_id: 42,
            event_bytes: bytes,
            rng: fastrand::Rng::with_seed(1),
            next_k: vec![0; n],
            next_seq: 0,
            hooks: Hooks {
                drop_events: [3].into_iter().collect(),
                drop_every: 10,
                duplicate_events: BTreeSet::new(),
            },
            counters: Arc::new(Counters::new()),
            scheduled_per_channel: vec![0; n],
            dropped_per_channel: vec![0; n],
        }
    }

    #[test]
    fn bodies_are_padded_json_with_lt() {
        for kind in [PublisherKind::Redis, PublisherKind::Admin] {
            let p = publisher(kind, 300);
            let b = p.body(5, 2, 1, 0, 1_700_000_000_000_000_000);
            assert_eq!(b.len(), 300, "{b}");
            let v: serde_json::Value = serde_json::from_str(&b).expect("json");
            let lt = &v["payload"]["lt"];
            assert_eq!(lt["run"], 42);
            assert_eq!(lt["ch"], 2);
            let frame = format!(
                r#"{{"type":"EVENT","seq":1,"payload":{{"event":"lt.event","channel":"x","payload":{}}}}}"#,
                serde_json::to_string(&v["payload"]).expect("ser")
            );
            let got = crate::engine::parse_lt(frame.as_bytes()).expect("parse");
            assert_eq!((got.seq, got.k), (5, 1));
        }
        // Smaller than the bare event: no padding at all.
        let p = publisher(PublisherKind::Redis, 10);
        assert!(!p.body(0, 0, 0, 0, 1).contains("pad"));
    }

    #[test]
    fn roots_bodies_carry_the_channel() {
        let mut p = publisher(PublisherKind::Redis, 300);
        p.routing = RoutingKind::Roots;
        let b = p.body(5, 2, 1, 0, 1);
        assert_eq!(b.len(), 300, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        assert_eq!(v["type"], "lt.event");
        assert_eq!(v["channel"], p.plan.channel_names[2].as_str());
        assert_eq!(v["payload"]["lt"]["k"], 1);
    }

    #[test]
    fn dry_phase_counts_per_channel() {
        let mut p = publisher(PublisherKind::Redis, 100);
        let subs = vec![2u32; p.plan.channel_names.len()];
        let start = Instant::now();
        let r = p.run_phase(
            0,
            1000.0,
            Duration::from_millis(20),
            start,
            &subs,
            &AtomicBool::new(false),
        );
        assert_eq!(r.scheduled, 20);
        assert_eq!(p.scheduled_per_channel.iter().sum::<u64>(), 20);
        // Events 3, 9, 19 are dropped by the hooks of `publisher`.
        assert_eq!(r.dropped, 3);
        assert_eq!(p.dropped_per_channel.iter().sum::<u64>(), 3);
        assert_eq!(r.expected, 40);
    }

    #[test]
    fn drop_hook() {
        let p = publisher(PublisherKind::Redis, 10);
        let dropped: Vec<u64> = (0..30).filter(|s| p.is_dropped(*s)).collect();
        assert_eq!(dropped, vec![3, 9, 19, 29]);
    }
}
