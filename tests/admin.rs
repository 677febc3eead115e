//! SPEC §2 configuration errors and §7 operations: health, readiness, metrics,
//! publish, drain, losing Redis.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn bad_values_are_refused_at_start_with_one_line() {
    for bad in [
        vec!["--jwt-secret", "s", "--shards", "abc"],
        vec!["--jwt-secret", "s", "--redis", "notaurl://x"],
        vec!["--jwt-secret", "s", "--rate-limit", "lots"],
        vec!["--jwt-secret", "s", "--send-queue-bytes", "-1"],
        vec!["--jwt-secret", "s", "--trusted-proxies", "10.0.0.0/99"],
        vec![], // no JWT key at all
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xcord-gateway"))
            .args(args(&bad))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.to_lowercase().contains("error"), "{bad:?}: {err}");
    }
}

#[test]
fn env_twins_work() {
    // A bad value through the environment is refused like the flag (and if the twin
    // were ignored, the gateway would start: the timeout turns that into a failure).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xcord-gateway"))
        .args(args(&["--jwt-secret", "s"]))
        .env("XCORD_SHARDS", "0")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.is_some_and(|s| !s.success()),
        "XCORD_SHARDS=0 must be refused like --shards 0"
    );
    // A good value through the environment is used: three shards, three gauges.
    let gw = Gateway::start_env(
        &args(&[]),
        &[
            ("XCORD_SHARDS", "3"),
            ("XCORD_JWT_SECRET", SECRET),
            ("XCORD_ADMIN_TOKEN", ADMIN),
        ],
    )
    .unwrap();
    assert!(gw
        .admin_get("/metrics")
        .1
        .contains("xcord_connections{shard=\"2\"}"));
    assert_eq!(
        gw.publish("live:x", "e", json!({})),
        202,
        "XCORD_ADMIN_TOKEN took effect"
    );
}

#[test]
fn health_ready_and_metric_names() {
    let gw = Gateway::start(&[]);
    assert_eq!(gw.admin_get("/healthz").0, 200);
    assert_eq!(gw.admin_get("/readyz").0, 200);
    let (_c, _) = Client::hello(&gw, &token("m", &[], &[]));
    let (status, body) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "xcord_connections{shard=\"0\"}",
        "xcord_connections{shard=\"1\"}",
        "xcord_connections_accepted_total",
        "xcord_connections_closed_total{code=",
        "xcord_commands_total{type=\"HELLO\"}",
        "xcord_subscriptions{shard=",
        "xcord_events_received_total",
        "xcord_events_delivered_total",
        "xcord_events_dropped_total{reason=",
        "xcord_redis_up",
        "xcord_redis_reconnects_total",
        "xcord_delivery_latency_seconds_bucket{le=",
        "xcord_delivery_latency_seconds_count",
        "xcord_delivery_latency_seconds_sum",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert_eq!(gw.metric("xcord_connections{"), 1.0);
    assert_eq!(
        gw.metric("xcord_subscriptions{"),
        1.0,
        "the automatic user tree"
    );
    assert_eq!(gw.metric("xcord_commands_total{type=\"HELLO\"}"), 1.0);
}

#[test]
fn latency_histogram_counts_deliveries() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("lat", &[], &[]));
    for i in 0..10 {
        assert_eq!(gw.publish("user:lat", "e", json!({"i": i})), 202);
        c.expect_event();
    }
    assert!(eventually(Duration::from_secs(5), || gw
        .metric("xcord_delivery_latency_seconds_count")
        >= 1.0));
}

#[test]
fn publish_route_guards() {
    let gw = Gateway::start(&[]);
    let body = json!({"channel": "live:x", "event": "e", "payload": {}}).to_string();
    assert_eq!(http(gw.admin, "POST", "/api/v1/publish", &[], &body).0, 401);
    assert_eq!(
        http(
            gw.admin,
            "POST",
            "/api/v1/publish",
            &[("Authorization", "Bearer wrong")],
            &body
        )
        .0,
        401
    );
    let auth = format!("Bearer {ADMIN}");
    assert_eq!(
        http(
            gw.admin,
            "POST",
            "/api/v1/publish",
            &[("Authorization", &auth)],
            &body
        )
        .0,
        202
    );
    // The scheme is case-insensitive (RFC 7235).
    assert_eq!(
        http(
            gw.admin,
            "POST",
            "/api/v1/publish",
            &[("Authorization", &format!("bearer {ADMIN}"))],
            &body
        )
        .0,
        202
    );
    assert_eq!(
        http(
            gw.admin,
            "POST",
            "/api/v1/publish",
            &[("Authorization", &auth)],
            "{oops"
        )
        .0,
        400
    );
    assert_eq!(
        http(
            gw.admin,
            "POST",
            "/api/v1/publish",
            &[("Authorization", &auth)],
            r#"{"channel":"","event":"e"}"#
        )
        .0,
        400
    );
    assert_eq!(
        http(
            gw.admin,
            "POST",
            "/api/v1/publish",
            &[("Authorization", &auth)],
            r#"{"channel":"live:x"}"#
        )
        .0,
        400
    );
    // without --admin-token the route is off
    let open = Gateway::start_raw(&args(&["--jwt-secret", SECRET])).unwrap();
    assert_eq!(
        http(
            open.admin,
            "POST",
            "/api/v1/publish",
            &[("Authorization", &auth)],
            &body
        )
        .0,
        403
    );
}

