//! `xcord-loadtest`: the load-test harness of the XCORD Gateway. It opens thousands
//! of WebSocket connections from spread loopback source addresses, authenticates
//! them with HS256 tokens it signs itself, subscribes, publishes open-loop through
//! Redis or the admin route, and accounts for every expected delivery (missing,
//! duplicated, out of order). It measures end-to-end latency from the intended send
//! time, connect rate and handshake latency, samples the gateway's memory and CPU,
//! optionally ramps the rate to find the saturation point, and writes a JSON result
//! (`RESULT_SCHEMA.md`) and an SVG/HTML report. Exit code: 0 passed, 1 failed, 2 error.

mod clock;
mod conn;
mod plan;
mod procstat;
mod publisher;
mod report;
mod result;
mod run;
mod scenario;
mod stats;
mod token;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::result::Summary;
use crate::scenario::{Overrides, PublisherKind, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "xcord-loadtest",
    version,
    about = "Load-test harness for the XCORD Gateway (loopback targets only)",
    after_help = "Every key of a scenario file is also a flag of the same name: see the \
                  'Scenario overrides' section. Exit code: 0 passed, 1 failed (missing, \
                  duplicated or out-of-order deliveries, failed connections, …), 2 error."
)]
struct Cli {
    /// A shipped scenario (fanout, broadcast, chat, connect-storm) or a TOML file.
    #[arg(long, short = 's', default_value = "fanout")]
    scenario: String,
    /// Print the shipped scenarios and exit.
    #[arg(long)]
    list_scenarios: bool,
    /// The gateway's client listener, HOST:PORT (the URL is ws://HOST:PORT/api/v1/ws).
    #[arg(long, conflicts_with = "url")]
    gateway: Option<String>,
    /// The full WebSocket URL instead of --gateway, e.g. ws://127.0.0.1:8080/api/v1/ws.
    #[arg(long)]
    url: Option<String>,
    /// Redis URL for `--publisher redis`, e.g. redis://127.0.0.1:6379/.
    #[arg(long, env = "XCORD_REDIS")]
    redis: Option<String>,
    /// The gateway's admin listener, HOST:PORT, for `--publisher admin`.
    #[arg(long)]
    admin: Option<String>,
    /// Bearer token of the admin publish route.
    #[arg(long, env = "XCORD_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// The gateway's HS256 secret (tokens are signed with it).
    #[arg(long, env = "XCORD_JWT_SECRET")]
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
    /// Worker threads of the client runtime (default: the CPUs this process may run
    /// on, at most 2: pinned to one CPU with taskset, one thread is cheapest).
    #[arg(long)]
    client_threads: Option<usize>,
    /// WebSocket read buffer per connection, bytes (default: from event_bytes,
    /// 1 KiB..16 KiB; tungstenite zeroes it on every read, so small is cheaper).
    #[arg(long)]
    read_buffer_bytes: Option<usize>,
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

/// Quote an argument for a POSIX shell when needed.
fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// Resolve `host:port` and insist on loopback.
fn loopback(what: &str, hostport: &str) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .with_context(|| format!("{what}: cannot resolve {hostport:?} (want HOST:PORT)"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!("{what}: {hostport} is not a loopback address; load tests target 127.0.0.0/8 or ::1 only");
    }
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{what}: no address"))
}

/// The `host:port` part of a `scheme://[user@]host:port/...` URL.
fn url_hostport(url: &str, default_port: u16) -> Result<String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{url:?} is not a URL"))?;
    let auth = rest.split(['/', '?']).next().unwrap_or("");
    let hp = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let has_port = if hp.starts_with('[') {
        hp.contains("]:")
    } else {
        hp.contains(':')
    };
    Ok(if has_port {
        hp.to_owned()
    } else {
        format!("{hp}:{default_port}")
    })
}

fn raise_nofile(need: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    if lim.rlim_cur < need {
        bail!(
            "this run needs about {need} open files but the limit is {} (ulimit -n)",
            lim.rlim_cur
        );
    }
    Ok(())
}

