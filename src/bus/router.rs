//! The router: a channel-prefix trie from names to the shards that hold them, the
//! node's `seq` counter, and the resume state (replay ring, parked sessions).
//!
//! It runs on the bus thread and is its only owner. Shards tell it when a name gains
//! its first local subscriber or loses its last (`RouteOp`); it applies every
//! pending change before it routes each event, so a shard may answer SUBSCRIBED as
//! soon as it has queued the change (SPEC §3's promise, no round trip). Each event
//! is parsed once, stamped once, encoded once, and pushed — as one `Arc` — into the
//! inbox of every shard that wants it; the router never waits on a shard.

use crossbeam_channel::Receiver;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::inbox::Inbox;
use super::parked::{Grant, Parked, Resumed};
use super::replay::{Floor, Ring};
use super::{event, ResumeLimits, RouteOp, SessionEnded};
use crate::channels::Trie;
use crate::metrics::{DropReason, Metrics};

/// The router-trie value for names held by detached sessions: not a shard, but
/// events under it are still recorded in the replay ring.
const PARKED: u8 = 63;

/// The router: a channel-prefix trie from names to shard ids, the `seq` counter,
/// and the resume state.
pub struct Router {
    trie: Trie<u8>,
    inboxes: Vec<Arc<Inbox>>,
    pub(super) routes: Receiver<RouteOp>,
    seq: u64,
    /// `seq` as shards see it: the last one stamped (a subscription's floor).
    stamped: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    ring: Ring,
    parked: Parked,
    limits: ResumeLimits,
    /// Told when a parked session's window ends unresumed (presence may go offline).
    session_ended: SessionEnded,
}

impl Router {
    pub fn new(
        inboxes: Vec<Arc<Inbox>>,
        routes: Receiver<RouteOp>,
        metrics: Arc<Metrics>,
        limits: ResumeLimits,
        session_ended: SessionEnded,
        stamped: Arc<AtomicU64>,
    ) -> Router {
        Router {
            trie: Trie::new(),
            inboxes,
            routes,
            seq: 0,
            stamped,
            metrics,
            ring: Ring::new(limits.ring_bytes),
            parked: Parked::default(),
            limits,
            session_ended,
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
            (self.session_ended)(&d.claims.sub);
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
                self.metrics.bus.dropped(reason);
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
                    self.metrics.bus.dropped(DropReason::QueueFull);
                }
            }
        }
    }
}
