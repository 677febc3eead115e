//! The load-test result file, schema `xcord-loadtest/1` (`loadtest/RESULT_SCHEMA.md`):
//! `xcord-loadtest --out` writes it and `xcord-tune capacity --from` reads it, both
//! through these types, so the two cannot disagree on a field's name or type.
//!
//! Invariants of the schema: fields may be added, never renamed or retyped; a value
//! that could not be measured is `null`. Reading is lenient so that older results
//! and hand-written ones still load: every struct takes defaults for what it lacks
//! (`#[serde(default)]`). The fields `xcord-tune` plans from are `Option`, so that a
//! result which lacks one says "unknown" instead of a made-up zero; the writer always
//! fills them.
//!
//! `config.scenario` is the load tester's own scenario record, a type parameter here
//! (`S`): the tuner never reads it and leaves it [`IgnoredAny`].

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The schema this crate writes and reads.
pub const SCHEMA: &str = "xcord-loadtest/1";

/// p50/p90/p99/p99.9/max (+ mean) in milliseconds; `None` when nothing was recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Samples in the histogram.
    pub count: u64,
}

/// The machine the test ran on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Host {
    pub cores: Option<usize>,
    pub mem_bytes: Option<u64>,
}

/// The effective scenario after flag overrides, and what the run derived from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct Config<S = IgnoredAny> {
    pub connections: usize,
    pub channels: usize,
    /// Subscribers per published channel, rounded (exact for the uniform topology).
    pub subscribers_per_channel: Option<u64>,
    /// SUBSCRIBE entries per connection, rounded.
    pub subscriptions_per_connection: u64,
    pub rate_events_per_sec: Option<f64>,
    pub event_bytes: usize,
    pub publisher: String,
    pub gateway_shards: Option<u32>,
    // Added fields.
    pub subscribers_per_channel_mean: f64,
    pub subscriptions_per_connection_mean: f64,
    /// Expected deliveries per event, weighted by channel popularity.
    pub mean_fanout: f64,
    pub seed: u64,
    pub source_addrs: usize,
    pub client_threads: usize,
    /// permessage-deflate was offered (`--compression`).
    pub compression: bool,
    /// Every key of the effective scenario, after flag overrides.
    pub scenario: S,
}

/// One connect round (the first, or a reconnect round).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Round {
    pub round: u32,
    pub target: usize,
    pub established: usize,
    pub failed: usize,
    pub duration_s: f64,
    pub connect_rate_per_sec: Option<f64>,
    pub handshake_latency_ms: Percentiles,
    pub subscribe_latency_ms: Percentiles,
    /// Connection attempts, retries included.
    pub attempts: u64,
    /// Attempts that failed and were retried (shed, refused, timed out).
    pub retried: u64,
}

/// The connections of the run: the first round, the reconnect rounds, the losses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connections {
    pub target: Option<usize>,
    pub established: Option<usize>,
    pub failed: usize,
    pub connect_rate_per_sec: Option<f64>,
    pub handshake_latency_ms: Percentiles,
    // Added fields.
    pub subscribe_latency_ms: Percentiles,
    pub connect_phase_s: f64,
    pub attempts: u64,
    pub retried: u64,
    /// Failed attempts by reason (first round and reconnects).
    pub errors: BTreeMap<String, u64>,
    /// Connections that closed while they should have stayed open, and why.
    pub lost: u64,
    pub close_reasons: BTreeMap<String, u64>,
    /// The reconnect rounds (`reconnect_rounds`), each like the first.
    pub reconnects: Vec<Round>,
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub typing_sent: u64,
}

