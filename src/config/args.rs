//! The command line: every flag of SPEC §2 with its environment twin (`--shards` ⇔
//! `XCORD_SHARDS`), and the parsers for its values. Secrets (`--jwt-secret`,
//! `--admin-token`) never appear in `--help`, even when set in the environment.
//! Cross-field rules and host-derived values are checked in `config::Config`.

use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use xcord_common::host::Shards;

#[derive(Parser, Debug)]
#[command(
    name = "xcord-gateway",
    version,
    about = "XCORD Gateway: real-time WebSocket fan-out"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a signed HS256 development token.
    Token(TokenArgs),
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    pub sub: String,
    /// Comma-separated server ids (`servers` claim).
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Comma-separated DM conversation ids (`dms` claim).
    #[arg(long, value_delimiter = ',')]
    pub dms: Vec<String>,
    /// Lifetime, e.g. 3600, 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = xcord_common::units::parse_duration)]
    pub ttl: Duration,
    #[arg(long, env = "XCORD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    #[arg(long, env = "XCORD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    #[arg(long, env = "XCORD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

/// A rate limit of `count` commands per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub window: Duration,
}

/// An IP network in CIDR form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                (u32::from(n) & mask) == (u32::from(a) & mask)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                (u128::from(n) & mask) == (u128::from(a) & mask)
            }
            _ => false,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Client listener. Port 0 picks a free port; the bound address is logged as `listening on ADDR`.
    #[arg(long, env = "XCORD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Admin listener: /metrics, /healthz, /readyz, POST /api/v1/publish, /ui.
    #[arg(long, env = "XCORD_ADMIN_LISTEN", default_value = "127.0.0.1:9091")]
    pub admin_listen: SocketAddr,
    /// Shard threads, one pinned per core: a number or `auto` (default: usable cores, at most 64).
    #[arg(long, env = "XCORD_SHARDS")]
    pub shards: Option<Shards>,
    /// redis://… URL. Without it (and without --redis-cluster) the gateway runs
    /// single-node on an in-process bus.
    #[arg(long, env = "XCORD_REDIS", value_parser = parse_redis_url, conflicts_with = "redis_cluster")]
    pub redis: Option<String>,
    /// Seed nodes of a Redis Cluster, comma-separated (redis://h:p,redis://h:p).
    #[arg(long, env = "XCORD_REDIS_CLUSTER", value_delimiter = ',', value_parser = parse_redis_url)]
    pub redis_cluster: Vec<String>,
    /// How the node receives backend events: `pattern` (PSUBSCRIBE events:*) or
    /// `roots` (SSUBSCRIBE xcord:{ROOT} for the roots its clients hold; Redis >= 7).
    #[arg(long, env = "XCORD_ROUTING", default_value = "pattern", value_parser = parse_routing)]
    pub routing: Routing,
    /// HS256 secret.
    #[arg(
        long,
        env = "XCORD_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    pub jwt_secret: Option<String>,
    /// PEM public key file (RS256, ES256 or EdDSA, from the key type).
    #[arg(long, env = "XCORD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    #[arg(long, env = "XCORD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    #[arg(long, env = "XCORD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on exp/nbf.
    #[arg(long, env = "XCORD_JWT_LEEWAY_SECONDS", default_value_t = 5)]
    pub jwt_leeway_seconds: u64,
    /// Bearer token for POST /api/v1/publish and the console; without it those answer 403.
    #[arg(long, env = "XCORD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "XCORD_HEARTBEAT_INTERVAL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_interval_ms: u64,
    #[arg(long, env = "XCORD_HELLO_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub hello_timeout_ms: u64,
    /// Largest client frame in bytes; larger: close 1009.
    #[arg(long, env = "XCORD_MAX_MESSAGE_SIZE", default_value = "4096", value_parser = parse_size)]
    pub max_message_size: usize,
    /// Per connection; the automatic user:{sub} does not count.
    #[arg(long, env = "XCORD_MAX_SUBSCRIPTIONS", default_value_t = 1000)]
    pub max_subscriptions: usize,
    /// Per node; default derived from the open-file limit.
    #[arg(long, env = "XCORD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Per-connection outbound bound; past it: close 4010.
    #[arg(long, env = "XCORD_SEND_QUEUE_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub send_queue_bytes: usize,
    /// Client commands per connection per window, e.g. 120/60s (fixed window).
    #[arg(long, env = "XCORD_RATE_LIMIT", default_value = "120/60s", value_parser = parse_rate_limit)]
    pub rate_limit: RateLimit,
    #[arg(long, env = "XCORD_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    #[arg(long, env = "XCORD_PRESENCE_TTL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub presence_ttl_seconds: u64,
    #[arg(long, env = "XCORD_RESUME_WINDOW_SECONDS", default_value_t = 60)]
    pub resume_window_seconds: u64,
    #[arg(long, env = "XCORD_REPLAY_BUFFER_BYTES", default_value = "8MiB", value_parser = parse_size)]
    pub replay_buffer_bytes: usize,
    #[arg(long, env = "XCORD_TOKEN_GRACE_SECONDS", default_value_t = 30)]
    pub token_grace_seconds: u64,
    /// 0 = off.
    #[arg(long, env = "XCORD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// CIDRs whose X-Forwarded-For / PROXY header is believed.
    #[arg(long, env = "XCORD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<Cidr>,
    #[arg(long, env = "XCORD_PRESENCE_SWEEP_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub presence_sweep_seconds: u64,
    /// `on`: negotiate permessage-deflate when a client offers it; `off`: never.
    #[arg(long, env = "XCORD_COMPRESSION", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub compression: bool,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected `on` or `off`, got `{s}`")),
    }
}

