//! `xcord-loadtest`: the load-test harness of the XCORD Gateway. It opens thousands
//! of WebSocket connections from spread loopback source addresses, authenticates
//! them with HS256 tokens it signs itself, subscribes, publishes open-loop through
//! Redis or the admin route, and accounts for every expected delivery (missing,
//! duplicated, out of order). It measures end-to-end latency from the intended send
//! time, connect rate and handshake latency, samples the gateway's memory and CPU,
//! optionally ramps the rate to find the saturation point, and writes a JSON result
//! (`RESULT_SCHEMA.md`) and an SVG/HTML report. Exit code: 0 passed, 1 failed, 2 error.

mod chaos;
mod clock;
mod compare;
mod engine;
mod fleet;
mod merge;
mod options;
mod plan;
mod procstat;
mod publisher;
mod report;
mod result;
mod run;
mod scenario;
mod stats;
mod target;
mod token;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::publisher::RoutingKind;
use crate::result::Summary;
use crate::scenario::{Overrides, Scenario};

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Combine the results of a fleet's processes (--shard, --publish-only) into one
    /// result with exact accounting and merged latency histograms.
    Merge(merge::MergeArgs),
    /// Reliability under faults: clients that resume (SPEC §8) while connections
    /// are reset, Redis restarts and a second gateway node drains.
    Chaos(chaos::ChaosArgs),
    /// The same scenario against the floor (xcord-floor) and the gateway, side by
    /// side: every figure as a ratio to the floor's.
    Compare(compare::CompareArgs),
}

#[derive(Parser, Debug)]
#[command(
    name = "xcord-loadtest",
    version,
    about = "Load-test harness for the XCORD Gateway",
    args_conflicts_with_subcommands = true,
    after_help = "Every key of a scenario file is also a flag of the same name: see the \
                  'Scenario overrides' section. Exit code: 0 passed, 1 failed (missing, \
                  duplicated or out-of-order deliveries, failed connections, …), 2 error."
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// A shipped scenario (fanout, broadcast, chat, connect-storm) or a TOML file.
    #[arg(long, short = 's', default_value = "fanout")]
    scenario: String,
    /// Print the shipped scenarios and exit.
    #[arg(long)]
    list_scenarios: bool,
    /// The gateway: HOST:PORT, ws://HOST:PORT[/path] or wss://HOST:PORT[/path]
    /// (path /api/v1/ws when none). Any address: a remote fleet, a TLS balancer.
    #[arg(long, conflicts_with = "url")]
    gateway: Option<String>,
    /// The same as --gateway (kept for older scripts).
    #[arg(long)]
    url: Option<String>,
    /// PEM file of CA certificates trusted for wss:// besides the webpki roots (a
    /// private CA). The server name (SNI) is the URL's host.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Source addresses to connect from, comma-separated (connection i uses entry
    /// i mod N); default: 127.0.0.1..=127.0.0.N (--source-addrs) for a loopback
    /// target, the kernel's choice otherwise.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Redis URL (redis:// or rediss:// for TLS) for `--publisher redis` and the
    /// fleet barrier, e.g. redis://127.0.0.1:6379/.
    #[arg(long, env = "XCORD_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// Publish through a Redis Cluster: seed nodes, comma-separated
    /// (redis://h:p,redis://h:p); needs --routing roots.
    #[arg(long)]
    redis_cluster: Option<String>,
    /// pattern: PUBLISH events:{channel} (SPEC §5, the default); roots:
    /// SPUBLISH xcord:{ROOT} {"channel","type","payload"} (SPEC §9).
    #[arg(long, value_enum, default_value_t = RoutingKind::Pattern)]
    routing: RoutingKind,
    /// The gateway's admin listener, HOST:PORT, for `--publisher admin`.
    #[arg(long)]
    admin: Option<String>,
    /// Bearer token of the admin publish route.
    #[arg(long, env = "XCORD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The gateway's HS256 secret (tokens are signed with it).
    #[arg(long, env = "XCORD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// `iss` claim, when the gateway checks it.
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// `aud` claim, when the gateway checks it.
    #[arg(long)]
    jwt_audience: Option<String>,
    /// The gateway's PID: sample its RSS and CPU time.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Recorded in the result as config.gateway_shards.
    #[arg(long)]
    gateway_shards: Option<u32>,
    /// Write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the report here: FILE.svg, or FILE.html (summary + plots).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Raise the rate stepwise (ramp_* keys) until p99 passes ramp_p99_ms or deliveries
    /// fall behind; report the highest sustained rate.
    #[arg(long)]
    ramp: bool,
    /// Seed of the chat topology and channel draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run id carried in every event (default: random).
    #[arg(long)]
    run_id: Option<u64>,
    /// Test hook: do not publish these global event numbers (0-based, comma-separated),
    /// but count their deliveries as expected: they must be reported missing.
    #[arg(long, value_delimiter = ',')]
    drop_event: Vec<u64>,
    /// Test hook: skip every K-th event (0 = off), counted as expected.
    #[arg(long, default_value_t = 0)]
    drop_every: u64,
    /// Test hook: publish these global event numbers twice: every subscriber must
    /// report one duplicate each.
    #[arg(long, value_delimiter = ',')]
    duplicate_event: Vec<u64>,
    /// Connection engine threads, each with its own epoll loop over its share of
    /// the connections (default: the CPUs this process may run on, at most 2).
    #[arg(long)]
    client_threads: Option<usize>,
    /// Read buffer of each engine thread, bytes (default 64 KiB; grown for a
    /// larger frame).
    #[arg(long)]
    read_buffer_bytes: Option<usize>,
    /// Interrupt moderation of the engine threads: while events keep coming, a
    /// thread sleeps this long outside epoll between turns instead of being
    /// woken by every frame (on loopback the sender pays each wake-up). Adds at
    /// most this much to a delivery's latency; 0 = off. At most 10000.
    #[arg(long, default_value_t = 100)]
    coalesce_us: u64,
    /// Offer permessage-deflate (RFC 7692) on every connection, as browsers do;
    /// compressed events are inflated and accounted like plain ones, and the
    /// result counts the wire bytes per delivery either way.
    #[arg(long)]
    compression: bool,
    /// Fleet: this process takes connections I, I+N, I+2N, … of the plan
    /// (`--shard I/N`); shard 0 publishes unless --connect-only.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Fleet: only publish (no connections); every --shard process connects only.
    #[arg(long)]
    publish_only: bool,
    /// Fleet: only connect and account; another process publishes.
    #[arg(long)]
    connect_only: bool,
    /// Resolve every flag, print the effective target and scenario, and exit
    /// without contacting anything.
    #[arg(long)]
    print_config: bool,
    /// Fleet: how long a process waits at the Redis barrier for the others.
    #[arg(long, default_value_t = 300.0)]
    barrier_timeout_s: f64,
    /// Seconds between progress lines (default 1 on a terminal, 5 otherwise).
    #[arg(long)]
    progress_interval_s: Option<f64>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Do not fail the run because connections failed or were closed.
    #[arg(long)]
    allow_connect_failures: bool,
    #[command(flatten)]
    overrides: Overrides,
}

