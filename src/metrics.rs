//! Counters and gauges behind `/metrics` (SPEC §7), rendered as Prometheus text.
//!
//! Each shard owns one `ShardMetrics` and is its only writer (relaxed atomics on
//! shard-private cache lines: no contention on the fan-out path; the delivered
//! counter moves once per event, not once per subscriber). The latency histogram is
//! an hdrhistogram kept per shard and merged into the node's under a mutex about
//! once a second — off the fan-out path.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::protocol::codes;
use crate::protocol::messages::COMMAND_KINDS;

/// Reasons an event is dropped (the `reason` label of `xcord_events_dropped_total`).
pub const DROP_REASONS: [&str; 7] = [
    "bad_json",
    "no_type",
    "bad_channel",
    "queue_full",
    "publish_failed",
    "slow_consumer",
    "redis_down",
];

pub fn drop_index(reason: &str) -> usize {
    DROP_REASONS.iter().position(|r| *r == reason).unwrap_or(0)
}

#[derive(Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub connections: AtomicI64,
    pub subscriptions: AtomicI64,
    pub accepted: AtomicU64,
    pub closed: [AtomicU64; codes::TRACKED.len() + 1],
    pub commands: [AtomicU64; COMMAND_KINDS.len()],
    pub delivered: AtomicU64,
    pub dropped_slow: AtomicU64,
    pub rejected_http: AtomicU64,
    /// Pending handshakes dropped to make room (slowloris defence).
    pub handshakes_shed: AtomicU64,
}

impl ShardMetrics {
    pub fn closed(&self, code: u16) {
        self.closed[codes::tracked_index(code)].fetch_add(1, Relaxed);
    }
    pub fn command(&self, kind: &str) {
        let i = COMMAND_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(COMMAND_KINDS.len() - 1);
        self.commands[i].fetch_add(1, Relaxed);
    }
}

#[derive(Default)]
pub struct BusMetrics {
    /// Unix seconds of the last "events dropped" log line (one a minute at most).
    last_drop_log: AtomicU64,
    pub received: AtomicU64,
    pub dropped: [AtomicU64; DROP_REASONS.len()],
    pub redis_up: AtomicBool,
    pub reconnects: AtomicU64,
}

impl BusMetrics {
    /// Count a dropped event; log it, rate-limited to one line a minute.
    pub fn dropped(&self, reason: &str) {
        self.dropped[drop_index(reason)].fetch_add(1, Relaxed);
        if matches!(reason, "queue_full" | "publish_failed" | "redis_down") {
            let now = crate::auth::now_secs();
            let last = self.last_drop_log.load(Relaxed);
            if now >= last + 60
                && self
                    .last_drop_log
                    .compare_exchange(last, now, Relaxed, Relaxed)
                    .is_ok()
            {
                tracing::warn!(reason, "events are being dropped (see xcord_events_dropped_total); logged once a minute");
            }
        }
    }
}

pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
    pub bus: BusMetrics,
    /// Bus receive → socket write, microseconds.
    pub latency: Mutex<Histogram<u64>>,
}

/// A histogram for delivery latency in microseconds (1 µs .. 100 s, 3 digits).
pub fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

