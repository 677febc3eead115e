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

/// The gateway binary (a test may point this elsewhere to check itself).
fn gateway_bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_xcord-gateway").into()
}

/// The one clear line SPEC §2 asks of a refused value: exit code 2, no panic,
/// exactly one `error: …` line naming what was wrong, and nothing else on stderr
/// but clap's fixed pointer to `--help`.
fn assert_refused_with_one_line(out: &std::process::Output, what: &str, names: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit {:?}\n{err}",
        out.status
    );
    assert!(
        !err.contains("panicked"),
        "{what}: a panic is not a refusal\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: want exactly one `error:` line\n{err}"
    );
    assert!(
        errors[0].contains(names),
        "{what}: the error line does not name {names}\n{err}"
    );
    for l in &lines {
        assert!(
            l.starts_with("error: ") || *l == "For more information, try '--help'.",
            "{what}: unexpected stderr line {l:?}\n{err}"
        );
    }
}

#[test]
fn bad_values_are_refused_at_start_with_one_line() {
    for (bad, names) in [
        (vec!["--jwt-secret", "s", "--shards", "abc"], "--shards"),
        (
            vec!["--jwt-secret", "s", "--redis", "notaurl://x"],
            "--redis",
        ),
        (
            vec!["--jwt-secret", "s", "--rate-limit", "lots"],
            "--rate-limit",
        ),
        // `=`: the value reaches the flag's parser (a bare `-1` reads as a flag)
        (
            vec!["--jwt-secret", "s", "--send-queue-bytes=-1"],
            "--send-queue-bytes",
        ),
        (
            vec!["--jwt-secret", "s", "--trusted-proxies", "10.0.0.0/99"],
            "--trusted-proxies",
        ),
        (vec![], "--jwt-secret"), // no JWT key at all
    ] {
        let out = std::process::Command::new(gateway_bin())
            .args(args(&bad))
            .output()
            .unwrap();
        assert_refused_with_one_line(&out, &format!("{bad:?}"), names);
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
    assert!(has_sample(
        &gw.admin_get("/metrics").1,
        "xcord_connections{shard=\"2\"}"
    ));
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
        // a sample line, not the `# HELP`/`# TYPE` lines that name it too
        assert!(has_sample(&body, name), "no sample of {name} in\n{body}");
    }
    assert_eq!(gw.metric_exact("xcord_connections{"), 1.0);
    assert_eq!(
        gw.metric_exact("xcord_subscriptions{"),
        1.0,
        "the automatic user tree"
    );
    assert_eq!(gw.metric_exact("xcord_commands_total{type=\"HELLO\"}"), 1.0);
}

#[test]
fn latency_histogram_counts_deliveries() {
    const COUNT: &str = "xcord_delivery_latency_seconds_count";
    const N: usize = 10;
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("lat", &[], &[]));
    // The one delivery this node makes besides ours: the session's own
    // `user.presence` online. Let it arrive and be counted, then count only ours.
    c.skip_presence = false;
    assert_eq!(c.expect_event()["payload"]["event"], "user.presence");
    c.skip_presence = true;
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_exact(COUNT)
        >= 1.0));
    let before = gw.metric_exact(COUNT);
    for i in 0..N {
        assert_eq!(gw.publish("user:lat", "e", json!({"i": i})), 202);
        assert_eq!(c.expect_event()["payload"]["payload"]["i"], i);
    }
    let grew = eventually(Duration::from_secs(5), || {
        gw.metric_exact(COUNT) >= before + N as f64
    });
    assert!(
        grew,
        "{N} deliveries, histogram count {before} -> {}",
        gw.metric_exact(COUNT)
    );
    assert_eq!(
        gw.metric_exact("xcord_delivery_latency_seconds_bucket{le=\"+Inf\"}"),
        gw.metric_exact(COUNT)
    );
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
    const N: usize = 20;
    let window = Duration::from_secs(2);
    let clients: Vec<Client> = (0..N)
        .map(|i| Client::hello(&gw, &token(&format!("d{i}"), &[], &[])).0)
        .collect();
    let start = Instant::now();
    gw.signal(libc::SIGTERM);
    // Each client waits for its own close, so each arrival is timed as it comes.
    let waiters: Vec<_> = clients
        .into_iter()
        .map(|mut c| std::thread::spawn(move || (c.expect_close(), Instant::now())))
        .collect();
    assert!(eventually(Duration::from_secs(2), || gw
        .admin_get("/readyz")
        .0
        == 503));
    let closes: Vec<(Option<u16>, Instant)> =
        waiters.into_iter().map(|w| w.join().unwrap()).collect();
    for (code, _) in &closes {
        assert_eq!(*code, Some(4011));
    }
    // The feature is a delay: the closes are spread over the window, not sent at
    // once. Evenly spread, 90% come after its first tenth; at once, none do.
    let late = closes
        .iter()
        .filter(|(_, t)| t.duration_since(start) >= window / 10)
        .count();
    assert!(
        late >= N / 2,
        "only {late} of {N} closes came after the first tenth of the drain window"
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
    assert_eq!(gw.metric_exact("xcord_redis_up"), 0.0);
    c.send(json!({"type": "PING", "payload": {}}));
    c.expect("PONG");
    // A publish the bus cannot take is refused and counted.
    let failed = "xcord_events_dropped_total{reason=\"publish_failed\"}";
    let before = gw.metric_exact(failed);
    assert_eq!(gw.publish("live:r", "lost", json!({})), 503);
    assert!(gw.metric_exact(failed) >= before + 1.0);
    let redis = Redis::start_on(port);
    assert!(eventually(Duration::from_secs(15), || gw
        .admin_get("/readyz")
        .0
        == 200));
    assert_eq!(gw.metric_exact("xcord_redis_up"), 1.0);
    assert!(gw.metric_exact("xcord_redis_reconnects_total") >= 1.0);
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
