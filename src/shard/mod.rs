//! A shard: one glommio executor pinned to one core, with its own SO_REUSEPORT
//! listener, the sockets it accepted, and the channel-prefix trie of their
//! subscriptions. Nothing here is shared with another thread except the inbox
//! (lock-free queue in) and the metrics (relaxed atomics out).
//!
//! Tasks on a shard: the accept loop (`accept.rs`); per connection its reader
//! (`reader.rs`) and, only while something must wait for the socket, its writer
//! (`conn.rs`); the inbox loop that fans events out (`fanout.rs`); and the sweep
//! (`sweep.rs`). A connection's state is in `conn.rs`, `outbound.rs` and
//! `session.rs`; what each command does is under `commands/`.

pub mod accept;
pub mod commands;
pub mod conn;
pub mod fanout;
pub mod outbound;
pub mod reader;
pub mod session;
mod sweep;

use glommio::net::TcpListener;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::admission::Admission;
use crate::auth::Verifier;
use crate::bus::{Bus, Ctl, Floor, Inbox, Item};
use crate::channels::{root_of, Trie};
use crate::config::Config;
use crate::limits::{SCRATCH_BYTES, TURN_BYTES, TURN_EVENTS};
use crate::metrics::{Latency, Metrics, ShardMetrics};
use crate::presence::{Outbox, Presence};
use conn::Conn;

/// What every shard needs from the node. Immutable or thread-safe.
pub struct Context {
    pub cfg: Config,
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub bus: Arc<Bus>,
    pub presence: Presence,
    pub admission: Arc<Admission>,
}

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
    pub ctx: Arc<Context>,
    pub inbox: Arc<Inbox>,
    pub conns: RefCell<Slab<Rc<Conn>>>,
    /// Subscription name → connection keys.
    pub trie: RefCell<Trie<u32>>,
    /// The socket read buffer, shared by every connection of the shard: it is only
    /// borrowed inside one poll, and its bytes are handed to the connection's
    /// WebSocket codec before the next await.
    pub scratch: RefCell<Vec<u8>>,
    pub latency: RefCell<Latency>,
    pub draining: Signal,
    pub drained: Signal,
    /// Connection ids, never reused (slab keys are): a resume grant names both.
    pub next_conn_id: Cell<u64>,
    pub handshakes: accept::Handshakes,
    /// Connections given frames in the current fan-out turn (see `fanout::flush`).
    pub dirty: RefCell<Vec<u32>>,
    /// The `seq` of the last event taken from the inbox (a subscription's floor).
    pub last_seq: Cell<u64>,
    /// Names this shard routes, per root, and whether Redis confirmed the root
    /// (`--routing roots` only: a subscription under a confirmed root needs no wait).
    pub roots: RefCell<HashMap<Box<str>, (u32, bool)>>,
    /// The inflater for compressed client messages (reset for each one), and
    /// where it writes: shared by the shard's connections, like `scratch`.
    pub inflater: RefCell<flate2::Decompress>,
    pub inflated: RefCell<Vec<u8>>,
    /// Presence changes of this shard's sessions, sent in batches.
    presence_out: Outbox,
}

impl Shard {
    pub fn metrics(&self) -> &ShardMetrics {
        &self.ctx.metrics.shards[self.id]
    }

    /// Where the event stream stands for a subscription made now (resume floors).
    pub fn floor(&self) -> Floor {
        Floor::new(self.id as u8, self.last_seq.get(), self.ctx.bus.stamped())
    }

    /// Add `key` under `name`; tell the router if the name is new on this shard.
    pub fn subscribe(&self, name: &str, key: u32) -> bool {
        let (inserted, first) = self.trie.borrow_mut().insert(name, key);
        if first {
            self.ctx.bus.add_route(self.id, name);
            if let Some(root) = root_of(name) {
                self.roots
                    .borrow_mut()
                    .entry(root.into())
                    .or_insert((0, false))
                    .0 += 1;
            }
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
                self.ctx.bus.remove_route(self.id, name);
                if let Some(root) = root_of(name).filter(|_| self.ctx.bus.by_roots()) {
                    let mut roots = self.roots.borrow_mut();
                    if let Some((n, _)) = roots.get_mut(root) {
                        *n -= 1;
                        if *n == 0 {
                            roots.remove(root);
                        }
                    }
                }
            }
        }
        removed
    }

    /// Whether a subscription under `root` made now must wait for Redis to confirm
    /// the root (`--routing roots`, and this shard has not seen it confirmed).
    pub fn root_is_new(&self, root: &str) -> bool {
        self.ctx.bus.by_roots() && !self.roots.borrow().get(root).is_some_and(|r| r.1)
    }

    /// A session started: counted by presence (batched with this turn's other
    /// changes); the receiver resolves once it is counted.
    pub fn presence_started(
        &self,
        claims: &crate::auth::Claims,
    ) -> futures_channel::oneshot::Receiver<()> {
        let (rx, first) = self.presence_out.started(claims);
        if first {
            self.schedule_presence_flush();
        }
        rx
    }

    /// A session of `user` ended.
    pub fn presence_ended(&self, user: &str) {
        if self.presence_out.ended(user) {
            self.schedule_presence_flush();
        }
    }

    /// SET_PRESENCE.
    pub fn presence_set(&self, claims: &crate::auth::Claims, status: &str) {
        if self.presence_out.set_status(claims, status) {
            self.schedule_presence_flush();
        }
    }

    /// Send the queued presence changes once the tasks ready now have run (a
    /// connect storm's HELLOs of one reactor turn go as one batch).
    fn schedule_presence_flush(&self) {
        if let Some(shard) = current() {
            let queue = glommio::executor().current_task_queue();
            let flush = async move { shard.presence_out.flush(&shard.ctx.presence) };
            if let Ok(t) = glommio::spawn_local_into(flush, queue) {
                t.detach();
                return;
            }
        }
        self.presence_out.flush(&self.ctx.presence);
    }

    /// Redis confirmed `root` (while this shard routes names under it).
    pub fn root_confirmed(&self, root: &str) {
        if let Some(r) = self.roots.borrow_mut().get_mut(root) {
            r.1 = true;
        }
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
pub async fn run(id: usize, ctx: Arc<Context>, inbox: Arc<Inbox>, listener: TcpListener) {
    let shard = Rc::new(Shard {
        id,
        ctx,
        inbox,
        conns: RefCell::new(Slab::new()),
        trie: RefCell::new(Trie::new()),
        scratch: RefCell::new(vec![0u8; SCRATCH_BYTES]),
        latency: RefCell::new(Latency::new()),
        draining: Signal::default(),
        drained: Signal::default(),
        next_conn_id: Cell::new(1),
        handshakes: accept::Handshakes::default(),
        dirty: RefCell::new(Vec::new()),
        last_seq: Cell::new(0),
        roots: RefCell::new(HashMap::new()),
        inflater: RefCell::new(crate::protocol::deflate::inflater()),
        inflated: RefCell::new(Vec::new()),
        presence_out: Outbox::default(),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(shard.clone()));
    glommio::spawn_local(accept::accept_loop(shard.clone(), listener)).detach();
    glommio::spawn_local(sweep::sweep_loop(shard.clone())).detach();
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
                        glommio::spawn_local(sweep::drain(shard.clone())).detach();
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
                Item::Grant(g) => commands::resume::apply_grant(&shard, *g),
            }
            if n >= TURN_EVENTS || bytes >= TURN_BYTES {
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