const BUCKETS_SECONDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            bus: BusMetrics::default(),
            latency: Mutex::new(latency_histogram()),
        }
    }

    pub fn total_connections(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.connections.load(Relaxed))
            .sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        let sum = |f: &dyn Fn(&ShardMetrics) -> u64| -> u64 { self.shards.iter().map(f).sum() };

        o.push_str(
            "# HELP xcord_connections Open client connections.\n# TYPE xcord_connections gauge\n",
        );
        for (i, s) in self.shards.iter().enumerate() {
            let _ = writeln!(
                o,
                "xcord_connections{{shard=\"{i}\"}} {}",
                s.connections.load(Relaxed)
            );
        }
        o.push_str("# HELP xcord_subscriptions Subscriptions held (automatic user tree included).\n# TYPE xcord_subscriptions gauge\n");
        for (i, s) in self.shards.iter().enumerate() {
            let _ = writeln!(
                o,
                "xcord_subscriptions{{shard=\"{i}\"}} {}",
                s.subscriptions.load(Relaxed)
            );
        }
        o.push_str("# HELP xcord_connections_accepted_total WebSocket upgrades accepted.\n# TYPE xcord_connections_accepted_total counter\n");
        let _ = writeln!(
            o,
            "xcord_connections_accepted_total {}",
            sum(&|s| s.accepted.load(Relaxed))
        );
        o.push_str("# HELP xcord_http_rejected_total Upgrade requests refused (404/401/429/503).\n# TYPE xcord_http_rejected_total counter\n");
        let _ = writeln!(
            o,
            "xcord_http_rejected_total {}",
            sum(&|s| s.rejected_http.load(Relaxed))
        );
        o.push_str("# HELP xcord_handshakes_shed_total Pending handshakes dropped to make room for new ones.\n# TYPE xcord_handshakes_shed_total counter\n");
        let _ = writeln!(
            o,
            "xcord_handshakes_shed_total {}",
            sum(&|s| s.handshakes_shed.load(Relaxed))
        );
        o.push_str("# HELP xcord_connections_closed_total Connections closed, by close code.\n# TYPE xcord_connections_closed_total counter\n");
        for (i, code) in codes::TRACKED.iter().enumerate() {
            let _ = writeln!(
                o,
                "xcord_connections_closed_total{{code=\"{code}\"}} {}",
                sum(&|s| s.closed[i].load(Relaxed))
            );
        }
        let _ = writeln!(
            o,
            "xcord_connections_closed_total{{code=\"other\"}} {}",
            sum(&|s| s.closed[codes::TRACKED.len()].load(Relaxed))
        );
        o.push_str("# HELP xcord_commands_total Client commands, by type.\n# TYPE xcord_commands_total counter\n");
        for (i, k) in COMMAND_KINDS.iter().enumerate() {
            let _ = writeln!(
                o,
                "xcord_commands_total{{type=\"{k}\"}} {}",
                sum(&|s| s.commands[i].load(Relaxed))
            );
        }
        o.push_str("# HELP xcord_events_received_total Events received from the bus.\n# TYPE xcord_events_received_total counter\n");
        let _ = writeln!(
            o,
            "xcord_events_received_total {}",
            self.bus.received.load(Relaxed)
        );
        o.push_str("# HELP xcord_events_delivered_total Event frames queued to subscriber sockets.\n# TYPE xcord_events_delivered_total counter\n");
        let _ = writeln!(
            o,
            "xcord_events_delivered_total {}",
            sum(&|s| s.delivered.load(Relaxed))
        );
        o.push_str("# HELP xcord_events_dropped_total Events not delivered, by reason.\n# TYPE xcord_events_dropped_total counter\n");
        for (i, r) in DROP_REASONS.iter().enumerate() {
            let mut v = self.bus.dropped[i].load(Relaxed);
            if *r == "slow_consumer" {
                v += sum(&|s| s.dropped_slow.load(Relaxed));
            }
            let _ = writeln!(o, "xcord_events_dropped_total{{reason=\"{r}\"}} {v}");
        }
        o.push_str("# HELP xcord_redis_up 1 while the Redis pub/sub link is up (0 without --redis).\n# TYPE xcord_redis_up gauge\n");
        let _ = writeln!(
            o,
            "xcord_redis_up {}",
            self.bus.redis_up.load(Relaxed) as u8
        );
        o.push_str("# HELP xcord_redis_reconnects_total Redis pub/sub reconnections.\n# TYPE xcord_redis_reconnects_total counter\n");
        let _ = writeln!(
            o,
            "xcord_redis_reconnects_total {}",
            self.bus.reconnects.load(Relaxed)
        );

        o.push_str("# HELP xcord_delivery_latency_seconds Bus receive to socket write.\n# TYPE xcord_delivery_latency_seconds histogram\n");
        let h = match self.latency.lock() {
            Ok(h) => h.clone(),
            Err(p) => p.into_inner().clone(),
        };
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
            "xcord_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}",
            h.len()
        );
        let _ = writeln!(
            o,
            "xcord_delivery_latency_seconds_sum {:.6}",
            h.mean() * h.len() as f64 / 1e6
        );
        let _ = writeln!(o, "xcord_delivery_latency_seconds_count {}", h.len());
        o
    }
}
