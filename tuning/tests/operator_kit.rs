//! The operator's kit: the Grafana dashboard (`grafana/xcord-gateway.json`) and
//! the Prometheus rules (`prometheus/xcord-alerts.yml`). Every metric their
//! expressions name must exist in the `/metrics` of a real, running gateway (a
//! renamed metric would leave a panel empty and an alert silent, with no error);
//! the dashboard must be importable into Grafana 9 or later with the Prometheus
//! data source as a variable; and, when `promtool` is installed (Debian package
//! `prometheus`), the rules and the dashboard's queries must pass it and the
//! rules' unit tests (`prometheus/xcord-alerts.test.yml`) must hold.
//!
//! The gateway binary is the workspace's own (built here when it is missing or
//! older than its sources, as loadtest's accounting tests do); `XCORD_GATEWAY_BIN`
//! names another one.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

fn kit(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(kit(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/xcord-gateway.json")).expect("the dashboard is JSON")
}

/// Every query of the dashboard: panel targets and query variables.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_string());
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            if let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str()) {
                out.push(q.to_string());
            }
        }
    }
    out
}

/// The `expr:` values of a rules file (single-line, or a `>-`/`|` block), and the
/// names it records. promtool checks the YAML itself; this only needs the text.
fn rules() -> (Vec<String>, BTreeSet<String>) {
    let text = read("prometheus/xcord-alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let (mut exprs, mut recorded) = (Vec::new(), BTreeSet::new());
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim_start();
        if let Some(name) = t.strip_prefix("- record:").or(t.strip_prefix("record:")) {
            recorded.insert(name.trim().to_string());
        }
        if let Some(v) = t.strip_prefix("expr:") {
            let v = v.trim();
            if v.starts_with('>') || v.starts_with('|') {
                let indent = l.len() - t.len();
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let n = lines[i + 1];
                    let ni = n.len() - n.trim_start().len();
                    if !n.trim().is_empty() && ni <= indent {
                        break;
                    }
                    block.push(n.trim());
                    i += 1;
                }
                exprs.push(block.join(" "));
            } else {
                exprs.push(v.to_string());
            }
        }
        i += 1;
    }
    (exprs, recorded)
}

/// The metric names a PromQL expression reads: identifiers outside strings that
/// start with `xcord_`, `xcord:` or `process_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            if ["xcord_", "xcord:", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
            {
                out.insert(word.to_string());
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn the_metric_name_reader_skips_strings_and_labels() {
    let got = metric_names(
        r#"sum by (instance) (rate(xcord_x_total{code="xcord_not_this",instance=~"$instance"}[5m])) / on () group_left xcord:plan_y + process_z"#,
    );
    let want: BTreeSet<String> = ["xcord_x_total", "xcord:plan_y", "process_z"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_dashboard_imports_into_grafana_9_with_a_data_source_variable() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "Grafana 9 schema"
    );
    assert_eq!(d["uid"], "xcord-gateway");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        d["id"].is_null(),
        "an exported dashboard carries no database id"
    );
    let vars = d["templating"]["list"].as_array().expect("variables");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap_or(""));
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in d["panels"].as_array().expect("panels") {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(99));
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap_or(0) > 0,
            "gridPos of {p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{}", p["title"]);
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()));
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
    // The panels the operator looks at first.
    let text = d.to_string();
    for want in [
        "xcord_connections",
        "xcord_events_dropped_total",
        "xcord_delivery_latency_seconds_bucket",
        "xcord_redis_up",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(want), "no panel reads {want}");
    }
}

