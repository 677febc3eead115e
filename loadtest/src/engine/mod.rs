//! The connection engine: one OS thread per client core, each with its own epoll
//! loop (mio) over its share of the connections. No task and no timer per
//! connection: a connection is a state machine (connect, upgrade, HELLO, SUBSCRIBE,
//! live, closing) driven by readiness events, and each thread keeps one heap of
//! deadlines (attempt timeouts, retries, PINGs, typing) for all of its connections.
//! Frames are parsed in place from the thread's read buffer ([`ws`]); events are
//! accounted in place ([`track`]) into thread-local counts flushed once per loop
//! turn, latencies into the thread's own histograms.
//!
//! The coordinator (tokio, [`crate::run`]) tells the threads what to do through
//! [`Engine`]: start a connect round, stop; each connection attempt's outcome comes
//! back as a [`ConnectReport`].

mod conn;
pub mod track;
pub mod transport;
mod worker;
pub mod ws;

use anyhow::{Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::plan::Plan;
use crate::stats::Counters;
use crate::token::TokenMaker;

/// The publisher's tests read their frames back with the receivers' parser.
#[cfg(test)]
pub use track::parse_lt;

/// What the coordinator wants of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Ctrl {
    /// Connect round: bumping it makes every connection close and reconnect.
    pub round: u32,
    pub stop: bool,
    pub round_start: Instant,
}

/// The outcome of one connection (its attempts in one round).
#[derive(Debug)]
pub struct ConnectReport {
    pub id: usize,
    pub round: u32,
    /// Attempts made (1 + retries).
    pub attempts: u32,
    pub result: Result<Connected, String>,
}

#[derive(Debug)]
pub struct Connected {
    /// TCP connect (+ TLS) + upgrade + HELLO → HELLO_ACK.
    pub handshake: Duration,
    /// SUBSCRIBE → last SUBSCRIBED.
    pub subscribe: Duration,
    pub at: Instant,
}

/// Where the connections go.
#[derive(Clone)]
pub struct Target {
    /// The resolved address connected to.
    pub addr: SocketAddr,
    /// The `Host` header (`host[:port]` as in the URL).
    pub host_header: String,
    /// The request path (`/api/v1/ws`).
    pub path: String,
    /// For `wss://`: the TLS configuration and the server name (SNI).
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// What every worker thread shares.
pub struct Env {
    pub target: Target,
    /// Each thread's read buffer.
    pub read_buffer: usize,
    /// Interrupt moderation: how long a thread sleeps outside epoll between
    /// turns while events keep coming (0 = block in epoll_wait every turn).
    pub coalesce: Duration,
    /// Source addresses bound before connect, connection `id` on `id % len`;
    /// empty = the kernel chooses.
    pub source_addrs: Vec<IpAddr>,
    pub connect_timeout: Duration,
    pub connect_retries: u32,
    pub connect_backoff: Duration,
    pub connect_rate: f64,
    /// Attempts in flight at once, over all threads (each thread takes its share).
    pub connect_concurrency: usize,
    pub slots: AtomicU64,
    pub ping: bool,
    /// Offer permessage-deflate (`--compression`).
    pub compression: bool,
    pub ping_interval: Option<Duration>,
    /// Mean time between TYPING_START of one connection.
    pub typing_mean: Option<Duration>,
    /// Typing is sent only while this is set (the measured phase).
    pub typing_on: AtomicBool,
    pub tokens: TokenMaker,
    pub plan: Arc<Plan>,
    pub counters: Arc<Counters>,
    pub clock: Clock,
    pub run_id: u64,
    pub reports: mpsc::UnboundedSender<ConnectReport>,
    pub ctrl: Mutex<Ctrl>,
    /// The worker threads' kernel thread ids (for their CPU time).
    pub tids: Mutex<Vec<i32>>,
}

impl Env {
    fn ctrl(&self) -> Ctrl {
        *self.ctrl.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running worker threads.
pub struct Engine {
    env: Arc<Env>,
    wakers: Vec<Arc<mio::Waker>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Start `threads` workers over the connections `ids` (plan indices); they
    /// begin round 0 at once.
    pub fn start(env: Arc<Env>, threads: usize, ids: &[usize]) -> Result<Engine> {
        let threads = threads.max(1);
        let per_thread_inflight = env.connect_concurrency.div_ceil(threads).max(1);
        let mut wakers = Vec::new();
        let mut handles = Vec::new();
        for t in 0..threads {
            let mine: Vec<usize> = ids.iter().copied().skip(t).step_by(threads).collect();
            let poll = mio::Poll::new().context("epoll_create")?;
            let waker = Arc::new(
                mio::Waker::new(poll.registry(), worker::WAKE).context("eventfd for a worker")?,
            );
            wakers.push(waker);
            let env = env.clone();
            let h = std::thread::Builder::new()
                .name(format!("xcord-lt-{t}"))
                .spawn(move || worker::run(env, poll, mine, per_thread_inflight))
                .context("spawn a worker thread")?;
            handles.push(h);
        }
        Ok(Engine {
            env,
            wakers,
            handles,
        })
    }

    fn wake_all(&self) {
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Every connection closes and connects again, as round `round`.
    pub fn next_round(&self, round: u32, start: Instant) {
        self.env.slots.store(0, Relaxed);
        {
            let mut c = self.env.ctrl.lock().unwrap_or_else(|e| e.into_inner());
            c.round = round;
            c.round_start = start;
        }
        self.wake_all();
    }

    /// Close every connection (close 1000) and wait for the threads, at most
    /// `within` (a thread that does not finish is left behind).
    pub fn stop(self, within: Duration) {
        self.env.ctrl.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.wake_all();
        let deadline = Instant::now() + within;
        for h in self.handles {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// CPU seconds of the worker threads so far (`None` before they registered).
pub fn thread_cpu_seconds(env: &Env) -> Option<f64> {
    let tids = env.tids.lock().ok()?.clone();
    if tids.is_empty() {
        return None;
    }
    tids.iter()
        .map(|t| {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{t}/stat")).ok()?;
            crate::procstat::parse_stat_cpu(&stat)
        })
        .sum()
}
