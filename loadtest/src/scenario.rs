//! Scenarios: the TOML files in `loadtest/scenarios/` (embedded in the binary, so a
//! name works from any directory), their defaults, and the flag overrides. Every key
//! of a scenario file is also a flag of the same name (`_` becomes `-`).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The scenarios shipped in `loadtest/scenarios/`, by name.
pub const SHIPPED: &[(&str, &str)] = &[
    ("fanout", include_str!("../scenarios/fanout.toml")),
    ("broadcast", include_str!("../scenarios/broadcast.toml")),
    ("chat", include_str!("../scenarios/chat.toml")),
    (
        "connect-storm",
        include_str!("../scenarios/connect-storm.toml"),
    ),
];

/// How connections map to channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Connection `i` subscribes to channels `(i*S + j) mod C`, `j < S`: every channel
    /// has the same number of subscribers; events go round-robin over the channels.
    Uniform,
    /// Users in Zipf-popular servers plus DMs (see `chat.toml`).
    Chat,
}

/// Which channel family the uniform topology uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    /// `server:lt{c}:channel:main`; the token's `servers` claim grants it.
    Server,
    /// `live:lt{c}:chat`; any authenticated user may subscribe.
    Live,
}

/// How events reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PublisherKind {
    /// `PUBLISH events:{channel}` on Redis, as a backend does (pipelined).
    Redis,
    /// `POST /api/v1/publish` on the admin listener (one keep-alive connection).
    Admin,
}

impl PublisherKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherKind::Redis => "redis",
            PublisherKind::Admin => "admin",
        }
    }
}

/// One scenario, after defaults. Field names are the TOML keys and the flag names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub topology: Topology,
    pub channel_kind: ChannelKind,
    /// Connections to open (one user each).
    pub connections: usize,
    /// Uniform topology: number of published channels.
    pub channels: usize,
    /// Uniform topology: channels each connection subscribes to.
    pub subscriptions_per_connection: usize,
    /// Events published per second (open loop).
    pub rate: f64,
    /// Length of the measured (publishing) phase.
    pub duration_s: f64,
    /// Size of each published body (Redis message or admin POST body), padded.
    pub event_bytes: usize,
    pub publisher: PublisherKind,
    /// Connection attempts in flight at once.
    pub connect_concurrency: usize,
    /// Connection attempts started per second; 0 = no pacing.
    pub connect_rate: f64,
    /// Bound on one attempt: TCP + WebSocket upgrade + HELLO + every SUBSCRIBE.
    pub connect_timeout_s: f64,
    /// A failed attempt (refused, shed, timed out) is retried this many times, after
    /// a jittered exponential backoff, as a real client would; 0 = never.
    pub connect_retries: u32,
    /// First retry backoff (doubled per retry, capped at 5 s, full jitter).
    pub connect_retry_backoff_ms: u64,
    /// After the first connect, close every connection and reconnect them all at once,
    /// this many times, before the measured phase.
    pub reconnect_rounds: u32,
    /// After the last publish, wait up to this long for outstanding deliveries.
    pub drain_grace_s: f64,
    /// Before measuring, wait (at most this long) until the gateway's own connect-time
    /// events (presence) have stopped arriving; 0 = do not wait.
    pub settle_max_s: f64,
    /// Send PING at the heartbeat interval (without it the gateway closes idle
    /// connections 4009 after 2x the interval).
    pub ping: bool,
    /// PING period; 0 = the `heartbeatInterval` of HELLO_ACK.
    pub ping_interval_ms: u64,
    /// Source addresses 127.0.0.1..=127.0.0.N to spread ephemeral ports over; 0 = one
    /// per 20000 connections.
    pub source_addrs: usize,
    /// Chat: number of servers.
    pub servers: usize,
    /// Chat: text channels per server (the published server channels).
    pub channels_per_server: usize,
    /// Chat: servers each user belongs to (drawn with Zipf popularity).
    pub servers_per_user: usize,
    /// Chat: subscribe to each server's whole tree (`server:{sid}`, which also carries
    /// member presence: at connect, every user's presence goes to every member of each
    /// of its servers, O(members²) for a big server) instead of its text channels.
    pub server_tree: bool,
    /// Chat: Zipf exponent of server membership and channel popularity.
    pub zipf_exponent: f64,
    /// Chat: DM conversations per user (about; each has two members).
    pub dms_per_user: usize,
    /// Chat: share of events published to DMs.
    pub dm_fraction: f64,
    /// Chat: TYPING_START commands per second over all connections.
    pub typing_per_sec: f64,
    /// Ramp: first step's rate; 0 = `rate`.
    pub ramp_start_rate: f64,
    /// Ramp: each step's rate is the previous one times this.
    pub ramp_factor: f64,
    /// Ramp: length of each step's publishing.
    pub ramp_step_s: f64,
    /// Ramp: at most this many steps.
    pub ramp_max_steps: u32,
    /// Ramp: a step is ok only while its p99 is at most this.
    pub ramp_p99_ms: f64,
    /// Ramp: a step is ok only while achieved deliveries/s >= this share of expected.
    pub ramp_min_achieved: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "custom".into(),
            description: String::new(),
            topology: Topology::Uniform,
            channel_kind: ChannelKind::Server,
            connections: 1000,
            channels: 10,
            subscriptions_per_connection: 1,
            rate: 100.0,
            duration_s: 10.0,
            event_bytes: 200,
            publisher: PublisherKind::Redis,
            connect_concurrency: 256,
            connect_rate: 0.0,
            connect_timeout_s: 30.0,
            connect_retries: 0,
            connect_retry_backoff_ms: 100,
            reconnect_rounds: 0,
            drain_grace_s: 5.0,
            settle_max_s: 30.0,
            ping: true,
            ping_interval_ms: 0,
            source_addrs: 0,
            servers: 500,
            channels_per_server: 5,
            servers_per_user: 3,
            server_tree: false,
            zipf_exponent: 1.0,
            dms_per_user: 4,
            dm_fraction: 0.3,
            typing_per_sec: 0.0,
            ramp_start_rate: 0.0,
            ramp_factor: 1.5,
            ramp_step_s: 10.0,
            ramp_max_steps: 20,
            ramp_p99_ms: 100.0,
            ramp_min_achieved: 0.95,
        }
    }
}

