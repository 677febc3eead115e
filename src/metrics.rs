//! Counters and gauges behind `/metrics` (SPEC §7), rendered as Prometheus text.
//!
//! Each shard owns one `ShardMetrics` and is its only writer (relaxed atomics on
//! shard-private cache lines: no contention on the fan-out path; the delivered
//! counter moves once per event, not once per subscriber). Labels are data: the
//! close-code table, [`CommandKind`] and [`DropReason`] index the counters. The
//! latency histogram is kept per shard (with its exact sum) and merged into the
//! node's under a mutex about twice a second — off the fan-out path.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::codes;
use crate::protocol::CommandKind;
use crate::throttle::Throttle;

/// Why an event was not delivered (the `reason` label of `xcord_events_dropped_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The bus body is not a JSON object.
    BadJson,
    /// The body has no string `type`.
    NoType,
    /// The channel is not a valid name (or not under the root it came on, §9).
    BadChannel,
    /// A shard inbox was full.
    QueueFull,
    /// A publish (admin, presence, typing) the bus could not take.
    PublishFailed,
    /// A subscriber closed 4010 (its unwritten frames are discarded).
    SlowConsumer,
    /// Redis was down.
    RedisDown,
    /// The event's frame would not fit any send queue (SPEC §5).
    TooLarge,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::BadJson,
        DropReason::NoType,
        DropReason::BadChannel,
        DropReason::QueueFull,
        DropReason::PublishFailed,
        DropReason::SlowConsumer,
        DropReason::RedisDown,
        DropReason::TooLarge,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::BadJson => "bad_json",
            DropReason::NoType => "no_type",
            DropReason::BadChannel => "bad_channel",
            DropReason::QueueFull => "queue_full",
            DropReason::PublishFailed => "publish_failed",
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::RedisDown => "redis_down",
            DropReason::TooLarge => "too_large",
        }
    }

    /// Drops an operator must hear about (logged, at most once a minute).
    fn alarming(self) -> bool {
        matches!(
            self,
            DropReason::QueueFull | DropReason::PublishFailed | DropReason::RedisDown
        )
    }
}

/// Delivery latency in microseconds: an HDR histogram and the exact sum.
///
/// FAST PATH: a fan-out turn does not read the clock per socket. Each direct
/// write adds its event's receive time to a batch ([`Latency::written`]); the
/// clock is read once per `LATENCY_BATCH` writes, and at the end of the turn
/// ([`Latency::settle`]), and every write of the batch is charged up to that
/// read — later than its own write by at most the batch's other writes, never
/// earlier. Consecutive writes of one event (the same receive time) go into the
/// histogram as one count.
#[derive(Clone)]
pub struct Latency {
    pub hist: Histogram<u64>,
    pub sum_micros: u64,
    batch: Vec<Instant>,
}

/// Writes charged to one clock read.
const LATENCY_BATCH: usize = 32;

impl Latency {
    /// 1 µs .. 100 s, 3 significant digits.
    pub fn new() -> Latency {
        // Bounds are constants that hdrhistogram accepts.
        let hist = Histogram::new_with_bounds(1, 100_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
        Latency {
            hist,
            sum_micros: 0,
            batch: Vec::with_capacity(LATENCY_BATCH),
        }
    }

    /// A write of frames whose oldest event was received at `since` just
    /// finished; recorded at the next clock read.
    #[inline]
    pub fn written(&mut self, since: Instant) {
        self.batch.push(since);
        if self.batch.len() >= LATENCY_BATCH {
            self.settle();
        }
    }

    /// Read the clock once and record every write batched since the last read.
    pub fn settle(&mut self) {
        let Some(&first) = self.batch.first() else {
            return;
        };
        let now = Instant::now();
        let (mut run_since, mut run) = (first, 0u64);
        for i in 0..self.batch.len() {
            let since = self.batch[i];
            if since != run_since {
                self.record_n(now.saturating_duration_since(run_since), run);
                (run_since, run) = (since, 0);
            }
            run += 1;
        }
        self.record_n(now.saturating_duration_since(run_since), run);
        self.batch.clear();
    }

    fn record_n(&mut self, d: Duration, n: u64) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.hist.record_n(us, n);
        self.sum_micros = self.sum_micros.saturating_add(us.saturating_mul(n));
    }

