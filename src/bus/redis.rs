//! The Redis bus (`--redis`): two plain threads, neither of which ever waits on a shard.
//!
//! * `xcord-bus` owns the pub/sub link: PSUBSCRIBE `events:*`, and hand every
//!   message to the [`Router`]. Redis disconnects a subscriber that falls 32 MB behind,
//!   so this thread only parses, stamps and pushes into bounded shard queues (a full
//!   queue drops and counts). When the link drops it reconnects with exponential
//!   backoff and full jitter, re-PSUBSCRIBEs, and reports `xcord_redis_up 0`
//!   (and `/readyz` 503) meanwhile; nothing published while it was down is replayed
//!   — Redis pub/sub is at-most-once, which is what `RESUME` (§8) covers per client.
//! * `xcord-redis` runs commands for the shards and the admin route — SISMEMBER for
//!   authorization, PUBLISH for typing/presence/admin — every job queued at the
//!   moment goes in one write (up to 256 pipelines), replies are read in one go
//!   and delivered through each job's callback. A job that cannot run
//!   because Redis is down fails at once (the caller counts it); the shard never blocks.

use crossbeam_channel::{Receiver, Sender};
use redis::{Pipeline, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::Router;
use crate::metrics::Metrics;

/// A command reply callback; runs on the Redis thread.
pub type Reply = Box<dyn FnOnce(Result<Vec<Value>, String>) + Send>;

struct Job {
    pipe: Pipeline,
    reply: Reply,
}

/// Handle to the command thread.
#[derive(Clone)]
pub struct Commands {
    tx: Sender<Job>,
}

/// Exponential backoff with full jitter (AWS architecture blog's "full jitter").
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
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let ms = exp.as_millis().max(1) as u64;
        Duration::from_millis(fastrand::u64(ms / 4..=ms))
    }
}

pub fn start(url: &str, router: Router, metrics: Arc<Metrics>) -> Result<Commands, String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad --redis URL: {e}"))?;
    let sub_client = client.clone();
    let m = metrics.clone();
    std::thread::Builder::new()
        .name("xcord-bus".into())
        .spawn(move || pubsub_loop(sub_client, router, m))
        .map_err(|e| format!("cannot start the bus thread: {e}"))?;
    let (tx, rx) = crossbeam_channel::bounded::<Job>(100_000);
    std::thread::Builder::new()
        .name("xcord-redis".into())
        .spawn(move || command_loop(client, rx))
        .map_err(|e| format!("cannot start the Redis command thread: {e}"))?;
    Ok(Commands { tx })
}

fn pubsub_loop(client: redis::Client, mut router: Router, metrics: Arc<Metrics>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut ever_up = false;
    let mut last_warn: Option<Instant> = None;
    loop {
        let outcome = (|| -> Result<(), String> {
            let mut con = client
                .get_connection_with_timeout(Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            let mut ps = con.as_pubsub();
            ps.psubscribe("events:*").map_err(|e| e.to_string())?;
            ps.set_read_timeout(Some(Duration::from_secs(1)))
                .map_err(|e| e.to_string())?;
            if ever_up {
                metrics.bus.reconnects.fetch_add(1, Relaxed);
            }
            ever_up = true;
            metrics.bus.redis_up.store(true, Relaxed);
            backoff.reset();
            info!("redis pub/sub link up (PSUBSCRIBE events:*)");
            loop {
                match ps.get_message() {
                    Ok(msg) => {
                        let channel: Vec<u8> = msg.get_channel().unwrap_or_default();
                        let channel = channel.strip_prefix(b"events:").unwrap_or(&channel);
                        router.route(channel, msg.get_payload_bytes());
                    }
                    Err(e) if e.is_timeout() => router.apply_routes(),
                    Err(e) => return Err(e.to_string()),
                }
            }
        })();
        metrics.bus.redis_up.store(false, Relaxed);
        if let Err(e) = outcome {
            if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                warn!("redis pub/sub link down: {e}; reconnecting with backoff");
                last_warn = Some(Instant::now());
            }
        }
        let until = Instant::now() + backoff.next_delay();
        while Instant::now() < until {
            router.apply_routes();
            std::thread::sleep(
                Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
            );
        }
    }
}

/// Jobs sent to Redis in one write (and their replies read in one go).
const BATCH: usize = 256;

fn command_loop(client: redis::Client, rx: Receiver<Job>) {
    use redis::ConnectionLike;
    let mut con: Option<redis::Connection> = None;
    let mut next_try = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    let mut bytes: Vec<u8> = Vec::new();
    let mut counts: Vec<usize> = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        // Everything queued meanwhile goes in the same round trip: a connect storm's
        // presence publishes cost one write and one read, not one each.
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if con.is_none() && Instant::now() >= next_try {
            match client.get_connection_with_timeout(Duration::from_secs(2)) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                    con = Some(c);
                    backoff.reset();
                }
                Err(_) => next_try = Instant::now() + backoff.next_delay(),
            }
        }
        let Some(c) = con.as_mut() else {
            for job in batch.drain(..) {
                (job.reply)(Err("redis unavailable".to_owned()));
            }
            continue;
        };
        bytes.clear();
        counts.clear();
        for job in &batch {
            bytes.extend_from_slice(&job.pipe.get_packed_pipeline());
            counts.push(job.pipe.len());
        }
        let total: usize = counts.iter().sum();
        match c.req_packed_commands(&bytes, 0, total) {
            Ok(values) => {
                let mut values = values.into_iter();
                for (job, n) in batch.drain(..).zip(counts.iter()) {
                    (job.reply)(Ok(values.by_ref().take(*n).collect()));
                }
            }
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    con = None;
                    next_try = Instant::now();
                }
                let msg = e.to_string();
                for job in batch.drain(..) {
                    (job.reply)(Err(msg.clone()));
                }
            }
        }
    }
}

impl Commands {
    /// Queue a pipeline (not atomic); `reply` runs on the Redis thread with one
    /// value per command, `ignore()` or not (jobs are batched as raw commands).
    /// Fails at once (through `reply`) when the queue is full.
    pub fn submit(&self, pipe: Pipeline, reply: Reply) {
        if let Err(e) = self.tx.try_send(Job { pipe, reply }) {
            let job = e.into_inner();
            (job.reply)(Err("redis command queue full".to_owned()));
        }
    }

    /// Run a pipeline and await its result from a shard (any executor: the reply
    /// wakes the task from the Redis thread).
    pub async fn query(&self, pipe: Pipeline) -> Result<Vec<Value>, String> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.submit(
            pipe,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await
            .unwrap_or_else(|_| Err("redis thread gone".to_owned()))
    }

    /// Run a pipeline from a plain thread, waiting at most `timeout`.
    pub fn query_blocking(&self, pipe: Pipeline, timeout: Duration) -> Result<Vec<Value>, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit(
            pipe,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv_timeout(timeout)
            .unwrap_or_else(|_| Err("redis did not answer in time".to_owned()))
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
}