#[test]
fn sigterm_drains_with_4011_spread_over_the_window_then_exits_0() {
    let mut gw = Gateway::start(&["--drain-seconds", "2"]);
    let mut clients: Vec<Client> = (0..20)
        .map(|i| Client::hello(&gw, &token(&format!("d{i}"), &[], &[])).0)
        .collect();
    let start = Instant::now();
    gw.signal(libc::SIGTERM);
    assert!(eventually(Duration::from_secs(2), || gw
        .admin_get("/readyz")
        .0
        == 503));
    let mut times = vec![];
    for c in clients.iter_mut() {
        assert_eq!(c.expect_close(), Some(4011));
        times.push(start.elapsed());
    }
    let spread = times
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*times.iter().min().unwrap());
    assert!(
        spread >= Duration::from_millis(800),
        "closes were not spread: {spread:?}"
    );
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn redis_down_keeps_clients_reports_not_ready_and_recovers() {
    let mut redis = Redis::start();
    let port = redis.port;
    let gw = Gateway::start(&["--redis", &redis.url()]);
    assert!(eventually(Duration::from_secs(5), || gw
        .admin_get("/readyz")
        .0
        == 200));
    let (mut c, _) = Client::hello(&gw, &token("r", &[], &[]));
    c.subscribe(&["live:r"]);
    redis.stop();
    assert!(eventually(Duration::from_secs(5), || gw
        .admin_get("/readyz")
        .0
        == 503));
    assert_eq!(gw.metric("xcord_redis_up"), 0.0);
    c.send(json!({"type": "PING", "payload": {}}));
    c.expect("PONG");
    // A publish the bus cannot take is refused and counted.
    assert_eq!(gw.publish("live:r", "lost", json!({})), 503);
    assert!(gw.metric("xcord_events_dropped_total{reason=\"publish_failed\"}") >= 1.0);
    let redis = Redis::start_on(port);
    assert!(eventually(Duration::from_secs(15), || gw
        .admin_get("/readyz")
        .0
        == 200));
    assert_eq!(gw.metric("xcord_redis_up"), 1.0);
    assert!(gw.metric("xcord_redis_reconnects_total") >= 1.0);
    redis.publish("live:r", "back", json!({}));
    assert_eq!(c.expect_event()["payload"]["event"], "back");
}

#[test]
fn unreachable_redis_at_start_is_not_fatal() {
    let port = free_port();
    let gw = Gateway::start(&["--redis", &format!("redis://127.0.0.1:{port}/")]);
    assert_eq!(gw.admin_get("/healthz").0, 200);
    assert_eq!(gw.admin_get("/readyz").0, 503);
    let redis = Redis::start_on(port);
    assert!(eventually(Duration::from_secs(15), || gw
        .admin_get("/readyz")
        .0
        == 200));
    let (mut c, _) = Client::hello(&gw, &token("late", &[], &[]));
    redis.publish("user:late", "hi", json!({}));
    assert_eq!(c.expect_event()["payload"]["event"], "hi");
}

/// `THP_enabled` from /proc/PID/status (kernels ≥ 6.x print it; None before).
fn thp_enabled(pid: u32) -> Option<bool> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.split_whitespace().nth(1)? == "1")
}

#[test]
fn transparent_huge_pages_are_off_unless_mimalloc_allow_thp_is_set() {
    // RSS must grow linearly with connections for capacity planning (tuning/README.md).
    let gw = Gateway::start(&[]);
    let Some(on) = thp_enabled(gw.pid()) else {
        eprintln!("this kernel does not report THP_enabled; nothing to check");
        return;
    };
    assert!(!on, "THP still enabled for the gateway");
    let gw2 = Gateway::start_env(
        &args(&["--jwt-secret", "s"]),
        &[("MIMALLOC_ALLOW_THP", "1")],
    )
    .expect("starts");
    assert_eq!(
        thp_enabled(gw2.pid()),
        Some(true),
        "the operator's switch is honoured"
    );
}
