//! `xcord-loadtest compare` end to end: it starts its own redis-server, the floor
//! and the gateway, runs one small fan-out against each, and must report every
//! compared figure for both with its ratio, each run accounted clean. Timings and
//! the ratios' values are never asserted, only that they are measured.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

#[test]
fn compare_runs_floor_and_gateway_and_reports_ratios() {
    let _g = serial();
    let gateway = gateway_binary();
    let floor = workspace_binary("xcord-floor", "xcord-floor", "floor/src");
    let out = std::env::temp_dir().join(format!("xcord-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_xcord-loadtest"))
        .arg("compare")
        .arg("--gateway-bin")
        .arg(&gateway)
        .arg("--floor-bin")
        .arg(&floor)
        .arg("--out-dir")
        .arg(&out)
        .args(["--", "--scenario", "fanout", "--connections", "200"])
        .args(["--channels", "10", "--rate", "50", "--duration-s", "2"])
        .args(["--drain-grace-s", "5", "--connect-concurrency", "64"])
        .output()
        .expect("run xcord-loadtest compare");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for side in ["floor-1.json", "gateway-1.json"] {
        let text = std::fs::read_to_string(out.join(side)).expect("a run's result");
        let v: Value = serde_json::from_str(&text).expect("JSON result");
        assert_clean(&v, 200);
        // 100 events x 20 subscribers each.
        assert_eq!(v["deliveries"]["expected"], 100 * 20, "{side}");
        assert!(
            v["gateway"]["cpu_seconds_per_million_deliveries"]
                .as_f64()
                .is_some(),
            "{side}: the server's CPU was not measured"
        );
    }
    let md = std::fs::read_to_string(out.join("compare.md")).expect("compare.md");
    assert_eq!(md, stdout, "compare.md is what was printed");
    let row = md
        .lines()
        .find(|l| l.starts_with("| pair 1 server CPU-s per 10^6 deliveries"))
        .expect("the CPU row");
    assert!(row.contains('×'), "no ratio in {row}");
    let _ = std::fs::remove_dir_all(&out);
}