/// Flag overrides, one per scenario key (all optional).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Scenario overrides (each key of a scenario file)")]
pub struct Overrides {
    /// uniform (every channel the same size) or chat.
    #[arg(long)]
    pub topology: Option<Topology>,
    /// Uniform: server or live channels.
    #[arg(long)]
    pub channel_kind: Option<ChannelKind>,
    /// Connections to open (one user each).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Uniform: published channels.
    #[arg(long)]
    pub channels: Option<usize>,
    /// Uniform topology: sets `channels` to connections x subscriptions / this.
    #[arg(long)]
    pub subscribers_per_channel: Option<usize>,
    /// Uniform: channels per connection.
    #[arg(long)]
    pub subscriptions_per_connection: Option<usize>,
    /// Events per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of publishing (the measured phase).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Bytes of each published body (padded).
    #[arg(long)]
    pub event_bytes: Option<usize>,
    /// redis (PUBLISH, as a backend) or admin (POST /api/v1/publish).
    #[arg(long)]
    pub publisher: Option<PublisherKind>,
    /// Connection attempts in flight at once.
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Connection attempts started per second; 0 = unpaced.
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Bound on one attempt (TCP, upgrade, HELLO, SUBSCRIBE).
    #[arg(long)]
    pub connect_timeout_s: Option<f64>,
    /// Retries of a failed attempt (jittered exponential backoff).
    #[arg(long)]
    pub connect_retries: Option<u32>,
    /// First retry backoff, doubled per retry (cap 5 s).
    #[arg(long)]
    pub connect_retry_backoff_ms: Option<u64>,
    /// Times every connection closes and reconnects at once before measuring.
    #[arg(long)]
    pub reconnect_rounds: Option<u32>,
    /// After the last publish, wait up to this for outstanding deliveries.
    #[arg(long)]
    pub drain_grace_s: Option<f64>,
    /// Before measuring, wait up to this for connect-time events to stop.
    #[arg(long)]
    pub settle_max_s: Option<f64>,
    /// PING at the heartbeat interval.
    #[arg(long)]
    pub ping: Option<bool>,
    /// PING period; 0 = heartbeatInterval from HELLO_ACK.
    #[arg(long)]
    pub ping_interval_ms: Option<u64>,
    /// Source addresses 127.0.0.1..=127.0.0.N; 0 = one per 20000 connections.
    #[arg(long)]
    pub source_addrs: Option<usize>,
    /// Chat: servers.
    #[arg(long)]
    pub servers: Option<usize>,
    /// Chat: text channels per server.
    #[arg(long)]
    pub channels_per_server: Option<usize>,
    /// Chat: servers per user (Zipf-popular).
    #[arg(long)]
    pub servers_per_user: Option<usize>,
    /// Chat: subscribe server:{sid} (with member presence) instead of its channels.
    #[arg(long)]
    pub server_tree: Option<bool>,
    /// Chat: Zipf exponent of membership and channel popularity.
    #[arg(long)]
    pub zipf_exponent: Option<f64>,
    /// Chat: DM conversations per user (about).
    #[arg(long)]
    pub dms_per_user: Option<usize>,
    /// Chat: share of events sent to DMs.
    #[arg(long)]
    pub dm_fraction: Option<f64>,
    /// Chat: TYPING_START per second over all connections (while measuring).
    #[arg(long)]
    pub typing_per_sec: Option<f64>,
    /// Ramp: first step rate, events/s; 0 = rate.
    #[arg(long)]
    pub ramp_start_rate: Option<f64>,
    /// Ramp: rate multiplier per step.
    #[arg(long)]
    pub ramp_factor: Option<f64>,
    /// Ramp: seconds of publishing per step.
    #[arg(long)]
    pub ramp_step_s: Option<f64>,
    /// Ramp: most steps.
    #[arg(long)]
    pub ramp_max_steps: Option<u32>,
    /// Ramp: a step is ok while p99 <= this.
    #[arg(long)]
    pub ramp_p99_ms: Option<f64>,
    /// Ramp: a step is ok while achieved/expected deliveries >= this.
    #[arg(long)]
    pub ramp_min_achieved: Option<f64>,
}