fn real_main() -> Result<bool> {
    let argv: Vec<String> = std::env::args().collect();
    let command = options::recorded_command(&argv);
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Merge(m)) => return merge::main(&m),
        Some(Cmd::Chaos(c)) => return chaos::main(c, command),
        Some(Cmd::Compare(c)) => return compare::main(c),
        None => {}
    }
    if cli.list_scenarios {
        for (name, text) in scenario::SHIPPED {
            let s: Scenario = toml::from_str(text).unwrap_or_default();
            println!("{name:14} {}", s.description);
        }
        return Ok(true);
    }
    let opts = options::options(&cli, command)?;
    if cli.print_config {
        println!("{}", options::describe(&opts));
        return Ok(true);
    }
    options::raise_nofile(opts.shard.len(opts.scenario.connections) as u64 + 256)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .max_blocking_threads(4)
        .thread_name("xcord-lt")
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let bound = opts.scenario.ramp_p99_ms;
    let out = rt.block_on(run::run(opts))?;
    rt.shutdown_timeout(Duration::from_secs(2));
    let r = &out.result;
    print!("{}", r.summary());
    if let Some(path) = &cli.out {
        let json = serde_json::to_string_pretty(r).context("cannot encode the result")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("result: {}", path.display());
    }
    if let Some(path) = &cli.report {
        report::write(path, r, &out.curves, bound)?;
        println!("report: {}", path.display());
    }
    Ok(r.passed())
}

fn main() {
    match real_main() {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("xcord-loadtest: error: {e:#}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<run::Options> {
        let mut argv = vec!["xcord-loadtest"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(&argv)?;
        options::options(&cli, "x".into())
    }

    #[test]
    fn remote_targets_are_accepted() {
        // Not loopback, and no connection is made while parsing.
        let o = parse(&[
            "--gateway",
            "ws://192.0.2.10:8080",
            "--redis",
            "redis://192.0.2.11:6379/",
            "--jwt-secret",
            "s",
        ])
        .expect("a remote ws:// gateway");
        assert_eq!(o.url, "ws://192.0.2.10:8080/api/v1/ws");
        assert!(
            o.source_addrs.is_empty(),
            "no 127.0.0.x binds for a remote target"
        );
        let o = parse(&[
            "--gateway",
            "wss://192.0.2.10:8443/edge/ws",
            "--redis",
            "rediss://192.0.2.11:6380/",
            "--jwt-secret",
            "s",
            "--source-ips",
            "192.0.2.50,192.0.2.51",
        ])
        .expect("a remote wss:// gateway");
        assert!(o.target.as_ref().is_some_and(|t| t.tls.is_some()));
        assert_eq!(o.source_addrs.len(), 2);
        assert!(parse(&[
            "--gateway",
            "http://x:1",
            "--redis",
            "redis://h/",
            "--jwt-secret",
            "s"
        ])
        .is_err());
    }

    #[test]
    fn fleet_flags() {
        let base = [
            "--gateway",
            "127.0.0.1:1",
            "--redis",
            "redis://127.0.0.1:1/",
            "--jwt-secret",
            "s",
        ];
        let mut a = base.to_vec();
        a.extend(["--shard", "1/3"]);
        assert!(parse(&a).is_err(), "a fleet needs --run-id");
        a.extend(["--run-id", "7"]);
        let o = parse(&a).expect("shard 1/3");
        assert_eq!((o.shard.index, o.shard.count), (1, 3));
        assert_eq!(o.role, fleet::Role::Connect);
        let mut p = vec![
            "--publish-only",
            "--run-id",
            "7",
            "--redis",
            "redis://127.0.0.1:1/",
        ];
        p.extend(["--shard", "0/2"]);
        let o = parse(&p).expect("publisher");
        assert_eq!(o.role, fleet::Role::Publish);
    }

    #[test]
    fn secrets_hidden_from_help() {
        use clap::CommandFactory;
        std::env::set_var("XCORD_JWT_SECRET", "very-secret-value");
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("XCORD_JWT_SECRET"));
        assert!(!help.contains("very-secret-value"), "{help}");
    }
}