    /// Record one delivery that took `d`.
    #[inline]
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.hist.record(us);
        self.sum_micros = self.sum_micros.saturating_add(us);
    }

    /// Move everything recorded here into `into`.
    pub fn drain_into(&mut self, into: &mut Latency) {
        self.settle();
        if self.hist.is_empty() {
            return;
        }
        let _ = into.hist.add(&self.hist);
        into.sum_micros = into.sum_micros.saturating_add(self.sum_micros);
        self.hist.reset();
        self.sum_micros = 0;
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub connections: AtomicI64,
    pub subscriptions: AtomicI64,
    pub accepted: AtomicU64,
    pub closed: [AtomicU64; codes::TABLE.len() + 1],
    pub commands: [AtomicU64; CommandKind::ALL.len()],
    pub delivered: AtomicU64,
    pub dropped_slow: AtomicU64,
    pub rejected_http: AtomicU64,
    /// Pending handshakes dropped to make room (slowloris defence).
    pub handshakes_shed: AtomicU64,
}

impl ShardMetrics {
    pub fn closed(&self, code: u16) {
        self.closed[codes::index(code)].fetch_add(1, Relaxed);
    }
    pub fn command(&self, kind: CommandKind) {
        self.commands[kind as usize].fetch_add(1, Relaxed);
    }
}

#[derive(Default)]
pub struct BusMetrics {
    pub received: AtomicU64,
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    pub redis_up: AtomicBool,
    pub reconnects: AtomicU64,
    /// Roots the node holds on Redis (SPEC §9).
    pub subscriptions: AtomicI64,
    /// Roots subscribed again after a slot moved or a master failed over (SPEC §9).
    pub resubscribes: AtomicU64,
}

static DROP_LOG: Throttle = Throttle::new(Duration::from_secs(60));

impl BusMetrics {
    /// Count a dropped event; an alarming drop is logged, once a minute at most.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Relaxed);
        if reason.alarming() && DROP_LOG.ready() {
            tracing::warn!(
                reason = reason.label(),
                "events are being dropped (see xcord_events_dropped_total); logged once a minute"
            );
        }
    }
}

pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
    pub bus: BusMetrics,
    /// Bus receive → socket write.
    pub latency: Mutex<Latency>,
}

/// What the node knows that the counters do not (rendered with them).
pub struct NodeState {
    pub ready: bool,
    pub max_connections: usize,
}

