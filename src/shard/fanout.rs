//! FAST PATH: deliver one bus event to every local subscriber.
//!
//! The frame was encoded once by the router; here it is copied into each covering
//! connection's outbound buffer (a memcpy into a reused buffer, no allocation, no
//! JSON work, no lock), and the connection's writer is woken. Writers run after
//! this loop yields, so frames for one socket coalesce into one write per turn
//! (uWebSockets calls this corking).
//!
//! Exactly once: a connection with overlapping subscriptions (`server:s` and
//! `server:s:channel:c`) is visited once per covering node; the per-connection
//! `last_seq` stamp skips the repeats (seq strictly increases per node).

use super::Shard;
use crate::bus::Event;
use std::sync::atomic::Ordering::Relaxed;

pub fn deliver(shard: &Shard, ev: &Event) {
    let conns = shard.conns.borrow();
    let trie = shard.trie.borrow();
    let mut delivered = 0u64;
    let mut slow = 0u64;
    trie.for_each_covering(&ev.channel, |key| {
        let Some(c) = conns.get(key as usize) else {
            return;
        };
        if c.last_seq.get() >= ev.seq {
            return;
        }
        c.last_seq.set(ev.seq);
        if c.push_event(shard, &ev.frame, ev.received) {
            delivered += 1;
        } else {
            slow += 1;
        }
    });
    let m = shard.metrics();
    if delivered > 0 {
        m.delivered.fetch_add(delivered, Relaxed);
    }
    if slow > 0 {
        m.dropped_slow.fetch_add(slow, Relaxed);
    }
}
