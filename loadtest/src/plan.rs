//! The plan of a run, fixed before the first connection: the published channels,
//! which connection subscribes to what (and so which published channels it must
//! receive), the token claims of each user, and how the publisher picks a channel.
//! Everything is derived from the scenario and the seed, so a run is reproducible.

use crate::scenario::{ChannelKind, Scenario, Topology};

/// What one connection does.
#[derive(Debug, Clone)]
pub struct ConnPlan {
    /// The token's `sub`.
    pub user: String,
    /// `servers` claim.
    pub servers: Vec<String>,
    /// `dms` claim.
    pub dms: Vec<String>,
    /// What it sends in SUBSCRIBE.
    pub subscribe: Vec<String>,
    /// Published channel indices its subscriptions cover, sorted.
    pub tracked: Vec<u32>,
    /// Channels it may send TYPING_START on (chat).
    pub typing: Vec<String>,
}

/// How the publisher chooses the channel of the next event.
#[derive(Debug, Clone)]
pub enum Chooser {
    /// Event `i` goes to channel `i mod n`.
    RoundRobin(u32),
    /// A draw from this cumulative distribution over the channels.
    Weighted(Vec<f64>),
}

impl Chooser {
    pub fn pick(&self, i: u64, rng: &mut fastrand::Rng) -> u32 {
        match self {
            Chooser::RoundRobin(n) => (i % (*n as u64)) as u32,
            Chooser::Weighted(cdf) => {
                let x = rng.f64() * cdf.last().copied().unwrap_or(1.0);
                let idx = cdf.partition_point(|c| *c <= x);
                idx.min(cdf.len().saturating_sub(1)) as u32
            }
        }
    }

