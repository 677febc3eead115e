//! The bus: where events come from, and what shards, presence and the admin route
//! hold to reach it.
//!
//! One dedicated thread owns the bus side: with `--redis` it PSUBSCRIBEs `events:*`
//! (`pubsub.rs`); without, it reads an in-process queue that the admin route and
//! the shards publish into (`memory.rs`). Either way each event meets the same
//! [`Router`] (`router.rs`): parsed once, stamped with the next `seq`, encoded once
//! (`event.rs`), and pushed — as one `Arc` — into the [`Inbox`] of every shard
//! whose subscriptions cover its channel. `replay.rs` and `parked.rs` hold the
//! resume state (SPEC §8); `commands.rs` is the Redis command thread (SISMEMBER,
//! PUBLISH) that shards and presence use.

pub mod commands;
pub mod event;
pub mod inbox;
pub mod memory;
pub mod parked;
pub mod pubsub;
pub mod replay;
pub mod router;

use crossbeam_channel::Sender;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::limits::REDIS_ANSWER_TIMEOUT;
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
    Redis(commands::Commands),
}

impl Bus {
    /// Start the bus thread(s): Redis when `redis_url` is set, else in-process.
    pub fn start(
        redis_url: Option<&str>,
        inboxes: Vec<Arc<Inbox>>,
        metrics: Arc<Metrics>,
        limits: RouterLimits,
        session_ended: SessionEnded,
    ) -> Result<Arc<Bus>, String> {
        let (routes_tx, routes_rx) = crossbeam_channel::unbounded();
        let stamped = Arc::new(AtomicU64::new(0));
        let router = Router::new(
            inboxes,
            routes_rx,
            metrics.clone(),
            limits,
            session_ended,
            stamped.clone(),
        );
        let kind = match redis_url {
            None => BusKind::Memory(memory::start(router)?),
            Some(url) => {
                let client =
                    ::redis::Client::open(url).map_err(|e| format!("bad --redis URL: {e}"))?;
                pubsub::start(client.clone(), router, metrics.clone())?;
                BusKind::Redis(commands::start(client)?)
            }
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

    /// Give back the route a RESUME grant held for `name` on `shard`.
    pub fn release_route(&self, shard: usize, name: &str) {
        let _ = self.routes.send(RouteOp::Release {
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
                    self.metrics.bus.dropped(DropReason::PublishFailed);
                }
            }
            BusKind::Redis(cmds) => {
                let m = self.metrics.clone();
                cmds.submit(
                    publish_pipe(channel, body),
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
        let body = event::publish_body(event, payload_json);
        let r = match &self.kind {
            BusKind::Memory(tx) => tx
                .try_send(memory::Published {
                    channel: channel.to_owned(),
                    body,
                })
                .map_err(|_| "the in-process bus is full".to_owned()),
            BusKind::Redis(cmds) => cmds
                .query_blocking(publish_pipe(channel, body), REDIS_ANSWER_TIMEOUT)
                .map(|_| ()),
        };
        if r.is_err() {
            self.metrics.bus.dropped(DropReason::PublishFailed);
        }
        r
    }
}