macro_rules! apply {
    ($s:expr, $o:expr, $($f:ident),* $(,)?) => {
        $( if let Some(v) = $o.$f.clone() { $s.$f = v; } )*
    };
}

impl Scenario {
    /// Load a shipped scenario by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario> {
        if let Some((_, text)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            return toml::from_str(text)
                .with_context(|| format!("shipped scenario {name_or_path} does not parse"));
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            let names: Vec<&str> = SHIPPED.iter().map(|(n, _)| *n).collect();
            bail!(
                "no scenario named {name_or_path:?} (shipped: {}) and no such file",
                names.join(", ")
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario file {}", path.display()))?;
        let mut s: Scenario = toml::from_str(&text)
            .with_context(|| format!("scenario file {} does not parse", path.display()))?;
        if s.name == "custom" {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                s.name = stem.to_owned();
            }
        }
        Ok(s)
    }

    /// Apply the flags, then check the result.
    pub fn apply(&mut self, o: &Overrides) -> Result<()> {
        apply!(
            self,
            o,
            topology,
            channel_kind,
            connections,
            channels,
            subscriptions_per_connection,
            rate,
            duration_s,
            event_bytes,
            publisher,
            connect_concurrency,
            connect_rate,
            connect_timeout_s,
            connect_retries,
            connect_retry_backoff_ms,
            reconnect_rounds,
            drain_grace_s,
            settle_max_s,
            ping,
            ping_interval_ms,
            source_addrs,
            servers,
            channels_per_server,
            servers_per_user,
            server_tree,
            zipf_exponent,
            dms_per_user,
            dm_fraction,
            typing_per_sec,
            ramp_start_rate,
            ramp_factor,
            ramp_step_s,
            ramp_max_steps,
            ramp_p99_ms,
            ramp_min_achieved,
        );
        if let Some(spc) = o.subscribers_per_channel {
            if o.channels.is_some() {
                bail!("give --channels or --subscribers-per-channel, not both");
            }
            if spc == 0 {
                bail!("--subscribers-per-channel must be at least 1");
            }
            let subs = self.connections * self.subscriptions_per_connection;
            self.channels = subs.div_ceil(spc).max(1);
        }
        self.validate()
    }

