//! The bus: where events come from, and what shards, presence and the admin route
//! hold to reach it.
//!
//! One dedicated thread owns the bus side: with Redis it holds the pub/sub links
//! (`sub/`: PSUBSCRIBE `events:*`, or with `--routing roots` SSUBSCRIBE
//! `xcord:{ROOT}` for the roots the node's clients hold, on one Redis or a
//! cluster); without, it reads an in-process queue that the admin route and the
//! shards publish into (`memory.rs`). Either way each event meets the same
//! [`Router`] (`router.rs`): parsed once, stamped with the next `seq`, encoded once
//! (`event.rs`), and pushed — as one `Arc` — into the [`Inbox`] of every shard
//! whose subscriptions cover its channel. `interest.rs` tracks the roots held;
//! `replay.rs` and `parked.rs` hold the resume state (SPEC §8); `commands.rs` is the
//! Redis command thread (SISMEMBER, PUBLISH/SPUBLISH) that shards and presence use.

pub mod commands;
pub mod event;
pub mod inbox;
pub mod interest;
pub mod memory;
pub mod parked;
pub mod replay;
pub mod router;
pub mod sub;

use crossbeam_channel::Sender;
use futures_channel::oneshot;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::channels::root_of;
use crate::config::{RedisTarget, Routing};
use crate::limits::{REDIS_ANSWER_TIMEOUT, ROOT_LINGER};
use crate::link::{self, Pipe};
use crate::metrics::{DropReason, Metrics};

pub use event::Event;
pub use inbox::{Ctl, Inbox, Item};
pub use parked::{Detached, Grant, Resumed};
pub use replay::Floor;
pub use router::Router;

/// Called on the bus thread when a parked session's resume window ends unresumed.
pub type SessionEnded = Box<dyn FnMut(&str) + Send>;

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
    /// A shard applied (or gave up) a RESUME grant: the route the grant held
    /// becomes the shard's own (its `Add`), or goes.
    Release {
        shard: u8,
        name: Box<str>,
    },
    /// Tell `reply` once Redis has confirmed the SSUBSCRIBE of `root` (at once when
    /// it has, or with `--routing pattern`). Queued after the `Add`s that made it.
    Await {
        root: Box<str>,
        reply: oneshot::Sender<()>,
    },
    /// A session whose connection ended uncleanly: keep it for the resume window.
    /// Queued before the shard's own `Remove`s, so its channels never stop being recorded.
    Park(Box<Detached>),
    /// A shard is done with a RESUME's grant: it took the session (`parked: None`),
    /// or nobody could and the session goes back to the resume window (`Some`).
    /// Until then the session is lent, and a second RESUME of it waits here for
    /// the outcome instead of being told INVALID_SESSION while it is in flight.
    Settle {
        session_id: String,
        parked: Option<Box<Detached>>,
    },
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

/// Limits the router applies.
#[derive(Clone, Copy, Debug)]
pub struct RouterLimits {
    /// Ring capacity in bytes (0 disables recording).
    pub ring_bytes: usize,
    /// `--send-queue-bytes`: an event whose frame is larger is dropped
    /// (`too_large`), and a replay larger than this is refused (it could only end
    /// in 4010).
    pub max_frame_bytes: usize,
    /// Parked sessions kept at most (`--max-connections`).
    pub max_sessions: usize,
}

/// What shards, presence, the admin route and the node hold to reach the bus.
pub struct Bus {
    routes: Sender<RouteOp>,
    waker: Option<Arc<sub::Waker>>,
    kind: BusKind,
    routing: Routing,
    metrics: Arc<Metrics>,
    stamped: Arc<AtomicU64>,
}

enum BusKind {
    Memory(Sender<memory::Published>),
    Redis(commands::Commands),
}

impl Bus {
    /// Start the bus thread(s): Redis when `redis` is set, else in-process.
    pub fn start(
        redis: Option<&RedisTarget>,
        routing: Routing,
        inboxes: Vec<Arc<Inbox>>,
        metrics: Arc<Metrics>,
        limits: RouterLimits,
        session_ended: SessionEnded,
    ) -> Result<Arc<Bus>, String> {
        let (routes_tx, routes_rx) = crossbeam_channel::unbounded();
        let stamped = Arc::new(AtomicU64::new(0));
        let interest = interest::Interest::new(routing == Routing::Roots, ROOT_LINGER);
        let router = Router::new(
            inboxes,
            routes_rx,
            metrics.clone(),
            limits,
            session_ended,
            stamped.clone(),
            interest,
        );
        let (kind, waker) = match redis {
            None => (BusKind::Memory(memory::start(router)?), None),
            Some(target) => {
                let waker = sub::Waker::new()?;
                sub::start(target, routing, router, metrics.clone(), waker.clone())?;
                let client = link::Client::open(target)?;
                (BusKind::Redis(commands::start(client)?), Some(waker))
            }
        };
        Ok(Arc::new(Bus {
            routes: routes_tx,
            waker,
            kind,
            routing,
            metrics,
            stamped,
        }))
    }

