//! What the load tester's integration tests share: a real `redis-server` on a
//! free loopback port, the real gateway binary, running `xcord-loadtest` and
//! reading its result. Every process a test starts is killed by PID when its
//! handle drops; tests run one at a time (a lock), so that they do not compete
//! for the machine's two cores.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub const SECRET: &str = "loadtest-secret";
pub const ADMIN: &str = "loadtest-admin";

pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free loopback port below the ephemeral range, so that no client socket
/// takes it while a server is restarting on it.
pub fn free_low_port() -> u16 {
    for _ in 0..500 {
        let p = 20_000 + (std::process::id() as u16 % 97) * 100 + fastrand_u16() % 100;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    free_port()
}

fn fastrand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(7),
    );
    h.finish() as u16
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The newest modification time under `dir` (recursively).
pub fn newest(dir: &Path) -> Option<SystemTime> {
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
pub fn gateway_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("xcord-gateway", "xcord-gateway", "src"))
        .clone()
}

pub fn tune_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("xcord-tune", "xcord-tune", "tuning/src"))
        .clone()
}

/// A binary of another workspace package, built into this test's target dir when
/// it is missing or older than its sources (instant under `cargo test --workspace`).
pub fn workspace_binary(package: &str, bin_name: &str, src: &str) -> PathBuf {
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

pub struct Redis {
    pub child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_low_port();
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
        let mut r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = r.child.try_wait() {
                panic!("redis-server exited at start ({st}): port {port} taken?");
            }
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

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Gateway {
    pub fn start(redis: &Redis) -> Gateway {
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

pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xcord-loadtest-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Run the load tester with `extra` flags; returns its output and the parsed result.
pub fn loadtest(gw: &Gateway, redis: &Redis, name: &str, extra: &[&str]) -> (Output, Value) {
    assert_loopback(&gw.addr);
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

pub fn u(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{} is not a number: {x}", path.join(".")))
}

pub fn assert_clean(v: &Value, conns: u64) {
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

/// The loopback-only rule of this workplace lives here, in the test suite (the
/// tool itself takes any address): every target a test loads is on loopback.
pub fn assert_loopback(addr: &SocketAddr) {
    assert!(
        addr.ip().is_loopback(),
        "tests load loopback targets only, not {addr}"
    );
}

/// The flags every run against `gw` and `redis` takes.
pub fn base_args(gw: &Gateway, redis: &Redis) -> Vec<String> {
    assert_loopback(&gw.addr);
    [
        "--gateway",
        &gw.addr.to_string(),
        "--redis",
        &redis.url(),
        "--jwt-secret",
        SECRET,
        "--gateway-pid",
        &gw.child.id().to_string(),
        "--gateway-shards",
        "1",
        "--progress-interval-s",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Start `xcord-loadtest` with `args` in the background, its output in `dir`.
pub fn spawn_loadtest(args: &[String], dir: &Path, name: &str) -> Child {
    let out = std::fs::File::create(dir.join(format!("{name}.stdout"))).expect("stdout file");
    let err = std::fs::File::create(dir.join(format!("{name}.stderr"))).expect("stderr file");
    Command::new(env!("CARGO_BIN_EXE_xcord-loadtest"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("run xcord-loadtest")
}

/// Wait for a background run; print its output; return its exit code.
pub fn finish(mut child: Child, dir: &Path, name: &str) -> Option<i32> {
    let st = child.wait().expect("wait for xcord-loadtest");
    for ext in ["stdout", "stderr"] {
        let text = std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap_or_default();
        println!("--- {name} {ext} ---\n{text}");
    }
    st.code()
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no result file {}: {e}", path.display()));
    serde_json::from_str(&text).expect("result JSON")
}