    pub fn validate(&self) -> Result<()> {
        let pos = |v: f64, what: &str| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!("{what} must be a positive number, got {v}");
            }
            Ok(())
        };
        if self.connections == 0 {
            bail!("connections must be at least 1");
        }
        if self.topology == Topology::Uniform {
            if self.channels == 0 {
                bail!("channels must be at least 1");
            }
            if self.subscriptions_per_connection == 0 {
                bail!("subscriptions_per_connection must be at least 1");
            }
        } else {
            if self.servers == 0 || self.channels_per_server == 0 {
                bail!("chat needs servers >= 1 and channels_per_server >= 1");
            }
            if self.servers_per_user == 0 || self.servers_per_user > self.servers {
                bail!("servers_per_user must be between 1 and servers");
            }
            if !(0.0..=1.0).contains(&self.dm_fraction) {
                bail!("dm_fraction must be within 0..=1");
            }
            if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
                bail!("zipf_exponent must be >= 0");
            }
            if !(self.typing_per_sec.is_finite() && self.typing_per_sec >= 0.0) {
                bail!("typing_per_sec must be >= 0");
            }
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!("rate must be >= 0");
        }
        if !(self.duration_s.is_finite() && self.duration_s >= 0.0) {
            bail!("duration_s must be >= 0");
        }
        if self.duration_s > 24.0 * 3600.0 {
            bail!("duration_s is bounded to one day");
        }
        if self.connect_concurrency == 0 {
            bail!("connect_concurrency must be at least 1");
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            bail!("connect_rate must be >= 0 (0 = unpaced)");
        }
        pos(self.connect_timeout_s, "connect_timeout_s")?;
        if self.connect_retries > 100 {
            bail!("connect_retries is at most 100");
        }
        if self.connect_retry_backoff_ms > 60_000 {
            bail!("connect_retry_backoff_ms is at most 60000");
        }
        if !(self.drain_grace_s.is_finite() && self.drain_grace_s >= 0.0) {
            bail!("drain_grace_s must be >= 0");
        }
        if !(self.settle_max_s.is_finite() && (0.0..=3600.0).contains(&self.settle_max_s)) {
            bail!("settle_max_s must be within 0..=3600");
        }
        if self.source_addrs > 254 {
            bail!("source_addrs is at most 254 (127.0.0.1..=127.0.0.254)");
        }
        if self.reconnect_rounds > 100 {
            bail!("reconnect_rounds is at most 100");
        }
        pos(self.ramp_factor, "ramp_factor")?;
        if self.ramp_factor <= 1.0 {
            bail!("ramp_factor must be greater than 1");
        }
        pos(self.ramp_step_s, "ramp_step_s")?;
        pos(self.ramp_p99_ms, "ramp_p99_ms")?;
        if !(0.0..=1.0).contains(&self.ramp_min_achieved) {
            bail!("ramp_min_achieved must be within 0..=1");
        }
        if self.ramp_max_steps == 0 || self.ramp_max_steps > 200 {
            bail!("ramp_max_steps must be within 1..=200");
        }
        if !(self.ramp_start_rate.is_finite() && self.ramp_start_rate >= 0.0) {
            bail!("ramp_start_rate must be >= 0");
        }
        Ok(())
    }

    /// Source addresses to use (resolving 0 = auto).
    pub fn effective_source_addrs(&self) -> usize {
        if self.source_addrs > 0 {
            self.source_addrs
        } else {
            self.connections.div_ceil(20_000).clamp(1, 254)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse_and_validate() {
        for (name, _) in SHIPPED {
            let s = Scenario::load(name).expect("parses");
            assert_eq!(&s.name, name);
            s.validate().expect("valid");
        }
        let f = Scenario::load("fanout").expect("fanout");
        assert_eq!(f.connections, 10_000);
        assert_eq!(f.channels, 100);
    }

    #[test]
    fn flags_override() {
        let mut s = Scenario::load("fanout").expect("fanout");
        let o = Overrides {
            connections: Some(300),
            subscribers_per_channel: Some(30),
            rate: Some(7.5),
            ..Default::default()
        };
        s.apply(&o).expect("valid");
        assert_eq!(s.connections, 300);
        assert_eq!(s.channels, 10);
        assert_eq!(s.rate, 7.5);
        let bad = Overrides {
            ramp_factor: Some(0.5),
            ..Default::default()
        };
        assert!(s.apply(&bad).is_err());
    }
}
