//! The checked configuration the node runs with. [`Config::from_args`] turns the
//! command line (`args.rs`) into typed values — durations, sizes, the shard count
//! and its CPUs, the connection limit the open-file limit allows — and refuses, at
//! start, anything that would fail later: a missing key, an empty secret, a number
//! too large for what it sets. The rest of the gateway reads only `Config`.

mod args;

pub use args::{parse_cidr, Cidr, Cli, Command, RateLimit, Routing, RunArgs, TokenArgs};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use xcord_common::host;

/// The longest duration any flag may set: far beyond any sensible value, and far
/// from where `Instant` arithmetic would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A Redis deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `--redis URL`.
    Single(String),
    /// `--redis-cluster SEED,…`.
    Cluster(Vec<String>),
}

/// How tokens are verified (SPEC §2).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The HS256 secret, or …
    pub secret: Option<String>,
    /// … a PEM public key file (its key type fixes the algorithm).
    pub public_key: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: u64,
}

/// The node's configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub shards: usize,
    /// CPU ids the shards are pinned to, in order (`shards[i]` on `cpus[i % len]`).
    pub cpus: Vec<usize>,
    /// Where Redis is: none (the in-process bus), one server, or a cluster.
    pub redis: Option<RedisTarget>,
    pub routing: Routing,
    pub jwt: JwtConfig,
    pub admin_token: Option<String>,
    pub heartbeat: Duration,
    pub hello_timeout: Duration,
    pub max_message_size: usize,
    pub max_subscriptions: usize,
    pub max_connections: usize,
    pub send_queue_bytes: usize,
    pub rate_limit: RateLimit,
    pub drain: Duration,
    pub presence_ttl: Duration,
    pub presence_sweep: Duration,
    /// Zero: sessions are not kept.
    pub resume_window: Duration,
    pub replay_buffer_bytes: usize,
    pub token_grace: Duration,
    pub max_connections_per_ip: usize,
    pub trusted_proxies: Vec<Cidr>,
    /// Negotiate permessage-deflate (SPEC §3).
    pub compression: bool,
}

/// A duration flag, refused when it is too large for what it sets.
fn duration(flag: &str, d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "{flag} is too large (at most {} seconds)",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(d)
}

fn secs(flag: &str, s: u64) -> Result<Duration, String> {
    duration(flag, Duration::from_secs(s))
}

fn millis(flag: &str, ms: u64) -> Result<Duration, String> {
    duration(flag, Duration::from_millis(ms))
}

impl Config {
    /// Check the cross-field rules and derive what depends on the host.
    pub fn from_args(a: RunArgs) -> Result<Config, String> {
        if a.jwt_secret.is_none() && a.jwt_public_key.is_none() {
            return Err("one of --jwt-secret or --jwt-public-key is required".into());
        }
        if a.jwt_secret.as_deref() == Some("") {
            return Err("--jwt-secret must not be empty".into());
        }
        if a.admin_token.as_deref() == Some("") {
            return Err("--admin-token must not be empty".into());
        }
        if a.send_queue_bytes < 1024 {
            return Err("--send-queue-bytes must be at least 1024".into());
        }
        if a.max_message_size < 64 {
            return Err("--max-message-size must be at least 64".into());
        }
        if a.jwt_leeway_seconds > MAX_DURATION.as_secs() {
            return Err("--jwt-leeway-seconds is too large".into());
        }
        let redis = match (a.redis, a.redis_cluster.is_empty()) {
            (Some(u), true) => Some(RedisTarget::Single(u)),
            (None, false) => Some(RedisTarget::Cluster(a.redis_cluster)),
            (None, true) => None,
            (Some(_), false) => return Err("--redis and --redis-cluster exclude each other".into()),
        };
        if a.routing == Routing::Roots && redis.is_none() {
            return Err("--routing roots needs --redis (Redis >= 7) or --redis-cluster".into());
        }
        let cpus = usable_cpus();
        let shards = match a.shards {
            Some(s) => s.resolve(cpus.len()),
            None => host::default_shards(cpus.len()),
        };
        if shards == 0 || shards > host::MAX_SHARDS {
            return Err(format!(
                "--shards must be between 1 and {}, got {shards}",
                host::MAX_SHARDS
            ));
        }
        let fd_limit = raise_nofile_limit();
        let derived = host::connections_for_nofile(fd_limit, shards as u64);
        let max_connections = a
            .max_connections
            .unwrap_or(usize::try_from(derived).unwrap_or(usize::MAX).max(1));
        if max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        Ok(Config {
            listen: a.listen,
            admin_listen: a.admin_listen,
            shards,
            cpus,
            redis,
            routing: a.routing,
            jwt: JwtConfig {
                secret: a.jwt_secret,
                public_key: a.jwt_public_key,
                issuer: a.jwt_issuer,
                audience: a.jwt_audience,
                leeway_secs: a.jwt_leeway_seconds,
            },
            admin_token: a.admin_token,
            heartbeat: millis("--heartbeat-interval-ms", a.heartbeat_interval_ms)?,
            hello_timeout: millis("--hello-timeout-ms", a.hello_timeout_ms)?,
            max_message_size: a.max_message_size,
            max_subscriptions: a.max_subscriptions,
            max_connections,
            send_queue_bytes: a.send_queue_bytes,
            rate_limit: a.rate_limit,
            drain: secs("--drain-seconds", a.drain_seconds)?,
            presence_ttl: secs("--presence-ttl-seconds", a.presence_ttl_seconds)?,
            presence_sweep: secs("--presence-sweep-seconds", a.presence_sweep_seconds)?,
            resume_window: secs("--resume-window-seconds", a.resume_window_seconds)?,
            replay_buffer_bytes: a.replay_buffer_bytes,
            token_grace: secs("--token-grace-seconds", a.token_grace_seconds)?,
            max_connections_per_ip: a.max_connections_per_ip,
            trusted_proxies: a.trusted_proxies,
            compression: a.compression,
        })
    }

    /// The heartbeat interval sent in HELLO_ACK, in milliseconds.
    pub fn heartbeat_ms(&self) -> u64 {
        u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX)
    }
}

/// CPU ids in this process's affinity mask (respects `taskset`).
pub fn usable_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1))
        .collect()
}

/// Raise the soft open-file limit to the hard limit; return the limit in force.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: rlimit is plain data.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
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
        lim.rlim_cur
    }
}