#[test]
fn the_rules_cover_what_an_operator_is_paged_for() {
    let text = read("prometheus/xcord-alerts.yml");
    for alert in [
        "XcordNodeNotReady",
        "XcordRedisDown",
        "XcordEventsDropped",
        "XcordSlowConsumerCloses",
        "XcordDeliveryLatencyHigh",
        "XcordConnectionsNearMax",
        "XcordMemoryPerConnectionAbovePlan",
    ] {
        assert!(text.contains(&format!("alert: {alert}\n")), "no {alert}");
    }
    let (exprs, recorded) = rules();
    assert!(exprs.len() >= 9, "{exprs:?}");
    assert!(exprs
        .iter()
        .any(|e| e.contains(r#"xcord_connections_closed_total{code="4010"}"#)));
    assert!(exprs.iter().any(|e| e.contains("histogram_quantile(0.99")
        && e.contains("xcord_delivery_latency_seconds_bucket")));
    assert!(recorded.contains("xcord:plan_rss_bytes_per_connection"));
}

#[test]
fn every_metric_the_kit_reads_is_in_a_live_gateways_metrics() {
    let live = live_metric_names();
    let (rule_exprs, recorded) = rules();
    let mut missing = BTreeSet::new();
    let mut used = BTreeSet::new();
    for e in dashboard_exprs(&dashboard()).iter().chain(&rule_exprs) {
        for name in metric_names(e) {
            let known = if name.contains(':') {
                recorded.contains(&name)
            } else {
                live.contains(&name)
            };
            if !known {
                missing.insert(name.clone());
            }
            used.insert(name);
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    assert!(
        missing.is_empty(),
        "named by the dashboard or the rules but not in the gateway's /metrics \
         (nor recorded by the rules): {missing:?}"
    );
}

#[test]
fn promtool_accepts_the_rules_and_the_dashboards_queries() {
    if Command::new("promtool").arg("--version").output().is_err() {
        println!("note: promtool not installed (Debian package `prometheus`): rules not checked");
        return;
    }
    let dir = kit("prometheus");
    let run = |args: &[&str], cwd: &Path| {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(cwd)
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
    };
    run(&["check", "rules", "xcord-alerts.yml"], &dir);
    run(&["test", "rules", "xcord-alerts.test.yml"], &dir);
    // The dashboard's queries, with Grafana's variables filled in, as recording
    // rules: promtool parses each one.
    let mut y = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs(&dashboard()).iter().enumerate() {
        if e.starts_with("label_values(") {
            continue;
        }
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        let quoted = serde_json::to_string(&e).expect("quote");
        y.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("xcord-tune-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("scratch dir");
    std::fs::write(tmp.join("dashboard-rules.yml"), y).expect("write");
    run(&["check", "rules", "dashboard-rules.yml"], &tmp);
}

// --- A live gateway ---------------------------------------------------------

/// The metric names of the sample lines (not `# HELP`/`# TYPE`) of a running
/// gateway's `/metrics`.
fn live_metric_names() -> BTreeSet<String> {
    let gw = Gateway::start();
    let body = http_get(gw.admin, "/metrics");
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

struct Gateway {
    child: Child,
    admin: SocketAddr,
}

impl Gateway {
    fn start() -> Gateway {
        let mut child = Command::new(gateway_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--jwt-secret",
                "s",
                "--shards",
                "1",
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
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sent {
                    continue;
                }
                if let Some(rest) = line.split("admin listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    if let Ok(a) = addr.parse::<SocketAddr>() {
                        let _ = tx.send(a);
                        sent = true;
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(admin) => Gateway { child, admin },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway did not log `admin listening on ADDR` within 60 s");
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

/// GET `path` over HTTP/1.1 and return the body (plain or chunked).
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
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

/// The gateway binary: `XCORD_GATEWAY_BIN`, or the workspace's, in the profile of
/// this test, built when it is missing or older than its sources (instant under
/// `cargo test --workspace`, which builds it for the gateway's own tests).
fn gateway_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("XCORD_GATEWAY_BIN") {
            return PathBuf::from(p);
        }
        let me = PathBuf::from(env!("CARGO_BIN_EXE_xcord-tune"));
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
        let bin = profile_dir.join("xcord-gateway");
        let sources = ["src", "common/src", "Cargo.toml", "Cargo.lock"]
            .iter()
            .filter_map(|p| newest(&workspace.join(p)))
            .max();
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if let (Some(b), Some(s)) = (built, sources) {
            if b >= s {
                return bin;
            }
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "xcord-gateway", "--bin", "xcord-gateway"])
            .arg("--manifest-path")
            .arg(workspace.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "cargo build -p xcord-gateway failed");
        assert!(bin.exists(), "no binary at {}", bin.display());
        bin
    })
    .clone()
}
