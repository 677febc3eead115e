//! Several `xcord-loadtest` processes, on one host or many, loading one fleet.
//!
//! Every process builds the same plan (same scenario, `--seed` and `--run-id`);
//! `--shard I/N` takes connections I, I+N, I+2N, …. One process publishes:
//! shard 0, or a separate `--publish-only` process (then every shard runs with
//! `--connect-only`). They measure the same window by meeting at a **Redis key
//! barrier**: each connecting process, once connected and settled, increments
//! `xcord-lt:{RUN}:ready` (the braces are a cluster hash tag); the publishing process waits until that count reaches
//! N, then writes `xcord-lt:{RUN}:start` = the start time (Unix ns, one second
//! ahead) and publishes from then on; the others wait for that key, then replay the
//! publisher's schedule without sending (same seed, same rate) to know exactly
//! what they are owed. Hosts must agree on the time (NTP): the start and each
//! event's intended send time are wall-clock times.
//!
//! Each process writes its own result with its histograms (`histograms`) and its
//! per-channel figures (`fleet`); `xcord-loadtest merge` sums them exactly.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::target::redact_url;

/// This process's slice of the plan's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole plan.
    pub fn whole() -> Shard {
        Shard { index: 0, count: 1 }
    }

    /// `I/N`, 0 <= I < N.
    pub fn parse(s: &str) -> Result<Shard> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("--shard {s:?}: want I/N, e.g. 0/4"))?;
        let index: usize = i.trim().parse().context("--shard: bad I")?;
        let count: usize = n.trim().parse().context("--shard: bad N")?;
        if count == 0 || index >= count || count > 10_000 {
            bail!("--shard {s}: want 0 <= I < N <= 10000");
        }
        Ok(Shard { index, count })
    }

    /// The plan indices of this shard's connections.
    pub fn ids(&self, total: usize) -> Vec<usize> {
        (self.index..total).step_by(self.count).collect()
    }

    /// How many connections this shard holds.
    pub fn len(&self, total: usize) -> usize {
        total.saturating_sub(self.index).div_ceil(self.count)
    }
}

/// What this process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Connects and publishes (a single run, or shard 0 of a fleet).
    Both,
    /// Connects and accounts; another process publishes.
    Connect,
    /// Publishes only.
    Publish,
}

impl Role {
    pub fn connects(self) -> bool {
        self != Role::Publish
    }
    pub fn publishes(self) -> bool {
        self != Role::Connect
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Both => "connect+publish",
            Role::Connect => "connect",
            Role::Publish => "publish",
        }
    }
}

/// The barrier of one run on one Redis, or on a Redis Cluster (both keys carry
/// the run id as hash tag, so they live in one slot).
pub struct Barrier {
    conn: Box<dyn redis::ConnectionLike + Send>,
    ready_key: String,
    start_key: String,
    timeout: Duration,
}

impl Barrier {
    /// `url` is a Redis URL, or `cluster:` followed by the cluster's seed URLs.
    pub fn open(url: &str, run_id: u64, timeout: Duration) -> Result<Barrier> {
        let conn: Box<dyn redis::ConnectionLike + Send> = match url.strip_prefix("cluster:") {
            Some(seeds) => {
                let nodes: Vec<&str> = seeds.split(',').map(str::trim).collect();
                let c = redis::cluster::ClusterClient::new(nodes)
                    .context("bad --redis-cluster seed list")?;
                Box::new(c.get_connection().with_context(|| {
                    format!(
                        "fleet barrier: cannot reach the cluster at {}",
                        redact_url(seeds)
                    )
                })?)
            }
            None => {
                let client = redis::Client::open(url).context("bad --redis URL")?;
                Box::new(
                    client
                        .get_connection_with_timeout(Duration::from_secs(5))
                        .with_context(|| {
                            format!("fleet barrier: cannot reach Redis at {}", redact_url(url))
                        })?,
                )
            }
        };
        Ok(Barrier {
            conn,
            ready_key: format!("xcord-lt:{{{run_id}}}:ready"),
            start_key: format!("xcord-lt:{{{run_id}}}:start"),
            timeout,
        })
    }

    /// Say this process is connected and settled.
    pub fn arrive(&mut self) -> Result<()> {
        let _: i64 = redis::cmd("INCR")
            .arg(&self.ready_key)
            .query(&mut *self.conn)
            .context("fleet barrier: INCR")?;
        let _: i64 = redis::cmd("EXPIRE")
            .arg(&self.ready_key)
            .arg(3600)
            .query(&mut *self.conn)
            .context("fleet barrier: EXPIRE")?;
        Ok(())
    }

    /// The publisher: wait for `shards` arrivals, then set the start one second
    /// ahead. Returns the start as an Instant of this process.
    pub fn release(&mut self, shards: usize, clock: &Clock) -> Result<Instant> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let n: Option<u64> = redis::cmd("GET")
                .arg(&self.ready_key)
                .query(&mut *self.conn)
                .context("fleet barrier: GET")?;
            if n.unwrap_or(0) >= shards as u64 {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "fleet barrier: {} of {shards} shards ready after {:?}",
                    n.unwrap_or(0),
                    self.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let start = Instant::now() + Duration::from_secs(1);
        let _: () = redis::cmd("SET")
            .arg(&self.start_key)
            .arg(clock.unix_ns(start))
            .arg("EX")
            .arg(3600)
            .query(&mut *self.conn)
            .context("fleet barrier: SET start")?;
        Ok(start)
    }

    /// A connect-only process: wait for the start time the publisher set.
    pub fn wait_start(&mut self, clock: &Clock) -> Result<Instant> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let t: Option<u64> = redis::cmd("GET")
                .arg(&self.start_key)
                .query(&mut *self.conn)
                .context("fleet barrier: GET start")?;
            if let Some(ns) = t {
                let now_ns = clock.now_unix_ns();
                let now = Instant::now();
                return Ok(if ns >= now_ns {
                    now + Duration::from_nanos(ns - now_ns)
                } else {
                    now.checked_sub(Duration::from_nanos(now_ns - ns))
                        .unwrap_or(now)
                });
            }
            if Instant::now() >= deadline {
                bail!("fleet barrier: no start after {:?}", self.timeout);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_plan() {
        let total = 10;
        let mut all: Vec<usize> = Vec::new();
        for i in 0..3 {
            let s = Shard::parse(&format!("{i}/3")).expect("shard");
            let ids = s.ids(total);
            assert_eq!(ids.len(), s.len(total));
            all.extend(ids);
        }
        all.sort();
        assert_eq!(all, (0..total).collect::<Vec<_>>());
        assert!(Shard::parse("3/3").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert!(Shard::parse("x").is_err());
        assert_eq!(Shard::whole().ids(3), vec![0, 1, 2]);
    }
}
