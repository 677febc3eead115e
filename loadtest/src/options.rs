//! From the command line to a run's [`run::Options`]: the scenario with its flag
//! overrides, the gateway target (any `ws://`/`wss://` address), the publisher's
//! Redis or admin listener, the fleet role (`--shard`, `--publish-only`,
//! `--connect-only`), and the command line as recorded (shell-quoted, secrets
//! redacted).

use anyhow::{anyhow, bail, Result};
use std::time::Duration;

use crate::fleet::{Role, Shard};
use crate::publisher::{self, RoutingKind};
use crate::scenario::{PublisherKind, Scenario};
use crate::target::{self, WsUrl};
use crate::{procstat, run, Cli};

/// Quote an argument for a POSIX shell when needed.
pub fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%*".contains(&b))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// The command line as recorded in the result: secrets redacted, shell-quoted.
pub fn recorded_command(argv: &[String]) -> String {
    target::redact_args(argv)
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn raise_nofile(need: u64) -> Result<()> {
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

/// The fleet role from `--shard`, `--publish-only`, `--connect-only`.
fn role(cli: &Cli) -> Result<(Shard, Role)> {
    let shard = match &cli.shard {
        Some(s) => Shard::parse(s)?,
        None => Shard::whole(),
    };
    let role = match (cli.publish_only, cli.connect_only) {
        (true, true) => bail!("--publish-only and --connect-only exclude each other"),
        (true, false) => Role::Publish,
        (false, true) => Role::Connect,
        (false, false) if shard.index == 0 => Role::Both,
        (false, false) => Role::Connect,
    };
    if (shard.count > 1 || role != Role::Both) && cli.run_id.is_none() {
        bail!("a fleet run (--shard, --publish-only, --connect-only) needs the same --run-id in every process");
    }
    if (shard.count > 1 || role != Role::Both) && cli.ramp {
        bail!("--ramp is for a single process; a fleet measures one plain step");
    }
    if (shard.count > 1 || role != Role::Both) && cli.redis.is_none() && cli.redis_cluster.is_none()
    {
        bail!("a fleet run meets at a Redis barrier: give --redis (or --redis-cluster) in every process");
    }
    Ok((shard, role))
}

pub fn options(cli: &Cli, command: String) -> Result<run::Options> {
    let mut sc = Scenario::load(&cli.scenario)?;
    sc.apply(&cli.overrides)?;
    let (shard, role) = role(cli)?;
    let given = match (&cli.gateway, &cli.url) {
        (Some(g), None) | (None, Some(g)) => Some(g),
        _ => None,
    };
    let (url, target) = match given {
        Some(g) => {
            let u = WsUrl::parse(g)?;
            (
                u.display(),
                Some(target::ws_target(&u, cli.ca_file.as_deref())?),
            )
        }
        None if role == Role::Publish => (String::new(), None),
        None => bail!("give the gateway: --gateway HOST:PORT, ws://HOST:PORT[/path] or wss://…"),
    };
    let admin = match &cli.admin {
        Some(a) => {
            let (h, p) = target::split_host_port(a, 80)?;
            Some(target::resolve("--admin", &h, p)?)
        }
        None => None,
    };
    let publishes = role != Role::Connect;
    match sc.publisher {
        PublisherKind::Redis if publishes && cli.redis.is_none() && cli.redis_cluster.is_none() => {
            bail!("--publisher redis (the default) needs --redis redis://HOST:PORT/ (or --redis-cluster)")
        }
        PublisherKind::Admin if publishes && (admin.is_none() || cli.admin_token.is_none()) => {
            bail!("--publisher admin needs --admin HOST:PORT and --admin-token")
        }
        _ => {}
    }
    let client_threads = cli
        .client_threads
        .unwrap_or_else(|| procstat::affinity_cpus().clamp(1, 2));
    if client_threads == 0 || client_threads > 256 {
        bail!("--client-threads must be within 1..=256");
    }
    let read_buffer = cli.read_buffer_bytes.unwrap_or(64 * 1024);
    if read_buffer < 4096 {
        bail!("--read-buffer-bytes must be at least 4096");
    }
    let jwt_secret = match cli.jwt_secret.as_deref() {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ if role == Role::Publish => String::new(),
        _ => bail!("--jwt-secret (the gateway's HS256 secret) is required"),
    };
    let progress_every = progress_every(cli)?;
    let source_addrs = match &target {
        Some(t) => target::source_addrs(&cli.source_ips, sc.effective_source_addrs(), t.addr),
        None => Vec::new(),
    };
    let routing = match (&cli.redis_cluster, cli.routing) {
        (Some(_), RoutingKind::Pattern) => {
            bail!("--redis-cluster publishes by root: give --routing roots")
        }
        _ => cli.routing,
    };
    Ok(run::Options {
        target,
        url,
        source_addrs,
        publish: publisher::Target {
            kind: sc.publisher,
            redis_url: cli.redis.clone(),
            redis_cluster: cli.redis_cluster.clone(),
            routing,
            admin_addr: admin,
            admin_token: cli.admin_token.clone(),
        },
        barrier_redis: cli
            .redis
            .clone()
            .or_else(|| cli.redis_cluster.as_ref().map(|c| format!("cluster:{c}"))),
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
        duplicate_events: cli.duplicate_event.iter().copied().collect(),
        client_threads,
        read_buffer,
        coalesce: Duration::from_micros(cli.coalesce_us.min(10_000)),
        compression: cli.compression,
        progress_every,
        allow_connect_failures: cli.allow_connect_failures,
        command,
        shard,
        role,
        barrier_timeout: Duration::from_secs_f64(cli.barrier_timeout_s),
        scenario: sc,
    })
}

fn progress_every(cli: &Cli) -> Result<Option<Duration>> {
    if cli.quiet {
        return Ok(None);
    }
    let s = cli.progress_interval_s.unwrap_or_else(|| {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            1.0
        } else {
            5.0
        }
    });
    if !(s.is_finite() && s > 0.0) {
        return Err(anyhow!("--progress-interval-s must be positive"));
    }
    Ok(Some(Duration::from_secs_f64(s)))
}

/// The effective configuration as `--print-config` shows it (secrets redacted).
pub fn describe(o: &run::Options) -> String {
    let redis = o.publish.redis_url.as_deref().map(target::redact_url);
    let v = serde_json::json!({
        "gateway": o.url,
        "address": o.target.as_ref().map(|t| t.addr.to_string()),
        "tls": o.target.as_ref().map(|t| t.tls.is_some()),
        "source_addrs": o.source_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "redis": redis,
        "redis_cluster": o.publish.redis_cluster.as_deref().map(target::redact_url),
        "routing": o.publish.routing,
        "publisher": o.scenario.publisher.as_str(),
        "shard": format!("{}/{}", o.shard.index, o.shard.count),
        "role": o.role.as_str(),
        "client_threads": o.client_threads,
        "run_id": o.run_id,
        "command": o.command,
        "scenario": o.scenario,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