    /// Probability of each channel (for the expected-deliveries estimate).
    fn probabilities(&self, n: usize) -> Vec<f64> {
        match self {
            Chooser::RoundRobin(k) => vec![1.0 / (*k as f64); n],
            Chooser::Weighted(cdf) => {
                let total = cdf.last().copied().unwrap_or(1.0);
                let mut prev = 0.0;
                cdf.iter()
                    .map(|c| {
                        let p = (c - prev) / total;
                        prev = *c;
                        p
                    })
                    .collect()
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Published channel names; an index into this is the `ch` of an event.
    pub channel_names: Vec<String>,
    pub conns: Vec<ConnPlan>,
    pub chooser: Chooser,
    /// Chat with `server_tree`: presence deliveries the gateway owes when every user
    /// comes online (Σ members² over servers); 0 otherwise.
    pub presence_fanout: u64,
    /// Chat: members of the biggest server.
    pub largest_server: u64,
}

impl Plan {
    pub fn build(s: &Scenario, seed: u64) -> Plan {
        match s.topology {
            Topology::Uniform => uniform(s),
            Topology::Chat => chat(s, seed),
        }
    }

    /// Subscribers of each published channel among the connections in `ready`.
    pub fn subscriber_counts(&self, ready: &[bool]) -> Vec<u32> {
        let mut counts = vec![0u32; self.channel_names.len()];
        for (c, plan) in self.conns.iter().enumerate() {
            if ready.get(c).copied().unwrap_or(false) {
                for &ch in &plan.tracked {
                    counts[ch as usize] += 1;
                }
            }
        }
        counts
    }

    /// Expected deliveries per published event, on average (given the counts).
    pub fn mean_fanout(&self, counts: &[u32]) -> f64 {
        let p = self.chooser.probabilities(counts.len());
        p.iter().zip(counts).map(|(p, c)| p * (*c as f64)).sum()
    }

    /// Average subscriptions (SUBSCRIBE entries) per connection.
    pub fn mean_subscriptions(&self) -> f64 {
        let n = self.conns.len().max(1) as f64;
        self.conns.iter().map(|c| c.subscribe.len()).sum::<usize>() as f64 / n
    }
}

fn uniform(s: &Scenario) -> Plan {
    let c = s.channels;
    let channel_names: Vec<String> = (0..c)
        .map(|i| match s.channel_kind {
            ChannelKind::Server => format!("server:lt{i}:channel:main"),
            ChannelKind::Live => format!("live:lt{i}:chat"),
        })
        .collect();
    let per = s.subscriptions_per_connection.min(c);
    let conns = (0..s.connections)
        .map(|i| {
            let mut tracked: Vec<u32> = (0..per).map(|j| ((i * per + j) % c) as u32).collect();
            tracked.sort_unstable();
            tracked.dedup();
            let servers = match s.channel_kind {
                ChannelKind::Server => tracked.iter().map(|ch| format!("lt{ch}")).collect(),
                ChannelKind::Live => Vec::new(),
            };
            ConnPlan {
                user: format!("lt{i}"),
                servers,
                dms: Vec::new(),
                subscribe: tracked
                    .iter()
                    .map(|ch| channel_names[*ch as usize].clone())
                    .collect(),
                tracked,
                typing: Vec::new(),
            }
        })
        .collect();
    Plan {
        channel_names,
        conns,
        chooser: Chooser::RoundRobin(c as u32),
        presence_fanout: 0,
        largest_server: 0,
    }
}

fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    (0..n)
        .map(|r| {
            acc += 1.0 / ((r + 1) as f64).powf(s);
            acc
        })
        .collect()
}

fn draw(cdf: &[f64], rng: &mut fastrand::Rng) -> usize {
    let x = rng.f64() * cdf.last().copied().unwrap_or(1.0);
    cdf.partition_point(|c| *c <= x)
        .min(cdf.len().saturating_sub(1))
}

fn chat(s: &Scenario, seed: u64) -> Plan {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = s.connections;
    let cps = s.channels_per_server;

    // Published channels: every server channel, then every DM conversation.
    let mut channel_names: Vec<String> = Vec::with_capacity(s.servers * cps);
    for sv in 0..s.servers {
        for c in 0..cps {
            channel_names.push(format!("server:lts{sv}:channel:c{c}"));
        }
    }
    let server_channels = channel_names.len();
    let member_of = memberships(s, &mut rng);
    let dms_of = dm_conversations(s, &mut rng, &mut channel_names);
    let dm_channels = channel_names.len() - server_channels;
    let conns = (0..n)
        .map(|u| chat_conn(s, u, &member_of[u], &dms_of[u], &channel_names))
        .collect();
    let mut members = vec![0u64; s.servers];
    for mine in &member_of {
        for &sv in mine {
            members[sv] += 1;
        }
    }
    Plan {
        channel_names,
        conns,
        chooser: Chooser::Weighted(popularity(s, server_channels, dm_channels)),
        presence_fanout: if s.server_tree {
            members.iter().map(|m| m * m).sum()
        } else {
            0
        },
        largest_server: members.iter().copied().max().unwrap_or(0),
    }
}

/// Membership: `servers_per_user` distinct servers per user, Zipf-popular (after
/// many draws that only hit servers a user already has, uniformly at random).
fn memberships(s: &Scenario, rng: &mut fastrand::Rng) -> Vec<Vec<usize>> {
    let server_cdf = zipf_cdf(s.servers, s.zipf_exponent);
    let mut member_of: Vec<Vec<usize>> = Vec::with_capacity(s.connections);
    for _ in 0..s.connections {
        let mut mine: Vec<usize> = Vec::with_capacity(s.servers_per_user);
        let mut tries = 0;
        while mine.len() < s.servers_per_user {
            let sv = if tries < 64 * s.servers_per_user {
                draw(&server_cdf, rng)
            } else {
                rng.usize(..s.servers)
            };
            tries += 1;
            if !mine.contains(&sv) {
                mine.push(sv);
            }
        }
        mine.sort_unstable();
        member_of.push(mine);
    }
    member_of
}

/// DMs: user u starts ceil(dms_per_user / 2) conversations with random partners,
/// so each user is in about dms_per_user of them. Their channels are appended to
/// `channel_names`; returns each user's conversations as channel indices.
fn dm_conversations(
    s: &Scenario,
    rng: &mut fastrand::Rng,
    channel_names: &mut Vec<String>,
) -> Vec<Vec<u32>> {
    let n = s.connections;
    let mut dms_of: Vec<Vec<u32>> = vec![Vec::new(); n];
    if n >= 2 {
        let started = s.dms_per_user.div_ceil(2);
        for u in 0..n {
            for j in 0..started {
                let partner = (u + 1 + rng.usize(..n - 1)) % n;
                let idx = channel_names.len() as u32;
                channel_names.push(format!("dm:ltd{u}x{j}"));
                dms_of[u].push(idx);
                dms_of[partner].push(idx);
            }
        }
    }
    dms_of
}

/// What user `u` of the chat topology claims, subscribes to and tracks.
fn chat_conn(
    s: &Scenario,
    u: usize,
    member_of: &[usize],
    dms_of: &[u32],
    channel_names: &[String],
) -> ConnPlan {
    let cps = s.channels_per_server;
    let mut tracked: Vec<u32> = Vec::new();
    let mut subscribe = Vec::new();
    let mut typing = Vec::new();
    let mut servers = Vec::new();
    for &sv in member_of {
        servers.push(format!("lts{sv}"));
        if s.server_tree {
            subscribe.push(format!("server:lts{sv}"));
        }
        for c in 0..cps {
            let idx = sv * cps + c;
            tracked.push(idx as u32);
            typing.push(channel_names[idx].clone());
            if !s.server_tree {
                subscribe.push(channel_names[idx].clone());
            }
        }
    }
    let mut dms = Vec::new();
    for &idx in dms_of {
        let name = &channel_names[idx as usize];
        dms.push(name.trim_start_matches("dm:").to_owned());
        subscribe.push(name.clone());
        tracked.push(idx);
    }
    tracked.sort_unstable();
    tracked.dedup();
    subscribe.dedup();
    ConnPlan {
        user: format!("lt{u}"),
        servers,
        dms,
        subscribe,
        tracked,
        typing,
    }
}

/// Channel popularity: Zipf over server-channel ranks (the channels of popular
/// servers come first), `dm_fraction` spread evenly over the DMs.
fn popularity(s: &Scenario, server_channels: usize, dm_channels: usize) -> Vec<f64> {
    let zipf = zipf_cdf(server_channels, s.zipf_exponent);
    let ztotal = zipf.last().copied().unwrap_or(1.0);
    let server_share = if dm_channels == 0 {
        1.0
    } else {
        1.0 - s.dm_fraction
    };
    let mut cdf: Vec<f64> = zipf.iter().map(|c| c / ztotal * server_share).collect();
    let mut acc = cdf.last().copied().unwrap_or(0.0);
    for _ in 0..dm_channels {
        acc += s.dm_fraction / dm_channels as f64;
        cdf.push(acc);
    }
    cdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_fanout_has_equal_subscribers() {
        let s = Scenario {
            connections: 300,
            channels: 10,
            ..Default::default()
        };
        let p = Plan::build(&s, 1);
        let counts = p.subscriber_counts(&vec![true; 300]);
        assert_eq!(counts, vec![30; 10]);
        assert_eq!(p.conns[13].subscribe, vec!["server:lt3:channel:main"]);
        assert_eq!(p.conns[13].servers, vec!["lt3"]);
        assert!((p.mean_fanout(&counts) - 30.0).abs() < 1e-9);
    }

    #[test]
    fn chat_covers_server_channels_and_dms() {
        let s = Scenario {
            topology: Topology::Chat,
            connections: 200,
            servers: 20,
            channels_per_server: 3,
            servers_per_user: 2,
            dms_per_user: 2,
            ..Default::default()
        };
        let p = Plan::build(&s, 7);
        let c = &p.conns[5];
        assert_eq!(c.servers.len(), 2);
        // 2 servers x 3 channels + its DMs.
        let dms = c.subscribe.iter().filter(|x| x.starts_with("dm:")).count();
        assert_eq!(c.tracked.len(), 6 + dms);
        assert_eq!(c.subscribe.len(), 6 + dms);
        assert_eq!(p.presence_fanout, 0);
        let tree = Plan::build(
            &Scenario {
                server_tree: true,
                ..s.clone()
            },
            7,
        );
        assert_eq!(tree.conns[5].subscribe.len(), 2 + dms);
        assert!(tree.presence_fanout >= 200 * 2);
        for &t in &c.tracked {
            let name = &p.channel_names[t as usize];
            assert!(c
                .subscribe
                .iter()
                .any(|s| name == s || name.starts_with(&format!("{s}:"))));
        }
        let mut rng = fastrand::Rng::with_seed(3);
        for i in 0..1000 {
            assert!((p.chooser.pick(i, &mut rng) as usize) < p.channel_names.len());
        }
    }
}