    /// The last `seq` stamped: a subscription made now misses nothing later.
    pub fn stamped(&self) -> u64 {
        self.stamped.load(Relaxed)
    }

    /// Queue a route operation (add, remove, park, resume, await). The bus thread
    /// applies every queued change before it routes the next event, so only an
    /// operation someone may wait on (a RESUME, its settling, a root to confirm)
    /// wakes it: a connect storm's routes cost no wake-up each.
    pub fn route_op(&self, op: RouteOp) {
        let wake = matches!(
            op,
            RouteOp::Resume { .. } | RouteOp::Await { .. } | RouteOp::Settle { .. }
        );
        let _ = self.routes.send(op);
        if wake {
            if let Some(w) = &self.waker {
                w.wake();
            }
        }
    }

    pub fn add_route(&self, shard: usize, name: &str) {
        self.route_op(RouteOp::Add {
            shard: shard as u8,
            name: name.into(),
        });
    }

    pub fn remove_route(&self, shard: usize, name: &str) {
        self.route_op(RouteOp::Remove {
            shard: shard as u8,
            name: name.into(),
        });
    }

    /// Give back the route a RESUME grant held for `name` on `shard`.
    pub fn release_route(&self, shard: usize, name: &str) {
        self.route_op(RouteOp::Release {
            shard: shard as u8,
            name: name.into(),
        });
    }

    /// Resolves once Redis has confirmed `root` (SPEC §9's SUBSCRIBED promise);
    /// dropped (cancelled) if the root stopped being wanted meanwhile.
    pub fn await_root(&self, root: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.route_op(RouteOp::Await {
            root: root.into(),
            reply: tx,
        });
        rx
    }

    /// Whether the node subscribes by root (`--routing roots`).
    pub fn by_roots(&self) -> bool {
        self.routing == Routing::Roots
    }

    /// The Redis command link, when running with Redis.
    pub fn redis(&self) -> Option<&commands::Commands> {
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

    /// Whether a channel can be published: with `--routing roots` it needs a root.
    pub fn publishable(&self, channel: &str) -> bool {
        self.routing == Routing::Pattern || root_of(channel).is_some()
    }

    /// The command that publishes `{"type": event, "payload": payload_json}` on
    /// `channel` as a backend does: `PUBLISH events:{channel}`, or by root
    /// `SPUBLISH xcord:{ROOT}` with the channel in the body.
    fn publish_pipe(&self, channel: &str, event: &str, payload_json: &str) -> Option<Pipe> {
        let mut pipe = Pipe::new();
        match self.routing {
            Routing::Pattern => {
                pipe.cmd("PUBLISH")
                    .arg(format!("events:{channel}"))
                    .arg(event::publish_body(event, payload_json));
            }
            Routing::Roots => {
                let root = root_of(channel)?;
                pipe.cmd("SPUBLISH")
                    .arg(format!("xcord:{{{root}}}"))
                    .arg(event::rooted_body(channel, event, payload_json));
            }
        }
        Some(pipe)
    }

    /// Publish without waiting. A publish that cannot be queued is counted
    /// (`publish_failed`).
    pub fn publish(&self, channel: &str, event: &str, payload_json: &str) {
        match &self.kind {
            BusKind::Memory(tx) => {
                let body = event::publish_body(event, payload_json);
                let p = memory::Published {
                    channel: channel.to_owned(),
                    body,
                };
                if tx.try_send(p).is_err() {
                    self.metrics.bus.dropped(DropReason::PublishFailed);
                }
            }
            BusKind::Redis(cmds) => {
                let Some(pipe) = self.publish_pipe(channel, event, payload_json) else {
                    self.metrics.bus.dropped(DropReason::BadChannel);
                    return;
                };
                let m = self.metrics.clone();
                cmds.submit(
                    pipe,
                    Box::new(move |r| {
                        if r.is_err() {
                            m.bus.dropped(DropReason::PublishFailed);
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
        let r = match &self.kind {
            BusKind::Memory(tx) => tx
                .try_send(memory::Published {
                    channel: channel.to_owned(),
                    body: event::publish_body(event, payload_json),
                })
                .map_err(|_| "the in-process bus is full".to_owned()),
            BusKind::Redis(cmds) => match self.publish_pipe(channel, event, payload_json) {
                Some(pipe) => cmds.query_blocking(pipe, REDIS_ANSWER_TIMEOUT).map(|_| ()),
                None => Err("with --routing roots a channel needs two segments".into()),
            },
        };
        if r.is_err() {
            self.metrics.bus.dropped(DropReason::PublishFailed);
        }
        r
    }
}
