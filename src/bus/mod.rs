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
pub mod replay;

use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::channels::Trie;
use crate::metrics::Metrics;
use crate::presence::Change;
use crate::shard::inbox::Inbox;

pub use event::Event;
pub use replay::{Detached, Floor, Grant, Resumed};

/// The router-trie value for names held by detached sessions: not a shard, but
/// events under it are still recorded in the replay ring.
const PARKED: u8 = 63;

/// A change to the router's table, or a resume request.
#[derive(Debug)]
pub enum RouteOp {
    Add {
        shard: u8,
        name: Box<str>,
    },
    Remove {
        shard: u8,
        name: Box<str>,
    },
    /// A session whose connection ended uncleanly: keep it for the resume window.
    /// Queued before the shard's own `Remove`s, so its channels never stop being recorded.
    Park(Box<Detached>),
    /// RESUME: answer with a [`Grant`] in `shard`'s inbox.
    Resume {
        session_id: String,
        user: String,
        seq: u64,
        shard: u8,
        conn_key: u32,
        conn_id: u64,
    },
}

/// Limits the router applies to resumes.
#[derive(Clone, Copy, Debug)]
pub struct ResumeLimits {
    /// Ring capacity in bytes (0 disables recording).
    pub ring_bytes: usize,
    /// A replay larger than this is refused (it could only end in 4010).
    pub max_replay_bytes: usize,
}

/// The router: a channel-prefix trie from names to shard ids, the `seq` counter,
/// and the resume state.
pub struct Router {
    trie: Trie<u8>,
    inboxes: Vec<Arc<Inbox>>,
    routes: Receiver<RouteOp>,
    seq: u64,
    /// `seq` as shards see it: the last one stamped (a subscription's floor).
    stamped: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    ring: replay::Ring,
    parked: replay::Parked,
    limits: ResumeLimits,
    presence: Sender<Change>,
}

impl Router {
    pub fn new(
        inboxes: Vec<Arc<Inbox>>,
        routes: Receiver<RouteOp>,
        metrics: Arc<Metrics>,
        limits: ResumeLimits,
        presence: Sender<Change>,
        stamped: Arc<AtomicU64>,
    ) -> Router {
        Router {
            trie: Trie::new(),
            inboxes,
            routes,
            seq: 0,
            stamped,
            metrics,
            ring: replay::Ring::new(limits.ring_bytes),
            parked: replay::Parked::default(),
            limits,
            presence,
        }
    }

    /// Apply every queued route change, and end sessions whose window passed.
    pub fn apply_routes(&mut self) {
        while let Ok(op) = self.routes.try_recv() {
            self.apply(op);
        }
        self.expire(Instant::now());
    }

    pub fn apply(&mut self, op: RouteOp) {
        match op {
            RouteOp::Add { shard, name } => {
                self.trie.insert(&name, shard);
            }
            RouteOp::Remove { shard, name } => {
                self.trie.remove(&name, shard);
            }
            RouteOp::Park(d) => {
                for n in self.parked.park(*d) {
                    self.trie.insert(&n, PARKED);
                }
            }
            RouteOp::Resume {
                session_id,
                user,
                seq,
                shard,
                conn_key,
                conn_id,
            } => {
                let outcome = self.resume(&session_id, &user, seq, shard);
                if let Some(inbox) = self.inboxes.get(shard as usize) {
                    inbox.push_grant(Box::new(Grant {
                        conn_key,
                        conn_id,
                        outcome,
                    }));
                }
            }
        }
    }

    fn resume(&mut self, session_id: &str, user: &str, seq: u64, shard: u8) -> Option<Resumed> {
        let d = self.parked.sessions.get(session_id)?;
        // Nothing at or below every name's floor can be wanted: a resume from an
        // older `seq` needs the ring to reach back only that far.
        let from = d
            .floors()
            .map(|(_, f)| f.local())
            .min()
            .unwrap_or(0)
            .max(seq);
        if d.claims.sub != user
            || d.expires <= Instant::now()
            || seq > self.seq
            || self.ring.evicted_max_seq > from
        {
            return None;
        }
        // An event is replayed if some name covering its channel was held before it
        // (its floor admits it): what the session would have received.
        let mut names: Trie<Floor> = Trie::new();
        for (n, floor) in d.floors() {
            names.insert(n, floor);
        }
        let replay = self.ring.after(from, |e, mask| {
            let mut held = false;
            names.for_each_covering(&e.channel, |f| held |= f.admits(e.seq, mask));
            held
        });
        let bytes: usize = replay.iter().map(|e| e.frame.len()).sum();
        if bytes > self.limits.max_replay_bytes {
            return None;
        }
        let d = self.parked.sessions.remove(session_id)?;
        // The new shard's routes go in before the next event is routed: the seam.
        for n in d.names() {
            self.trie.insert(n, shard);
        }
        for n in self.parked.release(&d) {
            self.trie.remove(&n, PARKED);
        }
        Some(Resumed {
            session: d,
            replay,
            s0: self.seq,
        })
    }

