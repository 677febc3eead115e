//! `xcord-loadtest compare`: one scenario against the floor (`xcord-floor`, the bare
//! reference server) and against the gateway, side by side in one invocation,
//! every figure reported as a ratio to the floor's (issue 13). It owns its
//! processes on loopback: one redis-server, then for each pair the floor and the
//! gateway in turn, each pinned to `--server-cpus` (the gateway with `--shards 1`
//! by default), while this tool's runs are pinned to `--client-cpus`. Each run is
//! this same binary run with the scenario flags given after `--`; every process is
//! ended by PID. Pairs alternate floor, gateway, floor, gateway… so drift on a
//! shared machine hits both sides.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xcord_common::result::RunResult;

use crate::chaos::procs::{free_low_port, Redis};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The gateway binary.
    #[arg(long)]
    gateway_bin: PathBuf,
    /// The floor binary (`xcord-floor`).
    #[arg(long)]
    floor_bin: PathBuf,
    /// CPUs for the server under test (taskset list).
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs for redis-server and this tool's runs.
    #[arg(long, default_value = "1")]
    client_cpus: String,
    /// Floor/gateway pairs to run.
    #[arg(long, default_value_t = 1)]
    pairs: u32,
    /// Extra gateway flags (space-separated), after `--shards 1`.
    #[arg(long, default_value = "")]
    gateway_flags: String,
    /// Where each run's result JSON and the comparison go.
    #[arg(long, default_value = "compare-out")]
    out_dir: PathBuf,
    /// The scenario's flags, as for a normal run (`--scenario fanout …`).
    #[arg(last = true)]
    run: Vec<String>,
}

const SECRET: &str = "compare-secret";

/// A server under test, killed by PID when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(cpus: &str, bin: &std::path::Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpus).arg(bin);
    c
}

/// Start `bin` and wait for its `listening on ADDR` line (not the admin one).
fn start_server(mut cmd: Command) -> Result<Server> {
    let mut child = cmd
        .env("XCORD_JWT_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the server (is taskset installed?)")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if line.contains("admin listening on") {
                continue;
            }
            if let Some(i) = line.find("listening on ") {
                let addr = line[i + 13..].split_whitespace().next().unwrap_or("");
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => Ok(Server { child, addr }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server did not log `listening on ADDR` within 20 s")
        }
    }
}

fn run_against(a: &CompareArgs, s: &Server, redis: &Redis, out: &PathBuf) -> Result<RunResult> {
    let me = std::env::current_exe().context("cannot find this binary")?;
    let status = pinned(&a.client_cpus, &me)
        .args(["--gateway", &s.addr, "--redis", &redis.url()])
        .args([
            "--gateway-pid",
            &s.child.id().to_string(),
            "--gateway-shards",
            "1",
        ])
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(&a.run)
        .env("XCORD_JWT_SECRET", SECRET)
        .stdout(Stdio::null())
        .status()
        .context("cannot run the scenario")?;
    if status.code() == Some(2) {
        bail!("the scenario could not run against {}", s.addr);
    }
    let text = std::fs::read_to_string(out).with_context(|| format!("{}", out.display()))?;
    serde_json::from_str(&text).context("cannot read the run's result")
}

/// The figures compared, from one result: (name, value, lower is better).
fn figures(r: &RunResult) -> Vec<(&'static str, Option<f64>)> {
    let g = r.gateway.as_ref();
    vec![
        (
            "server CPU-s per 10^6 deliveries",
            g.and_then(|g| g.cpu_seconds_per_million_deliveries),
        ),
        (
            "server CPU-s to connect",
            g.and_then(|g| g.cpu_seconds_connect),
        ),
        (
            "server RSS bytes per connection",
            g.and_then(|g| g.rss_bytes_per_connection),
        ),
        ("latency p50 ms", r.latency_ms.p50),
        ("latency p99 ms", r.latency_ms.p99),
        ("latency p99.9 ms", r.latency_ms.p999),
        (
            "tool CPU-s per 10^6 deliveries",
            r.client.cpu_seconds_per_million_deliveries,
        ),
    ]
}

fn ratio_table(pairs: &[(RunResult, RunResult)]) -> String {
    let mut s =
        String::from("| figure | floor | gateway | gateway / floor |\n| --- | --- | --- | --- |\n");
    for (i, (f, g)) in pairs.iter().enumerate() {
        for ((name, fv), (_, gv)) in figures(f).into_iter().zip(figures(g)) {
            let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
            let ratio = match (fv, gv) {
                (Some(a), Some(b)) if a > 0.0 => format!("**{:.2}×**", b / a),
                _ => "-".to_owned(),
            };
            s.push_str(&format!(
                "| pair {} {name} | {} | {} | {ratio} |\n",
                i + 1,
                show(fv),
                show(gv)
            ));
        }
    }
    s
}

pub fn main(a: CompareArgs) -> Result<bool> {
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("cannot create {}", a.out_dir.display()))?;
    let port = free_low_port()?;
    let redis = Redis::start(port)?;
    let started = Instant::now();
    let mut pairs = Vec::new();
    let mut passed = true;
    for p in 1..=a.pairs {
        let floor = {
            let mut c = pinned(&a.server_cpus, &a.floor_bin);
            c.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .args(["--redis", &redis.url()]);
            start_server(c)?
        };
        let fr = run_against(
            &a,
            &floor,
            &redis,
            &a.out_dir.join(format!("floor-{p}.json")),
        )?;
        drop(floor);
        let gateway = {
            let mut c = pinned(&a.server_cpus, &a.gateway_bin);
            c.args(["--shards", "1", "--listen", "127.0.0.1:0"])
                .args(["--admin-listen", "127.0.0.1:0", "--redis", &redis.url()])
                .args(a.gateway_flags.split_whitespace());
            start_server(c)?
        };
        let gr = run_against(
            &a,
            &gateway,
            &redis,
            &a.out_dir.join(format!("gateway-{p}.json")),
        )?;
        drop(gateway);
        passed &= fr.passed() && gr.passed();
        pairs.push((fr, gr));
    }
    let table = ratio_table(&pairs);
    let report = format!(
        "command: {}\n{} pair(s) in {:.0} s; runs in {}\n\n{table}",
        std::env::args().collect::<Vec<_>>().join(" "),
        a.pairs,
        started.elapsed().as_secs_f64(),
        a.out_dir.display()
    );
    print!("{report}");
    std::fs::write(a.out_dir.join("compare.md"), &report).context("cannot write compare.md")?;
    Ok(passed)
}
