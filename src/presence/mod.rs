//! Presence and its Redis layout (SPEC §6, the design document's keys exactly).
//!
//! One `xcord-presence` thread per node owns presence: shards tell it (over a
//! bounded queue, never waiting) when a session starts or ends and when a user sets
//! a status; it keeps the node's user → local-session-count map, and with `--redis`
//! it is the only writer of the presence keys:
//!
//! * `presence:{u}` HASH `status`, `last_seen` — the design document's hash;
//! * `presence:{u}:alive` — `SETEX TTL 1`, refreshed for every user with a live
//!   session here every TTL/3 in one pipeline (never per PING);
//! * `server:{sid}:online` SET — the user while online, for each of the user's
//!   servers (claim ∪ `user:{u}:servers`, remembered in `presence:{u}:servers` so
//!   that whoever writes offline removes exactly what was added);
//! * `presence:{u}:sessions` HASH node-id → sessions of `u` on that node, and
//!   `xcord:node:{id}` (`SETEX TTL`) — a node's liveness; a node counts only its
//!   own field, so two nodes never race: one Lua script (`SYNC`) sets this node's
//!   count and decides online/offline from the sum over live nodes, atomically;
//! * `xcord:presence:expiry` ZSET user → when the alive key lapses: the sweep's index.
//!
//! A node that dies stops refreshing; within TTL + `--presence-sweep-seconds` every
//! live node's sweep sees the lapsed users, and the `CLAIM` script lets exactly one
//! of them (the first; the script flips the status) write offline and broadcast.
//! A starting node sweeps at once. After Redis comes back (empty or not) the node
//! re-asserts every local user with `SYNC`.
//!
//! Without `--redis` presence lives in this thread alone: online at a user's first
//! session, offline at the last, broadcast on the in-process bus.
//!
//! Every change is published as `server.member.presence {serverId, userId,
//! presence}` on `server:{sid}` for each of the user's servers and once as
//! `user.presence {userId, presence}` on `user:{u}:presence`.

mod scripts;
mod worker;

use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Claims;
use crate::bus::Bus;
use crate::limits::PRESENCE_QUEUE;
use crate::metrics::{DropReason, Metrics};

/// What shards tell the presence thread.
#[derive(Debug)]
pub enum Change {
    /// `done` fires once the session is counted (in Redis, with `--redis`): HELLO_ACK
    /// waits for it, so a session on another node that closes right after this one
    /// is acknowledged can never make the user flap offline.
    Start {
        user: String,
        servers: Vec<String>,
        done: Option<futures_channel::oneshot::Sender<()>>,
    },
    End {
        user: String,
    },
    Set {
        user: String,
        status: String,
    },
}

/// What shards and the bus router hold to tell presence about sessions. It knows
/// users and claims, never connections; a change it cannot queue is counted
/// (`publish_failed`) and never waits.
#[derive(Clone)]
pub struct Presence {
    tx: Sender<Change>,
    metrics: Arc<Metrics>,
}

impl Presence {
    /// The handle, and the queue the presence thread will read (made before the
    /// bus: the router ends parked sessions through it).
    pub fn new(metrics: Arc<Metrics>) -> (Presence, Receiver<Change>) {
        let (tx, rx) = crossbeam_channel::bounded(PRESENCE_QUEUE);
        (Presence { tx, metrics }, rx)
    }

    fn send(&self, c: Change) -> bool {
        let ok = self.tx.try_send(c).is_ok();
        if !ok {
            self.metrics.bus.dropped(DropReason::PublishFailed);
        }
        ok
    }

    /// Count a new session; the receiver resolves once it is counted (or could not be).
    pub fn started(&self, claims: &Claims) -> futures_channel::oneshot::Receiver<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.send(Change::Start {
            user: claims.sub.clone(),
            servers: claims.servers.clone(),
            done: Some(tx),
        });
        rx
    }

    /// A session of `user` is over.
    pub fn ended(&self, user: &str) -> bool {
        self.send(Change::End {
            user: user.to_owned(),
        })
    }

    /// SET_PRESENCE.
    pub fn set_status(&self, user: &str, status: &str) {
        self.send(Change::Set {
            user: user.to_owned(),
            status: status.to_owned(),
        });
    }
}

/// Settings of the presence thread.
pub struct Settings {
    pub redis_url: Option<String>,
    pub ttl: Duration,
    pub sweep: Duration,
    pub node_id: String,
}

/// Start the presence thread, reading the queue made by [`Presence::new`].
pub fn start(settings: Settings, rx: Receiver<Change>, bus: Arc<Bus>) -> Result<(), String> {
    let client = match &settings.redis_url {
        Some(u) => {
            Some(redis::Client::open(u.as_str()).map_err(|e| format!("bad --redis URL: {e}"))?)
        }
        None => None,
    };
    std::thread::Builder::new()
        .name("xcord-presence".into())
        .spawn(move || worker::Worker::new(settings, client, bus).run(rx))
        .map(|_| ())
        .map_err(|e| format!("cannot start the presence thread: {e}"))
}
