//! A fleet of load testers against one real gateway and Redis: the same
//! scenario run by one process, then by two `--shard` processes meeting at the
//! Redis barrier (and by a `--publish-only` process with two `--connect-only`
//! shards), merged with `xcord-loadtest merge`, must account exactly like the
//! single run: the same deliveries expected and received, nothing missing,
//! duplicated or out of order, every connection once; the merged result feeds
//! `xcord-tune capacity`. Also: the parser accepts remote targets (without
//! connecting anywhere).

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

const SCENARIO: &[&str] = &[
    "--scenario",
    "fanout",
    "--connections",
    "200",
    "--channels",
    "10",
    "--rate",
    "40",
    "--duration-s",
    "3",
    "--drain-grace-s",
    "5",
    "--source-addrs",
    "2",
];

fn args(base: &[String], extra: &[&str], out: &std::path::Path) -> Vec<String> {
    let mut a = base.to_vec();
    a.extend(SCENARIO.iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(["--out".to_string(), out.display().to_string()]);
    a
}

fn merge(dir: &std::path::Path, inputs: &[&str], out: &str) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xcord-loadtest"));
    cmd.arg("merge");
    for i in inputs {
        cmd.arg(dir.join(i));
    }
    cmd.arg("--out").arg(dir.join(out));
    cmd.arg("--report").arg(dir.join(format!("{out}.html")));
    let o = cmd.output().expect("run merge");
    println!(
        "--- merge ---\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "merge must pass");
    read_json(&dir.join(out))
}

fn accounting(v: &Value) -> [u64; 6] {
    let d = &v["deliveries"];
    let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("{k}: {d}"));
    [
        n("expected"),
        n("received"),
        n("missing"),
        n("duplicated"),
        n("out_of_order"),
        v["connections"]["established"].as_u64().unwrap_or(0),
    ]
}

#[test]
fn two_shards_merged_account_like_one_run() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    let dir = scratch("fleet");
    let base = base_args(&gw, &redis);

    let single = dir.join("single.json");
    let c = spawn_loadtest(&args(&base, &["--run-id", "101"], &single), &dir, "single");
    assert_eq!(finish(c, &dir, "single"), Some(0));
    let one = read_json(&single);

    // Two shards of the same plan; shard 0 publishes at the barrier.
    let (a, b) = (dir.join("s0.json"), dir.join("s1.json"));
    let c0 = spawn_loadtest(
        &args(&base, &["--run-id", "102", "--shard", "0/2"], &a),
        &dir,
        "s0",
    );
    let c1 = spawn_loadtest(
        &args(&base, &["--run-id", "102", "--shard", "1/2"], &b),
        &dir,
        "s1",
    );
    assert_eq!(finish(c0, &dir, "s0"), Some(0));
    assert_eq!(finish(c1, &dir, "s1"), Some(0));
    let (r0, r1) = (read_json(&a), read_json(&b));
    assert_eq!(r0["fleet"]["role"], "connect+publish");
    assert_eq!(r1["fleet"]["role"], "connect");
    assert_eq!(
        r0["connections"]["established"].as_u64().unwrap_or(0)
            + r1["connections"]["established"].as_u64().unwrap_or(0),
        200
    );
    let m = merge(&dir, &["s0.json", "s1.json"], "merged.json");
    assert_eq!(m["passed"], true, "{}", m["failure_reasons"]);
    assert_eq!(accounting(&m), accounting(&one));
    assert_eq!(accounting(&m), [120 * 20, 120 * 20, 0, 0, 0, 200]);
    assert_eq!(m["latency_ms"]["count"], 120 * 20);
    assert_eq!(m["fleet"]["role"], "merged");

    // The merged result is what xcord-tune reads.
    let tuned = Command::new(tune_binary())
        .args(["capacity", "--from"])
        .arg(dir.join("merged.json"))
        .args([
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
    assert_eq!(
        tuned.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&tuned.stdout),
        String::from_utf8_lossy(&tuned.stderr)
    );
}

#[test]
fn a_publish_only_process_and_two_connect_only_shards() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    let dir = scratch("fleet-pub");
    let base = base_args(&gw, &redis);
    let names = ["p", "c0", "c1"];
    let extra: [&[&str]; 3] = [
        &["--run-id", "103", "--publish-only", "--shard", "0/2"],
        &["--run-id", "103", "--connect-only", "--shard", "0/2"],
        &["--run-id", "103", "--connect-only", "--shard", "1/2"],
    ];
    let children: Vec<_> = names
        .iter()
        .zip(extra)
        .map(|(n, e)| {
            let out = dir.join(format!("{n}.json"));
            spawn_loadtest(&args(&base, e, &out), &dir, n)
        })
        .collect();
    for (c, n) in children.into_iter().zip(names) {
        assert_eq!(finish(c, &dir, n), Some(0), "{n}");
    }
    let m = merge(&dir, &["p.json", "c0.json", "c1.json"], "merged.json");
    assert_eq!(accounting(&m), [120 * 20, 120 * 20, 0, 0, 0, 200]);
    assert_eq!(m["deliveries"]["events_published"], 120);
}

#[test]
fn the_parser_accepts_remote_targets_without_connecting() {
    // --print-config resolves the flags and exits: nothing is contacted.
    for gw in ["ws://192.0.2.10:8080", "wss://192.0.2.10:8443/edge/ws"] {
        let o = Command::new(env!("CARGO_BIN_EXE_xcord-loadtest"))
            .args([
                "--gateway",
                gw,
                "--redis",
                "rediss://default:pw@192.0.2.11:6380/0",
                "--jwt-secret",
                "not-printed",
                "--source-ips",
                "192.0.2.50,192.0.2.51",
                "--print-config",
            ])
            .output()
            .expect("run");
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("192.0.2.10"), "{out}");
        assert!(
            !out.contains("not-printed") && !out.contains(":pw@"),
            "{out}"
        );
    }
}