fn options(cli: &Cli, command: String) -> Result<run::Options> {
    let mut sc = Scenario::load(&cli.scenario)?;
    sc.apply(&cli.overrides)?;
    let (url, target) = match (&cli.gateway, &cli.url) {
        (Some(g), None) => {
            let t = loopback("--gateway", g)?;
            (format!("ws://{g}/api/v1/ws"), t)
        }
        (None, Some(u)) => {
            if !u.starts_with("ws://") {
                bail!("--url must be a ws:// URL (loopback, no TLS)");
            }
            let t = loopback("--url", &url_hostport(u, 80)?)?;
            (u.clone(), t)
        }
        _ => bail!("give the gateway's client listener: --gateway HOST:PORT or --url ws://…"),
    };
    let redis = match &cli.redis {
        Some(r) => {
            loopback("--redis", &url_hostport(r, 6379)?)?;
            Some(r.clone())
        }
        None => None,
    };
    let admin = match &cli.admin {
        Some(a) => Some(loopback("--admin", a)?),
        None => None,
    };
    match sc.publisher {
        PublisherKind::Redis if redis.is_none() => {
            bail!("--publisher redis (the default) needs --redis redis://127.0.0.1:PORT/")
        }
        PublisherKind::Admin if admin.is_none() || cli.admin_token.is_none() => {
            bail!("--publisher admin needs --admin HOST:PORT and --admin-token")
        }
        _ => {}
    }
    let client_threads = cli
        .client_threads
        .unwrap_or_else(|| procstat::affinity_cpus().clamp(1, 2));
    if client_threads == 0 || client_threads > 64 {
        bail!("--client-threads must be within 1..=64");
    }
    let read_buffer = cli.read_buffer_bytes.unwrap_or_else(|| {
        (sc.event_bytes + 256)
            .next_power_of_two()
            .clamp(1024, 16384)
    });
    if read_buffer < 256 {
        bail!("--read-buffer-bytes must be at least 256");
    }
    let jwt_secret = match cli.jwt_secret.as_deref() {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => bail!("--jwt-secret (the gateway's HS256 secret) is required"),
    };
    let progress_every = if cli.quiet {
        None
    } else {
        let s = cli.progress_interval_s.unwrap_or_else(|| {
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                1.0
            } else {
                5.0
            }
        });
        if !(s.is_finite() && s > 0.0) {
            bail!("--progress-interval-s must be positive");
        }
        Some(Duration::from_secs_f64(s))
    };
    Ok(run::Options {
        target,
        url,
        publish: publisher::Target {
            kind: sc.publisher,
            redis_url: redis,
            admin_addr: admin,
            admin_token: cli.admin_token.clone(),
        },
        jwt_secret,
        jwt_issuer: cli.jwt_issuer.clone(),
        jwt_audience: cli.jwt_audience.clone(),
        gateway_pid: cli.gateway_pid,
        gateway_shards: cli.gateway_shards,
        ramp: cli.ramp,
        run_id: cli.run_id.unwrap_or_else(|| fastrand::u64(1..(1u64 << 53))),
        seed: cli.seed,
        drop_events: cli.drop_event.iter().copied().collect(),
        drop_every: cli.drop_every,
        client_threads,
        read_buffer,
        progress_every,
        allow_connect_failures: cli.allow_connect_failures,
        command,
        scenario: sc,
    })
}

fn real_main() -> Result<bool> {
    let argv: Vec<String> = std::env::args().collect();
    let command = argv
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let cli = Cli::parse();
    if cli.list_scenarios {
        for (name, text) in scenario::SHIPPED {
            let s: Scenario = toml::from_str(text).unwrap_or_default();
            println!("{name:14} {}", s.description);
        }
        return Ok(true);
    }
    let opts = options(&cli, command)?;
    raise_nofile(opts.scenario.connections as u64 + 256)?;
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
    fn urls_and_loopback() {
        assert_eq!(
            url_hostport("redis://127.0.0.1:6390/", 6379).expect("url"),
            "127.0.0.1:6390"
        );
        assert_eq!(
            url_hostport("redis://u:p@localhost/0", 6379).expect("url"),
            "localhost:6379"
        );
        assert!(loopback("x", "127.0.0.5:80").is_ok());
        assert!(loopback("x", "10.0.0.1:80").is_err());
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("--rate"), "--rate");
    }

    #[test]
    fn cli_parses() {
        Cli::command_for_test();
    }

    impl Cli {
        fn command_for_test() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }
}