    fn expire(&mut self, now: Instant) {
        for d in self.parked.expired(now) {
            for n in self.parked.release(&d) {
                self.trie.remove(&n, PARKED);
            }
            // The session is over: now the user may go offline.
            let _ = self.presence.try_send(Change::End {
                user: d.claims.sub.clone(),
            });
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
        self.stamped.store(self.seq, Relaxed);
        let mut mask: u64 = 0;
        self.trie
            .for_each_covering(&ev.channel, |shard| mask |= 1u64 << shard);
        if mask == 0 {
            return;
        }
        let ev = Arc::new(ev);
        if self.limits.ring_bytes > 0 {
            self.ring.push(ev.clone(), mask);
        }
        mask &= !(1u64 << PARKED);
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

/// `PUBLISH events:{channel} body`, as a backend does.
fn publish_pipe(channel: &str, body: Vec<u8>) -> ::redis::Pipeline {
    let mut pipe = ::redis::pipe();
    pipe.cmd("PUBLISH")
        .arg(format!("events:{channel}"))
        .arg(body)
        .ignore();
    pipe
}

/// What shards, the admin route and the node hold to reach the bus.
pub struct Bus {
    routes: Sender<RouteOp>,
    kind: BusKind,
    metrics: Arc<Metrics>,
    stamped: Arc<AtomicU64>,
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
        limits: ResumeLimits,
        presence: Sender<Change>,
    ) -> Result<Arc<Bus>, String> {
        let (routes_tx, routes_rx) = crossbeam_channel::unbounded();
        let stamped = Arc::new(AtomicU64::new(0));
        let router = Router::new(
            inboxes,
            routes_rx,
            metrics.clone(),
            limits,
            presence,
            stamped.clone(),
        );
        let kind = match redis_url {
            None => BusKind::Memory(memory::start(router)?),
            Some(url) => BusKind::Redis(redis::start(url, router, metrics.clone())?),
        };
        Ok(Arc::new(Bus {
            routes: routes_tx,
            kind,
            metrics,
            stamped,
        }))
    }

    /// The last `seq` stamped: a subscription made now misses nothing later.
    pub fn stamped(&self) -> u64 {
        self.stamped.load(Relaxed)
    }

    pub fn add_route(&self, shard: usize, name: &str) {
        let _ = self.routes.send(RouteOp::Add {
            shard: shard as u8,
            name: name.into(),
        });
    }

    /// Queue a route operation (park, resume).
    pub fn route_op(&self, op: RouteOp) {
        let _ = self.routes.send(op);
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
                let m = self.metrics.clone();
                cmds.submit(
                    publish_pipe(channel, body),
                    Box::new(move |r| {
                        if r.is_err() {
                            m.bus.dropped("publish_failed");
                        }
                    }),
                );
            }
        }
    }

    /// Publish and wait for the outcome (the admin route's 202 means "accepted by
    /// the bus"). A failure is counted (`publish_failed`).
    pub fn publish_wait(
        &self,
        channel: &str,
        event: &str,
        payload_json: &str,
    ) -> Result<(), String> {
        let body = event::publish_body(event, payload_json);
        let r = match &self.kind {
            BusKind::Memory(tx) => tx
                .try_send(memory::Published {
                    channel: channel.to_owned(),
                    body,
                })
                .map_err(|_| "the in-process bus is full".to_owned()),
            BusKind::Redis(cmds) => cmds
                .query_blocking(
                    publish_pipe(channel, body),
                    std::time::Duration::from_secs(3),
                )
                .map(|_| ()),
        };
        if r.is_err() {
            self.metrics.bus.dropped("publish_failed");
        }
        r
    }
}
