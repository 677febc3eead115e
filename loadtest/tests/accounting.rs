//! End-to-end check of the load tester's accounting against a real gateway and a
//! real Redis: small scenarios (a few hundred connections, a few seconds) must pass
//! with nothing missing, duplicated or out of order, and a deliberately dropped event
//! must be reported missing, exactly, with exit code 1. Timings are never asserted.
//!
//! The gateway binary is built first with `cargo build -p xcord-gateway` (instant
//! when `cargo test --workspace` has built it already). Every process a test starts
//! is killed by PID when its handle drops. Tests run one at a time (a lock), so that
//! they do not compete for the machine's two cores.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

const SMALL_FANOUT: &[&str] = &[
    "--scenario",
    "fanout",
    "--connections",
    "300",
    "--channels",
    "10",
    "--rate",
    "50",
    "--duration-s",
    "3",
    "--drain-grace-s",
    "5",
    "--connect-concurrency",
    "64",
    "--source-addrs",
    "3",
];

#[test]
fn fanout_accounts_for_every_delivery() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    let (out, v) = loadtest(&gw, &redis, "fanout", SMALL_FANOUT);
    assert_eq!(out.status.code(), Some(0));
    assert_clean(&v, 300);
    // 150 events x 30 subscribers each.
    assert_eq!(u(&v, &["deliveries", "events_scheduled"]), 150);
    assert_eq!(u(&v, &["deliveries", "expected"]), 150 * 30);
    assert_eq!(v["config"]["subscribers_per_channel"], 30);
    assert_eq!(v["config"]["subscriptions_per_connection"], 1);
    assert_eq!(v["config"]["publisher"], "redis");
}

#[test]
fn a_dropped_event_is_reported_missing() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    let mut args = SMALL_FANOUT.to_vec();
    // Events 7 and 20 are scheduled (and owed to their 30 subscribers each) but never
    // published: exactly 60 deliveries must be missing, and the run must fail.
    args.extend(["--drop-event", "7,20"]);
    let (out, v) = loadtest(&gw, &redis, "drop", &args);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["passed"], false);
    assert_eq!(u(&v, &["deliveries", "events_dropped_by_hook"]), 2);
    assert_eq!(u(&v, &["deliveries", "deliveries_dropped_by_hook"]), 60);
    assert_eq!(u(&v, &["deliveries", "missing"]), 60);
    assert_eq!(u(&v, &["deliveries", "duplicated"]), 0);
    assert_eq!(u(&v, &["deliveries", "out_of_order"]), 0);
    assert_eq!(
        u(&v, &["deliveries", "received"]),
        u(&v, &["deliveries", "expected"]) - 60
    );
    let reasons = v["failure_reasons"].to_string();
    assert!(reasons.contains("60 deliveries missing"), "{reasons}");
}

#[test]
fn a_duplicated_event_is_reported_duplicated() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    let mut args = SMALL_FANOUT.to_vec();
    // Event 5 is published twice: each of its 30 subscribers must count exactly
    // one duplicate, nothing may be missing, and the run must fail.
    args.extend(["--duplicate-event", "5"]);
    let (out, v) = loadtest(&gw, &redis, "dup", &args);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(u(&v, &["deliveries", "duplicated"]), 30);
    assert_eq!(u(&v, &["deliveries", "missing"]), 0);
    assert_eq!(u(&v, &["deliveries", "out_of_order"]), 0);
    assert_eq!(
        u(&v, &["deliveries", "received"]),
        u(&v, &["deliveries", "expected"]) + 30
    );
    let reasons = v["failure_reasons"].to_string();
    assert!(reasons.contains("30 deliveries duplicated"), "{reasons}");
    // The engine's own cost is reported next to the gateway's.
    assert!(v["client"]["engine_cpu_seconds_per_million_deliveries"].is_number());
    assert!(v["gateway"]["cpu_seconds_per_million_deliveries"].is_number());
    assert!(v["histograms"]["latency_us"].is_string());
}

#[test]
fn compressed_deliveries_are_inflated_accounted_and_smaller_on_the_wire() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    let (out, plain) = loadtest(&gw, &redis, "plain", SMALL_FANOUT);
    assert_eq!(out.status.code(), Some(0));
    assert_clean(&plain, 300);
    let mut args = SMALL_FANOUT.to_vec();
    args.push("--compression");
    let (out, comp) = loadtest(&gw, &redis, "deflate", &args);
    assert_eq!(out.status.code(), Some(0));
    assert_clean(&comp, 300);
    assert_eq!(plain["config"]["compression"], false);
    assert_eq!(comp["config"]["compression"], true);
    // Every delivery came compressed (the gateway's default is --compression on),
    // and none did without the offer.
    assert_eq!(u(&plain, &["deliveries", "compressed"]), 0);
    assert_eq!(
        u(&comp, &["deliveries", "compressed"]),
        u(&comp, &["deliveries", "received"])
    );
    let wire = |v: &Value| {
        v["deliveries"]["wire_bytes_per_delivery"]
            .as_f64()
            .expect("wire bytes per delivery")
    };
    // The same events (sizes differ only in their numbers): chat-like words
    // compress, so the compressed frames are smaller.
    assert!(wire(&plain) > 200.0, "{}", wire(&plain));
    assert!(
        wire(&comp) < wire(&plain),
        "{} vs {}",
        wire(&comp),
        wire(&plain)
    );
}