/// How a node receives backend events (SPEC §5, §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// PSUBSCRIBE `events:*`: every event of the platform.
    Pattern,
    /// SSUBSCRIBE `xcord:{ROOT}` for the roots the node's clients hold.
    Roots,
}

fn parse_routing(s: &str) -> Result<Routing, String> {
    match s {
        "pattern" => Ok(Routing::Pattern),
        "roots" => Ok(Routing::Roots),
        _ => Err(format!("expected `pattern` or `roots`, got `{s}`")),
    }
}

fn parse_redis_url(s: &str) -> Result<String, String> {
    redis::Client::open(s).map_err(|e| format!("not a usable Redis URL: {e}"))?;
    Ok(s.to_owned())
}

/// A size in bytes (`4096`, `1MiB`…): positive, and within the address space.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let n = xcord_common::units::parse_bytes(s)?;
    if n == 0 {
        return Err(format!("size out of range: `{s}`"));
    }
    usize::try_from(n).map_err(|_| format!("size out of range: `{s}`"))
}

/// `COUNT/WINDOW`, e.g. `120/60s`, `10/1s`, `600/1m`.
pub fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    let (c, w) = s
        .split_once('/')
        .ok_or_else(|| format!("expected COUNT/WINDOW like 120/60s, got `{s}`"))?;
    let count: u32 = c
        .trim()
        .parse()
        .map_err(|_| format!("bad count in rate limit `{s}`"))?;
    let window = xcord_common::units::parse_duration(w)?;
    if count == 0 || window.is_zero() {
        return Err(format!(
            "rate limit count and window must be positive: `{s}`"
        ));
    }
    Ok(RateLimit { count, window })
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| format!("not an IP network: `{s}`"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("bad prefix in `{s}`"))?,
        None => max,
    };
    Ok(Cidr { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_limits() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(
            parse_rate_limit("120/60s"),
            Ok(RateLimit {
                count: 120,
                window: Duration::from_secs(60)
            })
        );
        assert_eq!(
            parse_rate_limit("5/1m").map(|r| r.window),
            Ok(Duration::from_secs(60))
        );
        assert!(parse_rate_limit("120").is_err());
        assert!(parse_rate_limit("0/1s").is_err());
    }

    #[test]
    fn cidrs() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(parse_cidr("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }
}
