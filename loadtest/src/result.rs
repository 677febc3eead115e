//! The result of a run. Its types live in `xcord_common::result` (schema
//! `xcord-loadtest/1`, documented in `RESULT_SCHEMA.md`; fields may be added, never
//! renamed), shared with `xcord-tune`, which reads the file back; here the load
//! tester's own scenario fills `config.scenario`, and [`Summary`] is the human text
//! printed at the end of a run.

use std::fmt::Write as _;

use crate::scenario::Scenario;
use crate::stats::Percentiles;

pub use xcord_common::result::{
    per_delivery, Client, Connections, Deliveries, Fleet, Gateway, Histograms, Host, RampStep,
    Round, SCHEMA,
};

/// A result file as this tool writes it.
pub type RunResult = xcord_common::result::RunResult<Scenario>;
/// The `config` section as this tool writes it.
pub type Config = xcord_common::result::Config<Scenario>;

/// The human summary of a result.
pub trait Summary {
    fn summary(&self) -> String;
}

impl Summary for RunResult {
    fn summary(&self) -> String {
        let mut s = String::new();
        config_lines(&mut s, self);
        connection_lines(&mut s, &self.connections);
        delivery_lines(&mut s, self);
        process_lines(&mut s, self);
        if let Some(ramp) = &self.ramp {
            ramp_lines(&mut s, self, ramp);
        }
        if self.passed() {
            let _ = writeln!(s, "PASSED");
        } else {
            let _ = writeln!(s, "FAILED: {}", self.failure_reasons.join("; "));
        }
        s
    }
}

/// What ran: the scenario, the command line and the effective configuration.
fn config_lines(s: &mut String, r: &RunResult) {
    let c = &r.config;
    let _ = writeln!(
        s,
        "== xcord-loadtest: {} ==",
        r.scenario.as_deref().unwrap_or_default()
    );
    let _ = writeln!(s, "command: {}", r.command);
    let _ = writeln!(
        s,
        "config: {} connections, {} channels ({:.1} subscribers each, {:.1} subscriptions per connection), {} events/s of {} B via {}, mean fan-out {:.1}",
        c.connections,
        c.channels,
        c.subscribers_per_channel_mean,
        c.subscriptions_per_connection_mean,
        c.rate_events_per_sec.unwrap_or_default(),
        c.event_bytes,
        c.publisher,
        c.mean_fanout
    );
}

/// The connect phase: every round, the failures and the losses.
fn connection_lines(s: &mut String, k: &Connections) {
    let _ = writeln!(
        s,
        "connections: {}/{} established, {} failed, {} conn/s over {:.2} s ({} attempts, {} retried); lost during run {}",
        k.established.unwrap_or_default(),
        k.target.unwrap_or_default(),
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
}

/// The accounting of the deliveries and their end-to-end latency.
fn delivery_lines(s: &mut String, r: &RunResult) {
    let d = &r.deliveries;
    let _ = writeln!(
        s,
        "deliveries: expected {} received {} missing {} duplicated {} out-of-order {} unexpected {} (over {:.2} s)",
        d.expected.unwrap_or_default(),
        d.received.unwrap_or_default(),
        d.missing.unwrap_or_default(),
        d.duplicated.unwrap_or_default(),
        d.out_of_order.unwrap_or_default(),
        d.unexpected,
        r.duration_s.unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "  rate: {:.0}/s achieved vs {:.0}/s expected; events {} published of {} scheduled ({} dropped by the test hook, {} publish errors); publisher lag max {:.2} ms",
        d.per_sec_achieved.unwrap_or_default(),
        d.per_sec_expected.unwrap_or_default(),
        d.events_published,
        d.events_scheduled,
        d.events_dropped_by_hook,
        d.publish_errors,
        d.publisher_max_lag_ms
    );
    let _ = writeln!(
        s,
        "  wire: {} bytes per delivery ({} of {} compressed)",
        d.wire_bytes_per_delivery
            .map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
        d.compressed,
        d.received.unwrap_or_default()
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
        pct_line(&r.latency_ms),
        f(r.latency_ms.mean)
    );
}

/// What the gateway process and this tool cost.
fn process_lines(s: &mut String, r: &RunResult) {
    if let Some(g) = &r.gateway {
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
    let c = &r.client;
    let _ = writeln!(
        s,
        "client: {} engine threads, {} cpu-s while measuring ({} in the engine), rss {}",
        c.threads,
        f(c.cpu_seconds_measure),
        f(c.engine_cpu_seconds_measure),
        mib(c.rss_bytes_end)
    );
    let _ = writeln!(
        s,
        "cpu-s per million deliveries: gateway {} | this tool {} (engine {}); engine {} deliveries per cpu-second",
        f(r.gateway
            .as_ref()
            .and_then(|g| g.cpu_seconds_per_million_deliveries)),
        f(c.cpu_seconds_per_million_deliveries),
        f(c.engine_cpu_seconds_per_million_deliveries),
        f(c.deliveries_per_engine_cpu_second)
    );
}

/// The ramp's table and the saturation point.
fn ramp_lines(s: &mut String, r: &RunResult, ramp: &[RampStep]) {
    let _ = writeln!(s, "ramp:");
    let _ = writeln!(
        s,
        "  step  events/s  deliveries/s  expected/s  p50 ms  p99 ms  max ms  missing  gw cpu%  client cpu%  ok"
    );
    for st in ramp {
        let _ = writeln!(
            s,
            "  {:>4}  {:>8.1}  {:>12.0}  {:>10.0}  {:>6}  {:>6}  {:>6}  {:>7}  {:>7}  {:>11}  {}{}",
            st.step,
            st.rate_events_per_sec,
            st.deliveries_per_sec,
            st.expected_per_sec,
            f(st.p50_ms),
            f(st.p99_ms),
            f(st.max_ms),
            st.missing,
            f(st.gateway_cpu_percent),
            f(st.client_cpu_percent),
            if st.ok { "yes" } else { "no" },
            if st.why.is_empty() {
                String::new()
            } else {
                format!(" ({})", st.why.join("; "))
            }
        );
    }
    let _ = writeln!(
        s,
        "saturation: {} deliveries/s ({} events/s)",
        f(r.saturation_deliveries_per_sec),
        f(r.saturation_rate_events_per_sec)
    );
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