/// The accounting of every expected delivery.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deliveries {
    pub expected: Option<u64>,
    /// Deliveries of this run's events received, duplicates included.
    pub received: Option<u64>,
    /// expected − first receipts.
    pub missing: Option<u64>,
    pub duplicated: Option<u64>,
    pub out_of_order: Option<u64>,
    pub per_sec_expected: Option<f64>,
    pub per_sec_achieved: Option<f64>,
    // Added fields.
    /// A run event delivered to a connection that does not cover its channel.
    pub unexpected: u64,
    /// Events of another run (ignored).
    pub stale_other_runs: u64,
    /// Other EVENT frames (presence, typing…), not accounted.
    pub other_events: u64,
    /// EVENT frames whose top-level seq did not grow on their connection.
    pub seq_regressions: u64,
    pub events_scheduled: u64,
    pub events_published: u64,
    /// Test hook (--drop-event / --drop-every): events skipped on purpose, and the
    /// deliveries they owed (which must show up as missing).
    pub events_dropped_by_hook: u64,
    pub deliveries_dropped_by_hook: u64,
    pub publish_errors: u64,
    pub publish_first_error: Option<String>,
    pub publisher_max_lag_ms: f64,
    /// Other EVENT frames received during the measured phase: load the gateway
    /// carried besides the accounted events.
    pub other_events_during_measure: u64,
    /// First receipts were still coming in at the end of a drain that timed out: the
    /// gateway was behind, so "missing" may be late rather than lost.
    pub still_arriving_at_end: bool,
    /// How long the run waited for connect-time events to settle before measuring.
    pub settle_s: f64,
    /// Wire bytes of the deliveries received (frame headers included), per
    /// delivery, and the deliveries that came compressed (permessage-deflate).
    pub wire_bytes: u64,
    pub wire_bytes_per_delivery: Option<f64>,
    pub compressed: u64,
}

/// Bytes per delivery, when there were deliveries.
pub fn per_delivery(bytes: u64, received: u64) -> Option<f64> {
    (received > 0).then(|| bytes as f64 / received as f64)
}

/// The gateway process, sampled around each phase (`--gateway-pid`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gateway {
    pub pid: u32,
    pub rss_bytes_before_connect: Option<u64>,
    pub rss_bytes_after_connect: Option<u64>,
    pub rss_bytes_end: Option<u64>,
    pub rss_bytes_per_connection: Option<f64>,
    /// RSS growth per connection, a least-squares fit over samples taken through
    /// the last three quarters of the connect phase: the fixed costs of the first
    /// connections (allocator segments, tables that grow by doubling) are out of
    /// it, so it extrapolates.
    pub rss_bytes_per_connection_marginal: Option<f64>,
    pub cpu_seconds_connect: Option<f64>,
    pub cpu_seconds_measure: Option<f64>,
    pub cpu_seconds_per_million_deliveries: Option<f64>,
    // Added fields.
    pub rss_bytes_peak: Option<u64>,
    /// CPU over the measured phases' sampling windows (publish + drain), % of one core.
    pub cpu_percent_measure: Option<f64>,
}

/// The load tester itself. Its CPU per delivery stands next to the gateway's so
/// that a reader sees which side gave out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Client {
    pub threads: usize,
    /// The whole process (engine, publisher, coordinator) while measuring.
    pub cpu_seconds_measure: Option<f64>,
    pub cpu_seconds_total: Option<f64>,
    pub rss_bytes_end: Option<u64>,
    // Added fields.
    /// The connection engine's threads alone while measuring.
    pub engine_cpu_seconds_measure: Option<f64>,
    /// `cpu_seconds_measure` per million first receipts.
    pub cpu_seconds_per_million_deliveries: Option<f64>,
    /// `engine_cpu_seconds_measure` per million first receipts.
    pub engine_cpu_seconds_per_million_deliveries: Option<f64>,
    /// First receipts per second of engine CPU: what one client core sustains.
    pub deliveries_per_engine_cpu_second: Option<f64>,
}

/// HDR histograms of the run, each the base64 of hdrhistogram's V2 serialization
/// (microseconds), so that a fleet's results merge exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Histograms {
    /// End-to-end latency of first receipts (all steps).
    pub latency_us: Option<String>,
    /// Handshakes of the first connect round.
    pub handshake_us: Option<String>,
    /// Subscribes of the first connect round.
    pub subscribe_us: Option<String>,
}

/// This process's part in a fleet (`--shard I/N`, `--publish-only`), and what a
/// merge needs to recount the expected deliveries exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fleet {
    pub shard: usize,
    pub shards: usize,
    /// `connect+publish`, `connect`, `publish`, or `merged`.
    pub role: String,
    /// Connections of this process subscribed to each published channel.
    pub subscribers_per_channel: Vec<u32>,
    /// The publisher's events scheduled per channel (dropped ones included).
    pub events_per_channel: Option<Vec<u64>>,
    /// Of which skipped by the drop hook.
    pub dropped_per_channel: Option<Vec<u64>>,
    /// A merged result: the files it was made from.
    pub merged_from: Vec<String>,
}

