//! End to end: `xcord-tune capacity` fed an `xcord-loadtest` result file (the
//! fixtures follow loadtest/RESULT_SCHEMA.md), checked on the numbers it computes;
//! and the same on a real result when `XCORD_LOADTEST_RESULT` names one.

mod common;
use common::*;

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

#[test]
fn fixture_result_gives_the_expected_plan() {
    let r = tune(&[
        "capacity",
        "--from",
        &fixture_str("result-fanout.json"),
        "--target-connections",
        "2000000",
        "--target-events-per-sec",
        "5000",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["complete"], true);
    assert_eq!(j["host"]["cores"], 2);
    assert_eq!(j["host"]["shards"], 2);
    assert_eq!(j["host"]["nofile"], 1_048_576);
    let l = &j["limits"];
    // (24 GiB × 0.75 − 12,000,000 − 2 × 8 MiB) / (4,000 + 4,096)
    assert_eq!(l["connections_by_memory"], 2_383_717);
    // 1,048,576 − 64 − 8 × 2
    assert_eq!(l["connections_by_fds"], 1_048_496);
    // 2 cores × 0.7 × 10^6 / 10 CPU-s per million
    assert_eq!(num(&l["deliveries_per_sec_by_cpu"]), 140_000.0);
    assert_eq!(num(&l["bytes_per_connection"]), 8_096.0);
    let t = &j["target"];
    // 5,000 events/s × 100 subscribers per channel
    assert_eq!(num(&t["deliveries_per_sec"]), 500_000.0);
    assert_eq!(t["hosts"], 4, "ceil(500,000 / 140,000)");
    assert_eq!(t["binding"], "cpu");
    assert_eq!(t["hosts_with_spare"], 5);
    let usage = t["usage"].as_array().expect("usage");
    let hosts: Vec<(String, u64)> = usage
        .iter()
        .map(|u| {
            (
                u["resource"].as_str().unwrap_or_default().to_string(),
                u["hosts"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        hosts,
        vec![("memory".into(), 1), ("fds".into(), 2), ("cpu".into(), 4)]
    );
    // At 4 hosts: 125,000 of 140,000 deliveries/s per host.
    let cpu = &usage[2];
    assert!((num(&cpu["utilisation"]) - 0.892_857_142_857).abs() < 1e-9);
    assert!((num(&cpu["headroom"]) - 0.107_142_857_143).abs() < 1e-9);

    // The text report shows the same numbers with the arithmetic.
    let r = tune(&[
        "capacity",
        "--from",
        &fixture_str("result-fanout.json"),
        "--target-connections",
        "2000000",
        "--target-events-per-sec",
        "5000",
    ]);
    assert_eq!(r.code, 0);
    let t = &r.stdout;
    for want in [
        "limit           = (19,327,352,832 - 28,777,216) / 8,096.0 = 2,383,717 connections",
        "limit           = 1,048,576 nofile - 64 - 8 x 2 shards = 1,048,496 connections",
        "limit           = 2 cores x 0.7 x 10^6 / 10.000 = 140,000 deliveries/s",
        "hosts by cpu    = ceil(500,000 / 140,000 deliveries/s) = 4",
        "hosts needed: 4 (bound by cpu); 5 to survive losing one",
        "at 4 hosts each carries 500,000 connections and 125,000 deliveries/s",
        "Assumptions",
    ] {
        assert!(t.contains(want), "missing `{want}` in:\n{t}");
    }
}

#[test]
fn host_capacity_without_a_target() {
    let j = tune(&[
        "capacity",
        "--from",
        &fixture_str("result-fanout.json"),
        "--json",
    ])
    .json();
    // The test's traffic: 20,000 deliveries/s over 10,000 connections = 2 each;
    // 140,000 / 2 = 70,000 connections: CPU binds first.
    assert_eq!(num(&j["limits"]["deliveries_per_sec_per_connection"]), 2.0);
    assert_eq!(j["limits"]["connections_by_cpu"], 70_000);
    assert_eq!(j["host_capacity"]["connections"], 70_000);
    assert_eq!(j["host_capacity"]["binding"], "cpu");
    assert!(j["target"].is_null());
}

#[test]
fn planning_for_another_host() {
    let j = tune(&[
        "capacity",
        "--from",
        &fixture_str("result-fanout.json"),
        "--host-cores",
        "16",
        "--host-mem",
        "64",
        "--nofile",
        "1310720",
        "--target-connections",
        "3000000",
        "--json",
    ])
    .json();
    assert_eq!(j["host"]["shards"], 15);
    // (64 GiB × 0.75 − 12,000,000 − 15 × 8 MiB) / 8,096
    assert_eq!(j["limits"]["connections_by_memory"], 6_349_033);
    // 1,310,720 − 64 − 120
    assert_eq!(j["limits"]["connections_by_fds"], 1_310_536);
    // 16 × 0.7 × 10^6 / 10
    assert!((num(&j["limits"]["deliveries_per_sec_by_cpu"]) - 1_120_000.0).abs() < 1e-6);
    // No event rate: the test's 2 deliveries/s per connection → 6,000,000 deliveries/s;
    // ceil(6,000,000 / 1,120,000) = 6 hosts; fds need ceil(3,000,000 / 1,310,536) = 3.
    assert_eq!(j["target"]["hosts"], 6);
    assert_eq!(j["target"]["binding"], "cpu");
}

#[test]
fn derived_fields_and_warnings_from_a_ramp_result() {
    let r = tune(&[
        "capacity",
        "--from",
        &fixture_str("result-ramp-derived.json"),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    // RSS per connection (30,000,000 − 10,000,000) / 4,000 = 5,000; + 4,096 kernel.
    assert_eq!(num(&j["limits"]["bytes_per_connection"]), 9_096.0);
    // (8 GiB × 0.75 − 10,000,000 − 3 × 8 MiB) / 9,096 = 704,406.9
    assert_eq!(j["limits"]["connections_by_memory"], 704_406);
    // Cost 4 CPU-s / 799,990 deliveries × 10^6 = 5.0000625; 4 × 0.7 × 10^6 / that = 559,993
    assert!((num(&j["limits"]["deliveries_per_sec_by_cpu"]) - 559_993.0).abs() < 1e-3);
    let w = j["warnings"].to_string();
    assert!(w.contains("not clean"), "{w}");
    assert!(w.contains("Only 4,000 of 5,000"), "{w}");
    let text = tune(&[
        "capacity",
        "--from",
        &fixture_str("result-ramp-derived.json"),
    ])
    .stdout;
    assert!(text.contains("cross-check"), "{text}");
}

#[test]
fn missing_gateway_measurements_are_stated_not_a_panic() {
    let r = tune(&[
        "capacity",
        "--from",
        &fixture_str("result-no-gateway.json"),
        "--target-connections",
        "100000",
    ]);
    assert_eq!(r.code, 1, "incomplete plan exits 1");
    assert!(
        r.stdout.contains("Not computed (incomplete plan)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("pass --bytes-per-connection"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("hosts needed: at least 1"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("--gateway-pid"), "{}", r.stdout);
    // Stated figures complete it, with the base RSS assumption written down.
    let r = tune(&[
        "capacity",
        "--from",
        &fixture_str("result-no-gateway.json"),
        "--bytes-per-connection",
        "4000",
        "--cpu-seconds-per-million",
        "10",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    // (24 GiB × 0.75 − 64 MiB − 2 × 8 MiB) / 8,096
    assert_eq!(j["limits"]["connections_by_memory"], 2_376_910);
    assert!(j["assumptions"]
        .to_string()
        .contains("Base RSS not measured"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = scratch("badresult");
    let cases = [
        ("notjson.json", "{ this is not json", "not valid JSON"),
        ("array.json", "[]", "not a JSON object"),
        (
            "schema.json",
            r#"{"schema":"xcord-loadtest/9"}"#,
            "xcord-loadtest/9",
        ),
        (
            "type.json",
            r#"{"schema":"xcord-loadtest/1","host":{"cores":2,"mem_bytes":"lots"}}"#,
            "host.mem_bytes",
        ),
        (
            "nohost.json",
            r#"{"schema":"xcord-loadtest/1","host":null}"#,
            "host cores unknown",
        ),
    ];
    for (name, text, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        let r = tune(&["capacity", "--from", &p.display().to_string()]);
        assert_eq!(r.code, 2, "{name}: {}", r.stdout);
        assert!(r.stderr.contains(want), "{name}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{name}: {}", r.stderr);
    }
    let r = tune(&["capacity", "--from", "/nonexistent/result.json"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot read"), "{}", r.stderr);
    let r = tune(&[
        "capacity",
        "--from",
        &fixture_str("result-fanout.json"),
        "--cpu-target",
        "1.5",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--cpu-target"), "{}", r.stderr);
}

/// A real `xcord-loadtest --out result.json` run, when one is at hand:
/// `XCORD_LOADTEST_RESULT=/path/result.json cargo test -p xcord-tune -- --ignored`.
/// Checks that capacity reads it and that its limits follow from its own fields.
#[test]
#[ignore = "needs XCORD_LOADTEST_RESULT=path to a real xcord-loadtest result"]
fn real_loadtest_result_feeds_capacity() {
    let Ok(path) = std::env::var("XCORD_LOADTEST_RESULT") else {
        panic!("set XCORD_LOADTEST_RESULT to an xcord-loadtest result file");
    };
    let text = std::fs::read_to_string(&path).expect("read the result");
    let raw: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let r = tune(&["capacity", "--from", &path, "--json"]);
    assert!(r.code == 0 || r.code == 1, "{}", r.stderr);
    let j = r.json();
    let cores = num(&raw["host"]["cores"]);
    let shards = num(&j["host"]["shards"]);
    assert_eq!(
        num(&j["limits"]["connections_by_fds"]),
        1_048_576.0 - 64.0 - 8.0 * shards
    );
    if let Some(c) = raw["gateway"]["cpu_seconds_per_million_deliveries"].as_f64() {
        let want = cores * 0.7 * 1e6 / c;
        assert!((num(&j["limits"]["deliveries_per_sec_by_cpu"]) - want).abs() < 1e-6 * want);
    }
    if let Some(b) = raw["gateway"]["rss_bytes_per_connection_marginal"]
        .as_f64()
        .filter(|b| *b > 0.0)
        .or(raw["gateway"]["rss_bytes_per_connection"].as_f64())
    {
        // within an ulp or two: JSON float text does not always round-trip exactly
        let got = num(&j["limits"]["bytes_per_connection"]);
        assert!(
            (got - (b + 4096.0)).abs() < 1e-9 * (b + 4096.0),
            "{got} vs {b} + 4096"
        );
    }
}
