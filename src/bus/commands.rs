//! The Redis command thread (`xcord-redis`): runs commands for the shards, presence
//! and the admin route — SISMEMBER for authorization, PUBLISH for typing, presence
//! and admin events. Every job queued at the moment goes in one write (up to
//! `COMMAND_BATCH` pipelines), replies are read in one go and delivered through
//! each job's callback. A job that cannot run because Redis is down fails at once
//! (the caller counts it); a shard never blocks on Redis.

use crossbeam_channel::{Receiver, Sender};
use redis::Value;
use std::time::{Duration, Instant};

use crate::limits::{COMMAND_BATCH, COMMAND_QUEUE};
use crate::link::{Backoff, Client, Conn, Pipe};

/// A command reply callback; runs on the Redis thread.
pub type Reply = Box<dyn FnOnce(Result<Vec<Value>, String>) + Send>;

struct Job {
    pipe: Pipe,
    reply: Reply,
}

/// Handle to the command thread.
#[derive(Clone)]
pub struct Commands {
    tx: Sender<Job>,
}

/// Start the `xcord-redis` thread.
pub fn start(client: Client) -> Result<Commands, String> {
    let (tx, rx) = crossbeam_channel::bounded::<Job>(COMMAND_QUEUE);
    std::thread::Builder::new()
        .name("xcord-redis".into())
        .spawn(move || command_loop(client, rx))
        .map_err(|e| format!("cannot start the Redis command thread: {e}"))?;
    Ok(Commands { tx })
}

fn command_loop(client: Client, rx: Receiver<Job>) {
    let mut con: Option<Conn> = None;
    let mut next_try = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut batch: Vec<Job> = Vec::with_capacity(COMMAND_BATCH);
    while let Ok(first) = rx.recv() {
        // Everything queued meanwhile goes in the same round trip: a connect storm's
        // presence publishes cost one write and one read, not one each.
        batch.push(first);
        while batch.len() < COMMAND_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if con.is_none() && Instant::now() >= next_try {
            match client.connect() {
                Ok(c) => {
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
        let pipes: Vec<&Pipe> = batch.iter().map(|j| &j.pipe).collect();
        match c.run_jobs(&pipes) {
            Ok(values) => {
                for (job, v) in batch.drain(..).zip(values) {
                    (job.reply)(Ok(v));
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
    pub fn submit(&self, pipe: Pipe, reply: Reply) {
        if let Err(e) = self.tx.try_send(Job { pipe, reply }) {
            let job = e.into_inner();
            (job.reply)(Err("redis command queue full".to_owned()));
        }
    }

    /// Run a pipeline and await its result from a shard (any executor: the reply
    /// wakes the task from the Redis thread).
    pub async fn query(&self, pipe: Pipe) -> Result<Vec<Value>, String> {
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
    pub fn query_blocking(&self, pipe: Pipe, timeout: Duration) -> Result<Vec<Value>, String> {
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