/// One step of a ramp (`--ramp`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RampStep {
    pub rate_events_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub p99_ms: Option<f64>,
    pub missing: u64,
    pub ok: bool,
    // Added fields.
    pub step: u32,
    pub expected: u64,
    pub received_by_eval: u64,
    pub expected_per_sec: f64,
    pub achieved_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub duration_s: f64,
    pub drain_s: f64,
    pub gateway_cpu_seconds: Option<f64>,
    /// Gateway CPU over the step's window (publish + drain), % of one core.
    pub gateway_cpu_percent: Option<f64>,
    /// The load tester's CPU over the same window, % of one core: near 100 × its
    /// cores the client, not the gateway, is the limit.
    pub client_cpu_percent: Option<f64>,
    pub publisher_max_lag_ms: f64,
    /// Why the step is not ok (empty when ok).
    pub why: Vec<String>,
}

/// A whole result file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct RunResult<S = IgnoredAny> {
    pub schema: Option<String>,
    pub scenario: Option<String>,
    pub started_at_unix: u64,
    /// The measured phase only.
    pub duration_s: Option<f64>,
    pub host: Host,
    pub config: Config<S>,
    pub connections: Connections,
    pub deliveries: Deliveries,
    pub latency_ms: Percentiles,
    /// `None` when no `--gateway-pid` was given.
    pub gateway: Option<Gateway>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Vec<RampStep>>,
    pub saturation_deliveries_per_sec: Option<f64>,
    pub passed: Option<bool>,
    // Added fields.
    pub failure_reasons: Vec<String>,
    /// The exact command line of this run.
    pub command: String,
    pub run_id: u64,
    pub tool_version: String,
    pub saturation_rate_events_per_sec: Option<f64>,
    /// (percentile, ms) points of the end-to-end latency distribution.
    pub latency_percentiles: Vec<(f64, f64)>,
    pub client: Client,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histograms: Option<Histograms>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Fleet>,
}

impl<S> RunResult<S> {
    /// Whether the run passed; a result that does not say has not.
    pub fn passed(&self) -> bool {
        self.passed == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result as the oldest v1 files look: core fields only, some `null`.
    const OLD: &str = r#"{
        "schema": "xcord-loadtest/1", "scenario": "fanout", "duration_s": 30.0,
        "host": {"cores": 2, "mem_bytes": 25769803776},
        "config": {"connections": 10, "subscribers_per_channel": 5, "gateway_shards": null},
        "connections": {"target": 10, "established": 9, "handshake_latency_ms": {"p99": 5.0}},
        "deliveries": {"expected": 100, "received": 99, "per_sec_achieved": 3.5},
        "gateway": null,
        "ramp": [{"rate_events_per_sec": 200.0, "ok": true}],
        "passed": false
    }"#;

    #[test]
    fn older_results_read_with_defaults() {
        let r: RunResult = serde_json::from_str(OLD).expect("reads");
        assert_eq!(r.schema.as_deref(), Some(SCHEMA));
        assert_eq!(r.host.cores, Some(2));
        assert_eq!(r.connections.established, Some(9));
        assert_eq!(r.connections.handshake_latency_ms.p99, Some(5.0));
        assert_eq!(r.deliveries.missing, None);
        assert_eq!(r.deliveries.per_sec_expected, None);
        assert!(r.gateway.is_none());
        assert_eq!(r.ramp.as_ref().map(Vec::len), Some(1));
        assert!(r.failure_reasons.is_empty());
        assert!(!r.passed());
        assert_eq!(RunResult::<IgnoredAny>::default().passed, None);
    }

    #[test]
    fn what_is_written_reads_back() {
        let r: RunResult<Vec<u32>> = RunResult {
            schema: Some(SCHEMA.into()),
            passed: Some(true),
            config: Config {
                scenario: vec![1, 2],
                ..Config::default()
            },
            gateway: Some(Gateway {
                pid: 7,
                rss_bytes_per_connection: Some(2800.5),
                ..Gateway::default()
            }),
            ..RunResult::default()
        };
        let text = serde_json::to_string(&r).expect("writes");
        assert!(
            !text.contains("\"ramp\""),
            "an absent ramp is not written: {text}"
        );
        assert!(
            !text.contains("\"mean\""),
            "an absent mean is not written: {text}"
        );
        let back: RunResult<Vec<u32>> = serde_json::from_str(&text).expect("reads");
        assert_eq!(back, r);
        assert!(back.passed());
    }
}
