//! The bus: where events come from, and the router that sends each one only to the
//! shards that want it.
//!
//! One dedicated thread owns the bus side: with `--redis` it PSUBSCRIBEs `events:*`
//! (`redis.rs`); without, it reads an in-process queue that the admin route and the
//! shards publish into (`memory.rs`). Either way each event meets the same
//! [`Router`]: parsed once, stamped with the next `seq`, encoded once (`event.rs`),
//! and pushed — as one `Arc` — into the inbox of every shard whose subscriptions
//! cover its channel.
//!
//! Routes: a shard tells the router when a name gains its first local subscriber or
//! loses its last (`RouteOp`). The router applies every pending route change before
//! it routes each event, so a shard may answer SUBSCRIBED as soon as it has queued
//! the change: any event published after the client reads SUBSCRIBED reaches the
//! router after the change was queued (SPEC §3's promise), with no round trip.

pub mod event;
pub mod memory;
pub mod redis;

use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::channels::Trie;
use crate::metrics::Metrics;
use crate::shard::inbox::Inbox;

pub use event::Event;

/// A change to the router's table.
#[derive(Debug)]
pub enum RouteOp {
    Add { shard: u8, name: Box<str> },
    Remove { shard: u8, name: Box<str> },
}

/// The router: a channel-prefix trie from names to shard ids, and the `seq` counter.
pub struct Router {
    trie: Trie<u8>,
    inboxes: Vec<Arc<Inbox>>,
    routes: Receiver<RouteOp>,
    seq: u64,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(
        inboxes: Vec<Arc<Inbox>>,
        routes: Receiver<RouteOp>,
        metrics: Arc<Metrics>,
    ) -> Router {
        Router {
            trie: Trie::new(),
            inboxes,
            routes,
            seq: 0,
            metrics,
        }
    }

    /// Apply every queued route change.
    pub fn apply_routes(&mut self) {
        while let Ok(op) = self.routes.try_recv() {
            self.apply(op);
        }
    }

    pub fn apply(&mut self, op: RouteOp) {
        match op {
            RouteOp::Add { shard, name } => {
                self.trie.insert(&name, shard);
            }
            RouteOp::Remove { shard, name } => {
                self.trie.remove(&name, shard);
            }
        }
    }

    /// Route one bus message: `channel` without the `events:` prefix, `body` as published.
    pub fn route(&mut self, channel: &[u8], body: &[u8]) {
        let received = Instant::now();
        self.apply_routes();
        self.metrics.bus.received.fetch_add(1, Relaxed);
        self.seq += 1;
        let ev = match event::build(channel, body, self.seq, received) {
            Ok(e) => e,
            Err(reason) => {
                self.seq -= 1;
                self.metrics.bus.dropped(reason.label());
                return;
            }
        };
        let mut mask: u64 = 0;
        self.trie
            .for_each_covering(&ev.channel, |shard| mask |= 1u64 << shard);
        if mask == 0 {
            return;
        }
        let ev = Arc::new(ev);
        while mask != 0 {
            let shard = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if let Some(inbox) = self.inboxes.get(shard) {
                if !inbox.push_event(ev.clone()) {
                    self.metrics.bus.dropped("queue_full");
                }
            }
        }
    }
}

/// What shards, the admin route and the node hold to reach the bus.
pub struct Bus {
    routes: Sender<RouteOp>,
    kind: BusKind,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

enum BusKind {
    Memory(Sender<memory::Published>),
    Redis(redis::Commands),
}

impl Bus {
    /// Start the bus thread(s): Redis when `redis_url` is set, else in-process.
    pub fn start(
        redis_url: Option<&str>,
        inboxes: Vec<Arc<Inbox>>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Bus>, String> {
        let (routes_tx, routes_rx) = crossbeam_channel::unbounded();
        let router = Router::new(inboxes, routes_rx, metrics.clone());
        let kind = match redis_url {
            None => BusKind::Memory(memory::start(router)?),
            Some(url) => BusKind::Redis(redis::start(url, router, metrics.clone())?),
        };
        Ok(Arc::new(Bus {
            routes: routes_tx,
            kind,
            metrics,
            draining: AtomicBool::new(false),
        }))
    }

    pub fn add_route(&self, shard: usize, name: &str) {
        let _ = self.routes.send(RouteOp::Add {
            shard: shard as u8,
            name: name.into(),
        });
    }

    pub fn remove_route(&self, shard: usize, name: &str) {
        let _ = self.routes.send(RouteOp::Remove {
            shard: shard as u8,
            name: name.into(),
        });
    }

    /// The Redis command link, when running with `--redis`.
    pub fn redis(&self) -> Option<&redis::Commands> {
        match &self.kind {
            BusKind::Redis(c) => Some(c),
            BusKind::Memory(_) => None,
        }
    }

    /// Whether events can flow (always on the in-process bus).
    pub fn up(&self) -> bool {
        match &self.kind {
            BusKind::Memory(_) => true,
            BusKind::Redis(_) => self.metrics.bus.redis_up.load(Relaxed),
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Publish `{"type": event, "payload": payload_json}` on `channel`, without
    /// waiting. A publish that cannot be queued is counted (`publish_failed`).
    pub fn publish(&self, channel: &str, event: &str, payload_json: &str) {
        let body = event::publish_body(event, payload_json);
        match &self.kind {
            BusKind::Memory(tx) => {
                if tx
                    .try_send(memory::Published {
                        channel: channel.to_owned(),
                        body,
                    })
                    .is_err()
                {
                    self.metrics.bus.dropped("publish_failed");
                }
            }
            BusKind::Redis(cmds) => {
                let mut pipe = ::redis::pipe();
                pipe.cmd("PUBLISH")
                    .arg(format!("events:{channel}"))
                    .arg(body)
                    .ignore();
                let m = self.metrics.clone();
                cmds.submit(
                    pipe,
                    Box::new(move |r| {
                        if r.is_err() {
                            m.bus.dropped("publish_failed");
                        }
                    }),
                );
            }
        }
    }

    /// Publish and wait for the outcome (the admin route's 202 means "accepted by the bus").
    pub fn publish_wait(
        &self,
        channel: &str,
        event: &str,
        payload_json: &str,
    ) -> Result<(), String> {
        let body = event::publish_body(event, payload_json);
        match &self.kind {
            BusKind::Memory(tx) => tx
                .try_send(memory::Published {
                    channel: channel.to_owned(),
                    body,
                })
                .map_err(|_| "the in-process bus is full".to_owned()),
            BusKind::Redis(cmds) => {
                let mut pipe = ::redis::pipe();
                pipe.cmd("PUBLISH")
                    .arg(format!("events:{channel}"))
                    .arg(body)
                    .ignore();
                cmds.query_blocking(pipe, std::time::Duration::from_secs(3))
                    .map(|_| ())
            }
        }
    }
}
