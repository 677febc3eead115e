//! The result file (`--out`, schema `xcord-loadtest/1`, documented in
//! `RESULT_SCHEMA.md`; fields may be added, never renamed) and the human summary
//! printed at the end of a run.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::stats::Percentiles;

pub const SCHEMA: &str = "xcord-loadtest/1";

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub cores: usize,
    pub mem_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub connections: usize,
    pub channels: usize,
    /// Subscribers per published channel, rounded (exact for the uniform topology).
    pub subscribers_per_channel: u64,
    /// SUBSCRIBE entries per connection, rounded.
    pub subscriptions_per_connection: u64,
    pub rate_events_per_sec: f64,
    pub event_bytes: usize,
    pub publisher: &'static str,
    pub gateway_shards: Option<u32>,
    // Added fields.
    pub subscribers_per_channel_mean: f64,
    pub subscriptions_per_connection_mean: f64,
    /// Expected deliveries per event, weighted by channel popularity.
    pub mean_fanout: f64,
    pub seed: u64,
    pub source_addrs: usize,
    pub client_threads: usize,
    /// Every key of the effective scenario, after flag overrides.
    pub scenario: crate::scenario::Scenario,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub target: usize,
    pub established: usize,
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

#[derive(Debug, Clone, Serialize)]
pub struct Deliveries {
    pub expected: u64,
    /// Deliveries of this run's events received, duplicates included.
    pub received: u64,
    /// expected − first receipts.
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub per_sec_expected: f64,
    pub per_sec_achieved: f64,
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
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct Client {
    pub threads: usize,
    pub cpu_seconds_measure: Option<f64>,
    pub cpu_seconds_total: Option<f64>,
    pub rss_bytes_end: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
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
    /// This tool's CPU over the same window, % of one core: near 100 × its cores the
    /// client, not the gateway, is the limit.
    pub client_cpu_percent: Option<f64>,
    pub publisher_max_lag_ms: f64,
    /// Why the step is not ok (empty when ok).
    pub why: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub schema: &'static str,
    pub scenario: String,
    pub started_at_unix: u64,
    pub duration_s: f64,
    pub host: Host,
    pub config: Config,
    pub connections: Connections,
    pub deliveries: Deliveries,
    pub latency_ms: Percentiles,
    pub gateway: Option<Gateway>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Vec<RampStep>>,
    pub saturation_deliveries_per_sec: Option<f64>,
    pub passed: bool,
    // Added fields.
    pub failure_reasons: Vec<String>,
    /// The exact command line of this run.
    pub command: String,
    pub run_id: u64,
    pub tool_version: &'static str,
    pub saturation_rate_events_per_sec: Option<f64>,
    /// (percentile, ms) points of the end-to-end latency distribution.
    pub latency_percentiles: Vec<(f64, f64)>,
    pub client: Client,
}

fn f(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

fn mib(v: Option<u64>) -> String {
    v.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn pct_line(p: &Percentiles) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {} ms",
        f(p.p50),
        f(p.p90),
        f(p.p99),
        f(p.p999),
        f(p.max)
    )
}

impl RunResult {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(s, "== xcord-loadtest: {} ==", self.scenario);
        let _ = writeln!(s, "command: {}", self.command);
        let _ = writeln!(
            s,
            "config: {} connections, {} channels ({:.1} subscribers each, {:.1} subscriptions per connection), {} events/s of {} B via {}, mean fan-out {:.1}",
            c.connections,
            c.channels,
            c.subscribers_per_channel_mean,
            c.subscriptions_per_connection_mean,
            c.rate_events_per_sec,
            c.event_bytes,
            c.publisher,
            c.mean_fanout
        );
        let k = &self.connections;
        let _ = writeln!(
            s,
            "connections: {}/{} established, {} failed, {} conn/s over {:.2} s ({} attempts, {} retried); lost during run {}",
            k.established,
            k.target,
            k.failed,
            f(k.connect_rate_per_sec),
            k.connect_phase_s,
            k.attempts,
            k.retried,
            k.lost
        );
        let _ = writeln!(s, "  handshake  {}", pct_line(&k.handshake_latency_ms));
        let _ = writeln!(s, "  subscribe  {}", pct_line(&k.subscribe_latency_ms));
        for r in &k.reconnects {
            let _ = writeln!(
                s,
                "  reconnect round {}: {}/{} in {:.2} s ({} conn/s, {} attempts, {} retried), handshake {}",
                r.round,
                r.established,
                r.target,
                r.duration_s,
                f(r.connect_rate_per_sec),
                r.attempts,
                r.retried,
                pct_line(&r.handshake_latency_ms)
            );
        }
        for (e, n) in &k.errors {
            let _ = writeln!(s, "  connect error x{n}: {e}");
        }
        for (e, n) in &k.close_reasons {
            let _ = writeln!(s, "  closed x{n}: {e}");
        }
        let d = &self.deliveries;
        let _ = writeln!(
            s,
            "deliveries: expected {} received {} missing {} duplicated {} out-of-order {} unexpected {} (over {:.2} s)",
            d.expected, d.received, d.missing, d.duplicated, d.out_of_order, d.unexpected, self.duration_s
        );
        let _ = writeln!(
            s,
            "  rate: {:.0}/s achieved vs {:.0}/s expected; events {} published of {} scheduled ({} dropped by the test hook, {} publish errors); publisher lag max {:.2} ms",
            d.per_sec_achieved,
            d.per_sec_expected,
            d.events_published,
            d.events_scheduled,
            d.events_dropped_by_hook,
            d.publish_errors,
            d.publisher_max_lag_ms
        );
        let _ = writeln!(
            s,
            "  other events (presence, typing…) received while measuring: {}; settled {:.1} s before measuring{}",
            d.other_events_during_measure,
            d.settle_s,
            if d.still_arriving_at_end {
                "; deliveries were STILL ARRIVING when the drain ended (the gateway was behind)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "latency (end-to-end, from the intended send time): {}  mean {}",
            pct_line(&self.latency_ms),
            f(self.latency_ms.mean)
        );
        if let Some(g) = &self.gateway {
            let _ = writeln!(
                s,
                "gateway pid {}: rss {} → {} after connect → {} end (peak {}); {} B per connection",
                g.pid,
                mib(g.rss_bytes_before_connect),
                mib(g.rss_bytes_after_connect),
                mib(g.rss_bytes_end),
                mib(g.rss_bytes_peak),
                f(g.rss_bytes_per_connection)
            );
            let _ = writeln!(
                s,
                "  cpu: {} s connecting, {} s measuring ({} % of a core); {} cpu-s per million deliveries",
                f(g.cpu_seconds_connect),
                f(g.cpu_seconds_measure),
                f(g.cpu_percent_measure),
                f(g.cpu_seconds_per_million_deliveries)
            );
        }
        let _ = writeln!(
            s,
            "client: {} threads, {} cpu-s while measuring, rss {}",
            self.client.threads,
            f(self.client.cpu_seconds_measure),
            mib(self.client.rss_bytes_end)
        );
        if let Some(ramp) = &self.ramp {
            let _ = writeln!(s, "ramp:");
            let _ = writeln!(
                s,
                "  step  events/s  deliveries/s  expected/s  p50 ms  p99 ms  max ms  missing  gw cpu%  client cpu%  ok"
            );
            for r in ramp {
                let _ = writeln!(
                    s,
                    "  {:>4}  {:>8.1}  {:>12.0}  {:>10.0}  {:>6}  {:>6}  {:>6}  {:>7}  {:>7}  {:>11}  {}{}",
                    r.step,
                    r.rate_events_per_sec,
                    r.deliveries_per_sec,
                    r.expected_per_sec,
                    f(r.p50_ms),
                    f(r.p99_ms),
                    f(r.max_ms),
                    r.missing,
                    f(r.gateway_cpu_percent),
                    f(r.client_cpu_percent),
                    if r.ok { "yes" } else { "no" },
                    if r.why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.why.join("; "))
                    }
                );
            }
            let _ = writeln!(
                s,
                "saturation: {} deliveries/s ({} events/s)",
                f(self.saturation_deliveries_per_sec),
                f(self.saturation_rate_events_per_sec)
            );
        }
        if self.passed {
            let _ = writeln!(s, "PASSED");
        } else {
            let _ = writeln!(s, "FAILED: {}", self.failure_reasons.join("; "));
        }
        s
    }
}
