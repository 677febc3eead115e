//! A shard: one glommio executor pinned to one core, with its own SO_REUSEPORT
//! listener, the sockets it accepted, and the channel-prefix trie of their
//! subscriptions. Nothing here is shared with another thread except the inbox
//! (lock-free queue in) and the metrics (relaxed atomics out).
//!
//! Tasks on a shard: the accept loop (`accept.rs`), per connection a reader and a
//! writer (`conn.rs`), the inbox loop that fans events out (`fanout.rs`), and a
//! sweep that enforces the HELLO, heartbeat, typing and token deadlines.

pub mod accept;
pub mod conn;
pub mod fanout;
pub mod inbox;

use glommio::net::TcpListener;
use hdrhistogram::Histogram;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::channels::Trie;
use crate::metrics::{latency_histogram, ShardMetrics};
use crate::node::Shared;
use crate::protocol::codes;
use conn::{Conn, Phase};
use inbox::{Ctl, Inbox, Item};

/// A one-shot, single-threaded signal: `wait` resolves once `fire` was called.
#[derive(Default)]
pub struct Signal {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Signal {
    pub fn fire(&self) {
        self.fired.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
    pub fn fired(&self) -> bool {
        self.fired.get()
    }
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.fired.get() {
                Poll::Ready(())
            } else {
                self.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub inbox: Arc<Inbox>,
    pub conns: RefCell<Slab<Rc<Conn>>>,
    /// Subscription name → connection keys.
    pub trie: RefCell<Trie<u32>>,
    /// The socket read buffer, shared by every connection of the shard: it is only
    /// borrowed inside one poll, and its bytes are handed to the connection's
    /// WebSocket codec before the next await.
    pub scratch: RefCell<Vec<u8>>,
    pub latency: RefCell<Histogram<u64>>,
    pub draining: Signal,
    pub drained: Signal,
    /// Connection ids, never reused (slab keys are): a resume grant names both.
    pub next_conn_id: Cell<u64>,
    pub handshakes: accept::Handshakes,
    /// Connections given frames in the current fan-out turn (see `fanout::flush`).
    pub dirty: RefCell<Vec<u32>>,
    /// The `seq` of the last event taken from the inbox (a subscription's floor).
    pub last_seq: Cell<u64>,
}

impl Shard {
    pub fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics.shards[self.id]
    }

    /// Where the event stream stands for a subscription made now (resume floors).
    pub fn floor(&self) -> crate::bus::Floor {
        crate::bus::Floor::new(
            self.id as u8,
            self.last_seq.get(),
            self.shared.bus.stamped(),
        )
    }

    /// Add `key` under `name`; tell the router if the name is new on this shard.
    pub fn subscribe(&self, name: &str, key: u32) -> bool {
        let (inserted, first) = self.trie.borrow_mut().insert(name, key);
        if first {
            self.shared.bus.add_route(self.id, name);
        }
        if inserted {
            self.metrics().subscriptions.fetch_add(1, Relaxed);
        }
        inserted
    }

    pub fn unsubscribe(&self, name: &str, key: u32) -> bool {
        let (removed, last) = self.trie.borrow_mut().remove(name, key);
        if removed {
            self.metrics().subscriptions.fetch_sub(1, Relaxed);
            if last {
                self.shared.bus.remove_route(self.id, name);
            }
        }
        removed
    }
}

thread_local! {
    /// The shard this thread runs (one executor per thread), for the few places
    /// that must spawn a task from a `&Conn` (the on-demand writer).
    static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// The shard running on this thread, if any.
pub fn current() -> Option<Rc<Shard>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Run one shard until it has drained.
pub async fn run(id: usize, shared: Arc<Shared>, inbox: Arc<Inbox>, listener: TcpListener) {
    let shard = Rc::new(Shard {
        id,
        shared,
        inbox,
        conns: RefCell::new(Slab::new()),
        trie: RefCell::new(Trie::new()),
        scratch: RefCell::new(vec![0u8; 64 * 1024]),
        latency: RefCell::new(latency_histogram()),
        draining: Signal::default(),
        drained: Signal::default(),
        next_conn_id: Cell::new(1),
        handshakes: accept::Handshakes::default(),
        dirty: RefCell::new(Vec::new()),
        last_seq: Cell::new(0),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(shard.clone()));
    glommio::spawn_local(accept::accept_loop(shard.clone(), listener)).detach();
    glommio::spawn_local(sweep_loop(shard.clone())).detach();
    glommio::spawn_local(inbox_loop(shard.clone())).detach();
    shard.drained.wait().await;
    CURRENT.with(|c| c.borrow_mut().take());
}

async fn inbox_loop(shard: Rc<Shard>) {
    loop {
        shard.inbox.ready().await;
        while let Some(ctl) = shard.inbox.pop_ctl() {
            match ctl {
                Ctl::Drain => {
                    if !shard.draining.fired() {
                        shard.draining.fire();
                        glommio::spawn_local(drain(shard.clone())).detach();
                    }
                }
            }
        }
        let mut n = 0u32;
        let mut bytes = 0usize;
        while let Some(item) = shard.inbox.pop() {
            match item {
                Item::Event(ev) => {
                    shard.last_seq.set(ev.seq);
                    fanout::deliver(&shard, &ev);
                    n += 1;
                    bytes += ev.frame.len();
                }
                Item::Grant(g) => conn::apply_grant(&shard, *g),
            }
            if n >= 256 || bytes >= 64 * 1024 {
                // Write this slice, and let the writers and readers run between
                // slices of a burst: otherwise a burst larger than
                // --send-queue-bytes would look like a slow consumer.
                n = 0;
                bytes = 0;
                fanout::flush(&shard);
                futures_lite::future::yield_now().await;
            }
        }
        fanout::flush(&shard);
    }
}

/// Close every client with 4011, spread evenly over `--drain-seconds` so a fleet
/// does not reconnect in lockstep; then end the shard.
async fn drain(shard: Rc<Shard>) {
    let window = Duration::from_secs(shard.shared.cfg.args.drain_seconds);
    let keys: Vec<usize> = shard.conns.borrow().iter().map(|(k, _)| k).collect();
    let n = keys.len().max(1) as u32;
    let start = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        let due = start + window.mul_f64(i as f64 / n as f64);
        let now = Instant::now();
        if due > now + Duration::from_millis(2) {
            glommio::timer::sleep(due - now).await;
        }
        let c = shard.conns.borrow().get(*k).cloned();
        if let Some(c) = c {
            c.begin_close(codes::DRAINING, true);
        }
    }
    // Connections that were mid-handshake when the drain began are refused at
    // registration; give the closes a moment to flush, then end.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !shard.conns.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let rest: Vec<Rc<Conn>> = shard
        .conns
        .borrow()
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    for c in rest {
        c.kill();
    }
    glommio::timer::sleep(Duration::from_millis(20)).await;
    flush_latency(&shard);
    shard.drained.fire();
}

fn flush_latency(shard: &Shard) {
    let mut local = shard.latency.borrow_mut();
    if local.is_empty() {
        return;
    }
    if let Ok(mut h) = shard.shared.metrics.latency.lock() {
        let _ = h.add(&*local);
    }
    local.reset();
}

/// Enforce the deadlines: HELLO (4009), heartbeat (4009), token expiry (4004),
/// typing auto-stop, and connections stuck closing.
async fn sweep_loop(shard: Rc<Shard>) {
    let cfg = &shard.shared.cfg;
    let tick = (cfg.heartbeat().min(cfg.hello_timeout()) / 4)
        .clamp(Duration::from_millis(20), Duration::from_millis(500));
    let mut last_flush = Instant::now();
    let mut last_trim = Instant::now();
    loop {
        glommio::timer::sleep(tick).await;
        let now = Instant::now();
        let conns: Vec<Rc<Conn>> = shard
            .conns
            .borrow()
            .iter()
            .map(|(_, c)| c.clone())
            .collect();
        for c in conns {
            match c.phase.get() {
                Phase::AwaitHello => {
                    if now.duration_since(c.opened) > cfg.hello_timeout() {
                        c.begin_close(codes::TIMEOUT, true);
                    }
                }
                Phase::Ready => {
                    if now.duration_since(c.last_rx.get()) > cfg.heartbeat() * 2 {
                        c.begin_close(codes::TIMEOUT, true);
                    } else {
                        conn::on_tick(&shard, &c, now);
                    }
                }
                Phase::Closing => {
                    if c.closing_since
                        .get()
                        .is_some_and(|t| now.duration_since(t) > Duration::from_secs(10))
                    {
                        c.kill();
                    }
                }
            }
        }
        if now.duration_since(last_flush) > Duration::from_millis(500) {
            flush_latency(&shard);
            last_flush = now;
        }
        if now.duration_since(last_trim) > Duration::from_secs(2) {
            // Idle connections give their outbound buffers back; a busy one
            // re-grows its buffer once per trim period at most.
            for (_, c) in shard.conns.borrow().iter() {
                c.trim();
            }
            last_trim = now;
        }
    }
}
