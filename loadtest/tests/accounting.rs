//! End-to-end check of the load tester's accounting against a real gateway and a
//! real Redis: small scenarios (a few hundred connections, a few seconds) must pass
//! with nothing missing, duplicated or out of order, and a deliberately dropped event
//! must be reported missing, exactly, with exit code 1. Timings are never asserted.
//!
//! The gateway binary is built first with `cargo build -p xcord-gateway` (instant
//! when `cargo test --workspace` has built it already). Every process a test starts
//! is killed by PID when its handle drops. Tests run one at a time (a lock), so that
//! they do not compete for the machine's two cores.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

const SECRET: &str = "loadtest-secret";
const ADMIN: &str = "loadtest-admin";

fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The newest modification time under `dir` (recursively).
fn newest(dir: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(dir).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// The gateway binary, in the profile of this test. `cargo test --workspace` has
/// built it already (the gateway's own integration tests need it), so when it is
/// newer than the gateway's sources it is used as it is: rebuilding it alone would
/// change its feature set and make the next workspace build redo it. Otherwise
/// (e.g. `cargo test -p xcord-loadtest` on a fresh tree) it is built here, once.
fn gateway_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("xcord-gateway", "xcord-gateway", "src"))
        .clone()
}

fn tune_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("xcord-tune", "xcord-tune", "tuning/src"))
        .clone()
}

/// A binary of another workspace package, built into this test's target dir when
/// it is missing or older than its sources (instant under `cargo test --workspace`).
fn workspace_binary(package: &str, bin_name: &str, src: &str) -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_xcord-loadtest"));
    let profile_dir = me.parent().expect("binary directory").to_path_buf();
    let target_dir = profile_dir
        .parent()
        .expect("target directory")
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let bin = profile_dir.join(bin_name);
    let sources = [
        newest(&workspace.join(src)),
        newest(&workspace.join("Cargo.toml")),
        newest(&workspace.join("Cargo.lock")),
    ]
    .into_iter()
    .flatten()
    .max();
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if let (Some(b), Some(s)) = (built, sources) {
        if b >= s {
            return bin;
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("-p")
        .arg(package)
        .arg("--bin")
        .arg(bin_name)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("run cargo build");
    assert!(st.success(), "cargo build -p {package} failed");
    assert!(bin.exists(), "no binary at {}", bin.display());
    bin
}

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return r;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Gateway {
    fn start(redis: &Redis) -> Gateway {
        let mut child = Command::new(gateway_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--jwt-secret",
                SECRET,
                "--admin-token",
                ADMIN,
                "--shards",
                "1",
                "--redis",
                &redis.url(),
            ])
            .env("XCORD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the gateway");
        let stderr = child.stderr.take().expect("gateway stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep reading stderr for the gateway's whole life (a full pipe would block it).
        std::thread::spawn(move || {
            let mut admin: Option<SocketAddr> = None;
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sent {
                    continue;
                }
                let after = |key: &str| -> Option<SocketAddr> {
                    let i = line.find(key)?;
                    line[i + key.len()..]
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                };
                if let Some(a) = after("admin listening on ") {
                    admin = Some(a);
                } else if let (Some(a), Some(ad)) = (after("listening on "), admin) {
                    let _ = tx.send((a, ad));
                    sent = true;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((addr, admin)) => Gateway { child, addr, admin },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway did not log its listening addresses");
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xcord-loadtest-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Run the load tester with `extra` flags; returns its output and the parsed result.
fn loadtest(gw: &Gateway, redis: &Redis, name: &str, extra: &[&str]) -> (Output, Value) {
    let dir = scratch(name);
    let out = dir.join("result.json");
    let report = dir.join("report.svg");
    let _ = std::fs::remove_file(&out);
    let mut args: Vec<String> = vec![
        "--gateway".into(),
        gw.addr.to_string(),
        "--redis".into(),
        redis.url(),
        "--jwt-secret".into(),
        SECRET.into(),
        "--gateway-pid".into(),
        gw.child.id().to_string(),
        "--gateway-shards".into(),
        "1".into(),
        "--out".into(),
        out.display().to_string(),
        "--report".into(),
        report.display().to_string(),
        "--progress-interval-s".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = Command::new(env!("CARGO_BIN_EXE_xcord-loadtest"))
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run xcord-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- {name} stdout ---\n{stdout}\n--- {name} stderr ---\n{stderr}");
    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("no result file {}: {e}", out.display()));
    let v: Value = serde_json::from_str(&text).expect("result JSON");
    let svg = std::fs::read_to_string(&report).expect("report written");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    (output, v)
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{} is not a number: {x}", path.join(".")))
}

fn assert_clean(v: &Value, conns: u64) {
    assert_eq!(v["schema"], "xcord-loadtest/1");
    assert_eq!(
        v["passed"], true,
        "failure reasons: {}",
        v["failure_reasons"]
    );
    assert_eq!(u(v, &["connections", "established"]), conns);
    assert_eq!(u(v, &["connections", "failed"]), 0);
    let expected = u(v, &["deliveries", "expected"]);
    assert!(expected > 0);
    assert_eq!(u(v, &["deliveries", "missing"]), 0);
    assert_eq!(u(v, &["deliveries", "duplicated"]), 0);
    assert_eq!(u(v, &["deliveries", "out_of_order"]), 0);
    assert_eq!(u(v, &["deliveries", "unexpected"]), 0);
    assert_eq!(u(v, &["deliveries", "received"]), expected);
    assert!(v["command"]
        .as_str()
        .is_some_and(|c| c.contains("xcord-loadtest")));
    assert!(v["latency_ms"]["p99"].is_number());
    assert!(v["gateway"]["rss_bytes_after_connect"].is_number());
}

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
