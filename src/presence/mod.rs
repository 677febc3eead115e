//! Presence (SPEC §6): who is online, kept in Redis with the design document's
//! keys, and every change broadcast.
//!
//! One `xcord-presence` thread per node owns it (`worker.rs`): shards tell it, over
//! a queue that never blocks them, when a session starts or ends and when a user
//! sets a status — they hand it user ids and claims, never connections. With
//! `--redis` it is the node's only writer of the presence keys (`store.rs`, layout
//! there): each node writes only its own count of a user's sessions, and one Lua
//! script per decision (`scripts.rs`) flips the status atomically — online at the
//! first session anywhere, offline when the sum reaches zero. Alive keys of every
//! user with a session here are refreshed every TTL/3 in one pipeline (never per
//! PING). A node that dies stops refreshing; within TTL + `--presence-sweep-seconds`
//! every live node's sweep sees the lapsed users, and the `CLAIM` script lets
//! exactly one of them write offline and broadcast. A starting node sweeps at once.
//! After Redis was unreachable, restarted or restored, the node's own view replaces
//! what Redis holds for it, zeros included.
//!
//! Without `--redis` presence lives in this thread alone: online at a user's first
//! session, offline at the last, broadcast on the in-process bus.
//!
//! Every change is published as `server.member.presence {serverId, userId,
//! presence}` on `server:{sid}` for each of the user's servers and once as
//! `user.presence {userId, presence}` on `user:{u}:presence`; a SET_PRESENCE that
//! does not change the status publishes nothing.

mod scripts;
mod store;
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
    /// SET_PRESENCE, with the servers the session's claims name.
    Set {
        user: String,
        status: String,
        servers: Vec<String>,
    },
    /// Changes queued together (a shard's [`Outbox`]), in order.
    Batch(Vec<Change>),
}

/// What shards and the bus router hold to tell presence about sessions. It knows
/// users and claims, never connections, and never waits. Session starts and ends
/// are never dropped — a lost one would skew the node's count of a user for good
/// (they are bounded by connections anyway); a SET_PRESENCE past
/// `PRESENCE_QUEUE` queued changes is dropped and counted (`publish_failed`).
#[derive(Clone)]
pub struct Presence {
    tx: Sender<Change>,
    metrics: Arc<Metrics>,
    soft_cap: usize,
}

impl Presence {
    /// The handle, and the queue the presence thread will read (made before the
    /// bus: the router ends parked sessions through it).
    pub fn new(metrics: Arc<Metrics>) -> (Presence, Receiver<Change>) {
        Self::with_cap(metrics, PRESENCE_QUEUE)
    }

    fn with_cap(metrics: Arc<Metrics>, soft_cap: usize) -> (Presence, Receiver<Change>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Presence {
                tx,
                metrics,
                soft_cap,
            },
            rx,
        )
    }

    fn send(&self, c: Change) -> bool {
        let droppable = matches!(c, Change::Set { .. });
        let ok = !(droppable && self.tx.len() >= self.soft_cap) && self.tx.send(c).is_ok();
        if !ok {
            self.metrics.bus.dropped(DropReason::PublishFailed);
        }
        ok
    }

    /// Send what an [`Outbox`] gathered, as one message (one wake of the thread).
    /// Past the soft cap its status changes are dropped and counted.
    pub fn send_batch(&self, mut changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        if self.tx.len() >= self.soft_cap {
            let before = changes.len();
            changes.retain(|c| !matches!(c, Change::Set { .. }));
            for _ in changes.len()..before {
                self.metrics.bus.dropped(DropReason::PublishFailed);
            }
        }
        if self.tx.send(Change::Batch(changes)).is_err() {
            self.metrics.bus.dropped(DropReason::PublishFailed);
        }
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

    /// SET_PRESENCE by a session with these claims.
    pub fn set_status(&self, claims: &Claims, status: &str) {
        self.send(Change::Set {
            user: claims.sub.clone(),
            status: status.to_owned(),
            servers: claims.servers.clone(),
        });
    }
}

/// A shard's queue of presence changes: every change of the shard's sessions goes
/// through it, in order, and leaves as one [`Change::Batch`] when the shard gets
/// to it (a connect storm wakes the presence thread once per batch, not once per
/// session). Single-threaded: each shard owns one.
#[derive(Default)]
pub struct Outbox {
    changes: std::cell::RefCell<Vec<Change>>,
}

impl Outbox {
    /// Queue a change; true when it is the first since the last flush (the caller
    /// schedules one).
    fn push(&self, c: Change) -> bool {
        let mut v = self.changes.borrow_mut();
        v.push(c);
        v.len() == 1
    }

    /// A session started; the receiver resolves once it is counted. The bool: a
    /// flush must be scheduled.
    pub fn started(&self, claims: &Claims) -> (futures_channel::oneshot::Receiver<()>, bool) {
        let (tx, rx) = futures_channel::oneshot::channel();
        let first = self.push(Change::Start {
            user: claims.sub.clone(),
            servers: claims.servers.clone(),
            done: Some(tx),
        });
        (rx, first)
    }

    /// A session of `user` ended; true: a flush must be scheduled.
    pub fn ended(&self, user: &str) -> bool {
        self.push(Change::End {
            user: user.to_owned(),
        })
    }

    /// SET_PRESENCE; true: a flush must be scheduled.
    pub fn set_status(&self, claims: &Claims, status: &str) -> bool {
        self.push(Change::Set {
            user: claims.sub.clone(),
            status: status.to_owned(),
            servers: claims.servers.clone(),
        })
    }

    /// Hand everything queued to the presence thread.
    pub fn flush(&self, presence: &Presence) {
        let changes = std::mem::take(&mut *self.changes.borrow_mut());
        presence.send_batch(changes);
    }
}

/// Settings of the presence thread.
pub struct Settings {
    pub redis: Option<crate::config::RedisTarget>,
    pub ttl: Duration,
    pub sweep: Duration,
    pub node_id: String,
}

/// Start the presence thread, reading the queue made by [`Presence::new`].
pub fn start(settings: Settings, rx: Receiver<Change>, bus: Arc<Bus>) -> Result<(), String> {
    let client = match &settings.redis {
        Some(t) => Some(crate::link::Client::open(t)?),
        None => None,
    };
    std::thread::Builder::new()
        .name("xcord-presence".into())
        .spawn(move || worker::Worker::new(settings, client, bus).run(rx))
        .map(|_| ())
        .map_err(|e| format!("cannot start the presence thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 (smaller ones): a full queue used to drop session ends, leaving
    /// the node's count of the user above zero for good.
    #[test]
    fn a_full_queue_drops_status_changes_never_session_ends() {
        let metrics = Arc::new(Metrics::new(1));
        let (p, rx) = Presence::with_cap(metrics.clone(), 2);
        let claims = Claims::new("u", &[], &[], 60);
        for _ in 0..5 {
            p.set_status(&claims, "idle");
        }
        assert!(p.ended("u"), "a session end is always queued");
        drop(p.started(&claims));
        let kinds: Vec<&str> = rx
            .try_iter()
            .map(|c| match c {
                Change::Start { .. } => "start",
                Change::End { .. } => "end",
                Change::Set { .. } => "set",
                Change::Batch(_) => "batch",
            })
            .collect();
        assert_eq!(kinds, vec!["set", "set", "end", "start"]);
        assert_eq!(
            metrics.bus.dropped[DropReason::PublishFailed as usize]
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }
}
