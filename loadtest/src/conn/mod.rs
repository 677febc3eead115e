//! One simulated client, as a task: sign its token, connect (retrying with full
//! jitter as a real client would), report the outcome to the coordinator, live
//! until the coordinator stops the run or starts another connect round, and
//! reconnect then. [`handshake`] makes one attempt, [`session`] is the subscribed
//! life, [`track`] accounts for what arrives.
//!
//! Per connection the tool keeps only a small read buffer and one bitmap per
//! covered channel, so that tens of thousands fit in one process.

mod handshake;
mod session;
mod track;

use anyhow::anyhow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::clock::Clock;
use crate::plan::Plan;
use crate::stats::Counters;
use crate::token::TokenMaker;
use session::{session, wait_for_next_round, End};
use track::Tracker;

/// The publisher's tests read their frames back with the receivers' parser.
#[cfg(test)]
pub use track::parse_lt;

type Ws = WebSocketStream<TcpStream>;

/// What the coordinator wants of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Ctrl {
    /// Connect round: bumping it makes every connection close and reconnect.
    pub round: u32,
    pub stop: bool,
    pub round_start: Instant,
}

/// The outcome of one connection attempt.
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
    /// TCP connect + upgrade + HELLO → HELLO_ACK.
    pub handshake: Duration,
    /// SUBSCRIBE → last SUBSCRIBED.
    pub subscribe: Duration,
    pub at: Instant,
}

/// What every connection task shares.
pub struct Env {
    pub target: SocketAddr,
    pub url: String,
    pub ws_config: WebSocketConfig,
    pub source_addrs: usize,
    pub connect_timeout: Duration,
    pub connect_retries: u32,
    pub connect_backoff: Duration,
    pub connect_rate: f64,
    pub slots: AtomicU64,
    pub sem: Semaphore,
    pub ping: bool,
    pub ping_interval: Option<Duration>,
    /// Mean time between TYPING_START of one connection.
    pub typing_mean: Option<Duration>,
    /// Typing is sent only while this is set (the measured phase), so that the
    /// connect-time settling is not kept busy by it.
    pub typing_on: std::sync::atomic::AtomicBool,
    pub tokens: TokenMaker,
    pub plan: Arc<Plan>,
    pub counters: Arc<Counters>,
    pub clock: Clock,
    pub run_id: u64,
    pub reports: mpsc::UnboundedSender<ConnectReport>,
}

/// The connection task.
pub async fn run(id: usize, env: Arc<Env>, mut ctrl: watch::Receiver<Ctrl>) {
    let mut tracker = Tracker::new(&env.plan.conns[id].tracked);
    let token = match env.tokens.sign(&env.plan.conns[id]) {
        Ok(t) => t,
        Err(e) => {
            let _ = env.reports.send(ConnectReport {
                id,
                round: 0,
                attempts: 0,
                result: Err(format!("{e:#}")),
            });
            return;
        }
    };
    loop {
        let c = *ctrl.borrow_and_update();
        if c.stop {
            return;
        }
        let round = c.round;
        if env.connect_rate > 0.0 {
            let slot = env.slots.fetch_add(1, Relaxed);
            let at = c.round_start + Duration::from_secs_f64(slot as f64 / env.connect_rate);
            tokio::time::sleep_until(at).await;
        }
        let Some((attempts, result)) = connect(id, &env, &token, &mut tracker, &ctrl, round).await
        else {
            return;
        };
        let (ws, hb, connected) = match result {
            Ok(c) => c,
            Err(e) => {
                let _ = env.reports.send(ConnectReport {
                    id,
                    round,
                    attempts,
                    result: Err(format!("{e:#}")),
                });
                if !wait_for_next_round(&mut ctrl, round).await {
                    return;
                }
                continue;
            }
        };
        env.counters.open.fetch_add(1, Relaxed);
        let _ = env.reports.send(ConnectReport {
            id,
            round,
            attempts,
            result: Ok(connected),
        });
        let end = session(id, &env, ws, hb, &mut tracker, &mut ctrl, round).await;
        env.counters.open.fetch_sub(1, Relaxed);
        match end {
            End::Stop => return,
            End::Reconnect => continue,
            End::Lost => {
                env.counters.lost.fetch_add(1, Relaxed);
                if !wait_for_next_round(&mut ctrl, round).await {
                    return;
                }
            }
        }
    }
}

/// One connection with its retries: (attempts made, the last attempt's outcome).
/// `None` when the run is being torn down (the attempt semaphore is closed).
async fn connect(
    id: usize,
    env: &Env,
    token: &str,
    tracker: &mut Tracker,
    ctrl: &watch::Receiver<Ctrl>,
    round: u32,
) -> Option<(u32, handshake::Attempt)> {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let r = {
            let Ok(_permit) = env.sem.acquire().await else {
                return None;
            };
            tracker.reset_seq();
            tokio::time::timeout(
                env.connect_timeout,
                handshake::attempt(id, env, token, tracker),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow!("connect timeout")))
        };
        if r.is_ok() || attempts > env.connect_retries {
            return Some((attempts, r));
        }
        // Back off (full jitter), unless the coordinator moved on meanwhile.
        let cap = env
            .connect_backoff
            .saturating_mul(1u32 << (attempts - 1).min(16))
            .min(Duration::from_secs(5));
        tokio::time::sleep(cap.mul_f64(fastrand::f64())).await;
        let now = *ctrl.borrow();
        if now.stop || now.round != round {
            return Some((attempts, r));
        }
    }
}
