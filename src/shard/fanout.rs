//! FAST PATH: deliver one bus event to every local subscriber.
//!
//! The frame was encoded once by the router; here it is copied into each covering
//! connection's outbound buffer (a memcpy into a reused buffer, no allocation, no
//! JSON work, no lock) and the connection is put on the turn's dirty list once.
//! At the end of the turn (`limits::TURN_EVENTS` events or `TURN_BYTES`) the shard
//! writes each dirty socket with one direct `send()` (`Conn::flush_direct`): frames
//! for one socket coalesce into one write per turn (uWebSockets calls this
//! corking), and no task is woken unless the socket pushes back.
//!
//! Exactly once: a connection with overlapping subscriptions (`server:s` and
//! `server:s:channel:c`) is visited once per covering node; the per-connection
//! `last_seq` stamp skips the repeats (seq strictly increases per node).

use slab::Slab;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use super::conn::Conn;
use super::outbound::Push;
use super::Shard;
use crate::bus::Event;
use crate::channels::Trie;

/// What one delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Frames queued.
    pub delivered: u64,
    /// Subscribers that were closing or just became slow consumers (4010).
    pub not_delivered: u64,
}

/// Deliver `ev` to the connections of `conns` that `trie` says cover its channel;
/// each connection given a frame is added to `dirty` once per turn (its `dirty`
/// flag says it is there already).
#[inline]
pub fn deliver_into(
    trie: &Trie<u32>,
    conns: &Slab<Rc<Conn>>,
    ev: &Event,
    send_queue_bytes: usize,
    dirty: &mut Vec<u32>,
) -> Outcome {
    let mut out = Outcome::default();
    // The compressed frame, made (once per node) when the first subscriber that
    // negotiated permessage-deflate is met.
    let mut deflated: Option<&[u8]> = None;
    trie.for_each_covering(&ev.channel, |key| {
        let Some(c) = conns.get(key as usize) else {
            return;
        };
        if c.last_seq.get() >= ev.seq {
            return;
        }
        c.last_seq.set(ev.seq);
        let frame = if c.deflate {
            *deflated.get_or_insert_with(|| ev.deflated())
        } else {
            &ev.frame
        };
        match c.enqueue(frame, ev.received, send_queue_bytes) {
            Push::Queued => {
                out.delivered += 1;
                if !c.out.dirty.get() {
                    c.out.dirty.set(true);
                    dirty.push(key);
                }
            }
            Push::Held => out.delivered += 1,
            Push::Refused => out.not_delivered += 1,
        }
    });
    out
}

pub fn deliver(shard: &Shard, ev: &Event) {
    let o = deliver_into(
        &shard.trie.borrow(),
        &shard.conns.borrow(),
        ev,
        shard.ctx.cfg.send_queue_bytes,
        &mut shard.dirty.borrow_mut(),
    );
    let m = shard.metrics();
    if o.delivered > 0 {
        m.delivered.fetch_add(o.delivered, Relaxed);
    }
    if o.not_delivered > 0 {
        m.dropped_slow.fetch_add(o.not_delivered, Relaxed);
    }
}

/// FAST PATH: the end of a fan-out turn: one direct write per dirty connection.
pub fn flush(shard: &Shard) {
    let mut dirty = shard.dirty.borrow_mut();
    if dirty.is_empty() {
        return;
    }
    let conns = shard.conns.borrow();
    let mut latency = shard.latency.borrow_mut();
    for &key in dirty.iter() {
        if let Some(c) = conns.get(key as usize) {
            c.flush_direct(&mut latency);
        }
    }
    latency.settle();
    dirty.clear();
}