const BUCKETS_SECONDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The process's resident memory, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).unwrap_or(4096)))
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            bus: BusMetrics::default(),
            latency: Mutex::new(Latency::new()),
        }
    }

    pub fn total_connections(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.connections.load(Relaxed))
            .sum()
    }

    fn sum(&self, f: impl Fn(&ShardMetrics) -> u64) -> u64 {
        self.shards.iter().map(f).sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self, node: &NodeState) -> String {
        let mut o = String::with_capacity(8192);
        self.render_shards(&mut o);
        self.render_events(&mut o);
        self.render_bus(&mut o);
        self.render_latency(&mut o);
        render_node(&mut o, node);
        o
    }

    fn render_shards(&self, o: &mut String) {
        let per_shard =
            |o: &mut String, name: &str, help: &str, f: &dyn Fn(&ShardMetrics) -> i64| {
                header(o, name, "gauge", help);
                for (i, s) in self.shards.iter().enumerate() {
                    let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", f(s));
                }
            };
        per_shard(o, "xcord_connections", "Open client connections.", &|s| {
            s.connections.load(Relaxed)
        });
        per_shard(
            o,
            "xcord_subscriptions",
            "Subscriptions held (automatic user tree included).",
            &|s| s.subscriptions.load(Relaxed),
        );
        let total = |o: &mut String, name: &str, help: &str, v: u64| {
            header(o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        };
        total(
            o,
            "xcord_connections_accepted_total",
            "WebSocket upgrades accepted.",
            self.sum(|s| s.accepted.load(Relaxed)),
        );
        total(
            o,
            "xcord_http_rejected_total",
            "Upgrade requests refused (404/401/429/503).",
            self.sum(|s| s.rejected_http.load(Relaxed)),
        );
        total(
            o,
            "xcord_handshakes_shed_total",
            "Pending handshakes dropped to make room for new ones.",
            self.sum(|s| s.handshakes_shed.load(Relaxed)),
        );
        header(
            o,
            "xcord_connections_closed_total",
            "counter",
            "Connections closed, by close code.",
        );
        for (i, c) in codes::TABLE.iter().enumerate() {
            let _ = writeln!(
                o,
                "xcord_connections_closed_total{{code=\"{}\"}} {}",
                c.code,
                self.sum(|s| s.closed[i].load(Relaxed))
            );
        }
        let _ = writeln!(
            o,
            "xcord_connections_closed_total{{code=\"other\"}} {}",
            self.sum(|s| s.closed[codes::TABLE.len()].load(Relaxed))
        );
        header(
            o,
            "xcord_commands_total",
            "counter",
            "Client commands, by type.",
        );
        for k in CommandKind::ALL {
            let _ = writeln!(
                o,
                "xcord_commands_total{{type=\"{}\"}} {}",
                k.label(),
                self.sum(|s| s.commands[k as usize].load(Relaxed))
            );
        }
    }

    fn render_events(&self, o: &mut String) {
        header(
            o,
            "xcord_events_received_total",
            "counter",
            "Events received from the bus.",
        );
        let _ = writeln!(
            o,
            "xcord_events_received_total {}",
            self.bus.received.load(Relaxed)
        );
        header(
            o,
            "xcord_events_delivered_total",
            "counter",
            "Event frames queued to subscriber sockets.",
        );
        let _ = writeln!(
            o,
            "xcord_events_delivered_total {}",
            self.sum(|s| s.delivered.load(Relaxed))
        );
        header(
            o,
            "xcord_events_dropped_total",
            "counter",
            "Events not delivered, by reason.",
        );
        for r in DropReason::ALL {
            let mut v = self.bus.dropped[r as usize].load(Relaxed);
            if r == DropReason::SlowConsumer {
                v += self.sum(|s| s.dropped_slow.load(Relaxed));
            }
            let _ = writeln!(
                o,
                "xcord_events_dropped_total{{reason=\"{}\"}} {v}",
                r.label()
            );
        }
    }

    fn render_bus(&self, o: &mut String) {
        let b = &self.bus;
        let lines: [(&str, &str, &str, i64); 4] = [
            (
                "xcord_redis_up",
                "gauge",
                "1 while the Redis pub/sub link is up (0 without --redis).",
                i64::from(b.redis_up.load(Relaxed)),
            ),
            (
                "xcord_redis_reconnects_total",
                "counter",
                "Redis pub/sub reconnections.",
                i64::try_from(b.reconnects.load(Relaxed)).unwrap_or(i64::MAX),
            ),
            (
                "xcord_bus_subscriptions",
                "gauge",
                "Roots the node holds on Redis (--routing roots).",
                b.subscriptions.load(Relaxed),
            ),
            (
                "xcord_bus_resubscribes_total",
                "counter",
                "Roots subscribed again after a slot moved or a master failed over.",
                i64::try_from(b.resubscribes.load(Relaxed)).unwrap_or(i64::MAX),
            ),
        ];
        for (name, kind, help, v) in lines {
            header(o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
    }

    fn render_latency(&self, o: &mut String) {
        header(
            o,
            "xcord_delivery_latency_seconds",
            "histogram",
            "Bus receive to socket write.",
        );
        let l = match self.latency.lock() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let h = &l.hist;
        for le in BUCKETS_SECONDS {
            let micros = (le * 1e6) as u64;
            let c = if h.is_empty() {
                0
            } else {
                h.count_between(0, micros)
            };
            let _ = writeln!(
                o,
                "xcord_delivery_latency_seconds_bucket{{le=\"{le}\"}} {c}"
            );
        }
        let _ = writeln!(
            o,
            "xcord_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}\n\
             xcord_delivery_latency_seconds_sum {:.6}\n\
             xcord_delivery_latency_seconds_count {}",
            h.len(),
            l.sum_micros as f64 / 1e6,
            h.len()
        );
    }
}

fn render_node(o: &mut String, node: &NodeState) {
    header(o, "xcord_ready", "gauge", "1 while /readyz answers 200.");
    let _ = writeln!(o, "xcord_ready {}", u8::from(node.ready));
    header(
        o,
        "xcord_max_connections",
        "gauge",
        "The node's --max-connections.",
    );
    let _ = writeln!(o, "xcord_max_connections {}", node.max_connections);
    header(
        o,
        "xcord_build_info",
        "gauge",
        "The gateway's version (always 1).",
    );
    let _ = writeln!(
        o,
        "xcord_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(rss) = resident_bytes() {
        header(
            o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(o, "process_resident_memory_bytes {rss}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_sum_is_exact() {
        let mut a = Latency::new();
        a.record(Duration::from_micros(1234));
        a.record(Duration::from_micros(1));
        let mut node = Latency::new();
        a.drain_into(&mut node);
        assert_eq!(node.sum_micros, 1235);
        assert_eq!(node.hist.len(), 2);
        assert!(a.hist.is_empty() && a.sum_micros == 0);
        let m = Metrics::new(1);
        *m.latency.lock().unwrap() = node;
        let text = m.render(&NodeState {
            ready: true,
            max_connections: 7,
        });
        assert!(
            text.contains("xcord_delivery_latency_seconds_sum 0.001235\n"),
            "{text}"
        );
        assert!(text.contains("xcord_ready 1\n"));
        assert!(text.contains("xcord_max_connections 7\n"));
        assert!(text.contains("xcord_build_info{version=\""));
    }

    #[test]
    fn batched_writes_are_each_counted_never_earlier_than_written() {
        let mut l = Latency::new();
        let old = Instant::now() - Duration::from_millis(50);
        let new = Instant::now();
        // 40 writes: 30 of one event, 10 of a later one; the 32nd write settles.
        for i in 0..40 {
            l.written(if i < 30 { old } else { new });
        }
        assert_eq!(l.hist.len(), 32, "one clock read per 32 writes");
        l.settle();
        assert_eq!(l.hist.len(), 40, "every write counted once");
        assert!(l.batch.is_empty());
        l.settle(); // nothing pending: no change
        assert_eq!(l.hist.len(), 40);
        // The old event's 30 writes are charged at least its 50 ms.
        assert!(l.hist.count_between(50_000, 100_000_000) >= 30);
        assert!(l.sum_micros >= 30 * 50_000);
        // Pending writes reach the node's histogram when drained.
        l.written(old);
        let mut node = Latency::new();
        l.drain_into(&mut node);
        assert_eq!(node.hist.len(), 41);
    }

    #[test]
    fn every_label_is_rendered_once() {
        let m = Metrics::new(2);
        m.shards[1].command(CommandKind::Ping);
        m.shards[0].closed(4010);
        m.shards[0].closed(3999);
        m.bus.dropped(DropReason::TooLarge);
        let t = m.render(&NodeState {
            ready: false,
            max_connections: 1,
        });
        assert!(t.contains("xcord_commands_total{type=\"PING\"} 1\n"));
        assert!(t.contains("xcord_connections_closed_total{code=\"4010\"} 1\n"));
        assert!(t.contains("xcord_connections_closed_total{code=\"other\"} 1\n"));
        assert!(t.contains("xcord_events_dropped_total{reason=\"too_large\"} 1\n"));
        assert!(t.contains("xcord_connections{shard=\"1\"} 0\n"));
        for r in DropReason::ALL {
            assert_eq!(t.matches(&format!("reason=\"{}\"", r.label())).count(), 1);
        }
    }
}