#[test]
fn admin_publisher_chat_and_reconnect_storm() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    let admin = gw.admin.to_string();

    // Through the admin route, on live channels.
    let (out, v) = loadtest(
        &gw,
        &redis,
        "admin",
        &[
            "--scenario",
            "broadcast",
            "--connections",
            "200",
            "--rate",
            "10",
            "--duration-s",
            "2",
            "--publisher",
            "admin",
            "--admin",
            &admin,
            "--admin-token",
            ADMIN,
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_clean(&v, 200);
    assert_eq!(u(&v, &["deliveries", "expected"]), 20 * 200);

    // The chat mix: server trees, DMs, typing (whose events are not accounted).
    let (out, v) = loadtest(
        &gw,
        &redis,
        "chat",
        &[
            "--scenario",
            "chat",
            "--connections",
            "300",
            "--servers",
            "20",
            "--rate",
            "40",
            "--duration-s",
            "3",
            "--typing-per-sec",
            "20",
            "--ping-interval-ms",
            "500",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_clean(&v, 300);
    assert!(u(&v, &["connections", "typing_sent"]) > 0);
    assert!(u(&v, &["connections", "pongs_received"]) > 0);

    // Connect, then everyone reconnects at once, then deliveries are checked.
    let (out, v) = loadtest(
        &gw,
        &redis,
        "storm",
        &[
            "--scenario",
            "connect-storm",
            "--connections",
            "300",
            "--connect-concurrency",
            "300",
            "--rate",
            "20",
            "--duration-s",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_clean(&v, 300);
    assert_eq!(v["connections"]["reconnects"][0]["established"], 300);
}

#[test]
fn ramp_reports_steps() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    // A generous bound and few short steps: the ramp must record each step and a
    // saturation figure; no timing is asserted.
    let (out, v) = loadtest(
        &gw,
        &redis,
        "ramp",
        &[
            "--scenario",
            "fanout",
            "--connections",
            "100",
            "--channels",
            "10",
            "--ramp",
            "--ramp-start-rate",
            "20",
            "--ramp-factor",
            "2",
            "--ramp-step-s",
            "1",
            "--ramp-max-steps",
            "2",
            "--ramp-p99-ms",
            "60000",
            "--ramp-min-achieved",
            "0.1",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", v["failure_reasons"]);
    let steps = v["ramp"].as_array().expect("ramp steps");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["rate_events_per_sec"], 20.0);
    assert_eq!(steps[1]["rate_events_per_sec"], 40.0);
    assert!(steps.iter().all(|s| s["ok"] == true && s["missing"] == 0));
    assert!(v["saturation_deliveries_per_sec"].is_number());
    assert_eq!(u(&v, &["deliveries", "missing"]), 0);
}

/// Issue 6's end-to-end check: a short real run's result feeds `xcord-tune
/// capacity`, whose limits follow from the measured figures by its stated formulas.
#[test]
fn a_real_result_feeds_xcord_tune_capacity() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    let (out, v) = loadtest(&gw, &redis, "tune", SMALL_FANOUT);
    assert_eq!(out.status.code(), Some(0));
    assert_clean(&v, 300);
    let path = scratch("tune").join("result.json");
    let tuned = Command::new(tune_binary())
        .args([
            "capacity",
            "--from",
            &path.display().to_string(),
            "--host-cores",
            "2",
            "--host-mem",
            "24",
            "--target-connections",
            "100000",
            "--target-events-per-sec",
            "500",
            "--json",
        ])
        .output()
        .expect("run xcord-tune");
    let stdout = String::from_utf8_lossy(&tuned.stdout);
    assert_eq!(
        tuned.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&tuned.stderr)
    );
    let j: Value = serde_json::from_str(&stdout).expect("capacity --json");
    let f = |x: &Value| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}"));
    // the marginal slope (second half of the connect phase) when it is usable
    let measured_bytes = v["gateway"]["rss_bytes_per_connection_marginal"]
        .as_f64()
        .filter(|b| *b > 0.0)
        .unwrap_or_else(|| f(&v["gateway"]["rss_bytes_per_connection"]));
    // bytes per connection = the measured RSS slope + 4 KiB of kernel socket memory
    // (within a rounding ulp or two: the tool sums in another order)
    let want_bytes = measured_bytes + 4096.0;
    let got_bytes = f(&j["limits"]["bytes_per_connection"]);
    assert!(
        (got_bytes - want_bytes).abs() < 1e-9 * want_bytes,
        "bytes per connection {got_bytes} vs {want_bytes}"
    );
    let cpu = f(&v["gateway"]["cpu_seconds_per_million_deliveries"]);
    // deliveries/s by CPU = cores x 70% x 10^6 / measured CPU-s per million
    let want = 2.0 * 0.7 * 1e6 / cpu;
    assert!((f(&j["limits"]["deliveries_per_sec_by_cpu"]) - want).abs() < 1e-6 * want);
    assert_eq!(j["complete"], true);
    assert!(f(&j["target"]["hosts"]) >= 1.0);
    assert!(j["target"]["binding"].is_string());
}
