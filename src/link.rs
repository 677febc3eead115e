//! Redis links: how every thread of the gateway talks to Redis for commands — one
//! server (`--redis`) or a cluster (`--redis-cluster`, each command sent to the
//! master of its key's slot, following MOVED/ASK) behind one [`Conn`] — with a
//! connect timeout and read/write timeouts, so a stalled Redis never stalls a
//! thread for long; and the backoff between attempts. (The pub/sub side, which
//! must also hear what Redis pushes, has its own links: `bus/sub.rs`.)

use redis::{Cmd, ConnectionLike, FromRedisValue, RedisResult, Value};
use std::time::Duration;

use crate::config::RedisTarget;
use crate::limits::{REDIS_CONNECT_TIMEOUT, REDIS_IO_TIMEOUT};

/// Makes command connections to the configured Redis.
#[derive(Clone)]
pub enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

impl Client {
    pub fn open(target: &RedisTarget) -> Result<Client, String> {
        match target {
            RedisTarget::Single(url) => redis::Client::open(url.as_str())
                .map(Client::Single)
                .map_err(|e| format!("bad --redis URL: {e}")),
            RedisTarget::Cluster(seeds) => {
                redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                    .connection_timeout(REDIS_CONNECT_TIMEOUT)
                    .response_timeout(REDIS_IO_TIMEOUT)
                    .retries(2)
                    .build()
                    .map(Client::Cluster)
                    .map_err(|e| format!("bad --redis-cluster seeds: {e}"))
            }
        }
    }

    /// A command connection: bounded connect, bounded reads and writes.
    pub fn connect(&self) -> RedisResult<Conn> {
        match self {
            Client::Single(c) => {
                let c = c.get_connection_with_timeout(REDIS_CONNECT_TIMEOUT)?;
                c.set_read_timeout(Some(REDIS_IO_TIMEOUT))?;
                c.set_write_timeout(Some(REDIS_IO_TIMEOUT))?;
                Ok(Conn::Single(c))
            }
            Client::Cluster(c) => Ok(Conn::Cluster(Box::new(c.get_connection()?))),
        }
    }
}

/// A command connection to one server or to a cluster.
pub enum Conn {
    Single(redis::Connection),
    // Boxed: a cluster connection is four times a single one's size.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

/// Commands sent together: on one server, one round trip; on a cluster, each goes
/// to its slot's master (commands of one pipeline may span slots).
#[derive(Default, Clone)]
pub struct Pipe {
    cmds: Vec<Cmd>,
    ignored: Vec<bool>,
}

impl Pipe {
    pub fn new() -> Pipe {
        Pipe::default()
    }

    /// Start a command.
    pub fn cmd(&mut self, name: &str) -> &mut Pipe {
        self.cmds.push(redis::cmd(name));
        self.ignored.push(false);
        self
    }

    /// An argument of the last command.
    pub fn arg<T: redis::ToRedisArgs>(&mut self, arg: T) -> &mut Pipe {
        if let Some(c) = self.cmds.last_mut() {
            c.arg(arg);
        }
        self
    }

    /// The last command's reply is not returned.
    pub fn ignore(&mut self) -> &mut Pipe {
        if let Some(i) = self.ignored.last_mut() {
            *i = true;
        }
        self
    }

    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    fn single(&self) -> redis::Pipeline {
        let mut p = redis::pipe();
        for (c, ignored) in self.cmds.iter().zip(&self.ignored) {
            p.add_command(c.clone());
            if *ignored {
                p.ignore();
            }
        }
        p
    }

    fn cluster(&self) -> redis::cluster::ClusterPipeline {
        let mut p = redis::cluster::cluster_pipe();
        for (c, ignored) in self.cmds.iter().zip(&self.ignored) {
            p.add_command(c.clone());
            if *ignored {
                p.ignore();
            }
        }
        p
    }

    /// Every command, as raw RESP (one server's batching).
    pub fn packed(&self) -> Vec<u8> {
        self.single().get_packed_pipeline()
    }
}

impl Conn {
    /// Run a pipeline; the replies of the commands not ignored.
    pub fn query<T: FromRedisValue>(&mut self, p: &Pipe) -> RedisResult<T> {
        match self {
            Conn::Single(c) => p.single().query(c),
            Conn::Cluster(c) => p.cluster().query(c),
        }
    }

    /// Run one command.
    pub fn query_cmd<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        cmd.query(self.like())
    }

    /// Run every job's pipeline, every reply returned (ignored or not): one
    /// round trip on one server.
    pub fn run_jobs(&mut self, jobs: &[&Pipe]) -> RedisResult<Vec<Vec<Value>>> {
        match self {
            Conn::Single(c) => {
                let mut bytes = Vec::new();
                let mut total = 0;
                for p in jobs {
                    bytes.extend_from_slice(&p.packed());
                    total += p.len();
                }
                let mut values = c.req_packed_commands(&bytes, 0, total)?.into_iter();
                Ok(jobs
                    .iter()
                    .map(|p| values.by_ref().take(p.len()).collect())
                    .collect())
            }
            Conn::Cluster(c) => {
                let mut all = redis::cluster::cluster_pipe();
                for p in jobs {
                    for cmd in &p.cmds {
                        all.add_command(cmd.clone());
                    }
                }
                let values: Vec<Value> = all.query(c)?;
                let mut values = values.into_iter();
                Ok(jobs
                    .iter()
                    .map(|p| values.by_ref().take(p.len()).collect())
                    .collect())
            }
        }
    }

    fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(c) => c,
            Conn::Cluster(c) => &mut **c,
        }
    }
}

/// Exponential backoff with full jitter (the AWS architecture blog's "full
/// jitter"): attempt `n` waits a random time in `[cap_n / 4, cap_n]`, with
/// `cap_n = min(cap, base · 2^n)` — never zero, so a flapping Redis is not hammered.
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The bound of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap)
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(fastrand::u64(ms / 4..=ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let d: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(d[0] <= Duration::from_millis(100));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(5)));
        assert!(
            d[11] >= Duration::from_millis(1250),
            "capped delay keeps at least a quarter: {:?}",
            d[11]
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    /// The delays are drawn, not fixed: many draws at the cap spread over its range.
    #[test]
    fn backoff_delays_are_jittered_over_their_range() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let draws: Vec<u128> = (0..200).map(|_| b.next_delay().as_millis()).collect();
        let (lo, hi) = (
            *draws.iter().min().unwrap_or(&0),
            *draws.iter().max().unwrap_or(&0),
        );
        assert!(draws.iter().all(|d| (250..=1000).contains(d)), "{draws:?}");
        assert!(lo < 400 && hi > 850, "spread {lo}..{hi} ms over 200 draws");
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(
            distinct.len() > 50,
            "jittered: {} distinct delays",
            distinct.len()
        );
    }
}
