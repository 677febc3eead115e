//! The replay ring (SPEC §8), owned by the bus thread, and the [`Floor`] that says
//! which of its events a subscription would have received.
//!
//! The ring keeps the most recent events that had somewhere to go on this node (an
//! attached subscriber on some shard, or a detached session), as the same `Arc`s the
//! shards fan out — the frames are not copied, and nothing is done per subscriber.
//! It is bounded by bytes (`--replay-buffer-bytes` × shards: the per-shard budget,
//! pooled). `evicted_max_seq` remembers how far eviction has reached, so a resume
//! from an older `seq` is refused whole (`INVALID_SESSION`) instead of replayed in
//! part.
//!
//! Because the bus thread both stamps `seq` and answers resumes, the seam is exact:
//! a grant carries every covered event with `client_seq < seq ≤ s0`, and the routes
//! to the new shard are in place before event `s0 + 1` is routed.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Event;

/// Where the event stream stood when a session subscribed a name: which events on
/// it the session "would have received" (SPEC §8).
///
/// `global` is the last `seq` stamped then; `local` the last event `shard` had
/// taken from its inbox then (never above `global`). Events still in that shard's
/// inbox — stamped before the subscription, delivered after it — have
/// `local < seq ≤ global` and were routed to `shard`; every event stamped later has
/// `seq > global`. So a resume from `seq 0` by a session that saw nothing replays
/// nothing older than the session, and nothing it was sent is skipped.
///
/// 16 bytes (it is kept per subscription): `local` is stored as how far it was
/// behind `global` — an inbox backlog, bounded by the inbox — saturated at
/// `u32::MAX`, which only lowers `local` (a possible extra replay, never a skip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Floor {
    global: u64,
    behind: u32,
    shard: u8,
}

impl Floor {
    pub fn new(shard: u8, local: u64, global: u64) -> Floor {
        let local = local.min(global);
        Floor {
            global,
            behind: u32::try_from(global - local).unwrap_or(u32::MAX),
            shard,
        }
    }

    pub fn local(&self) -> u64 {
        self.global - u64::from(self.behind)
    }

    /// Whether an event (`seq`, routed to the shards in `mask`) came after the
    /// subscription this floor records.
    pub fn admits(&self, seq: u64, mask: u64) -> bool {
        seq > self.global || (seq > self.local() && mask & (1u64 << self.shard) != 0)
    }
}

const EVENT_OVERHEAD: usize = 96;

fn cost(e: &Event) -> usize {
    e.frame.len() + e.channel.len() + EVENT_OVERHEAD
}

pub struct Ring {
    /// Each event with the shards it was routed to.
    events: VecDeque<(Arc<Event>, u64)>,
    bytes: usize,
    cap: usize,
    pub evicted_max_seq: u64,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            events: VecDeque::new(),
            bytes: 0,
            cap,
            evicted_max_seq: 0,
        }
    }

    pub fn push(&mut self, e: Arc<Event>, mask: u64) {
        self.bytes += cost(&e);
        self.events.push_back((e, mask));
        while self.bytes > self.cap {
            match self.events.pop_front() {
                Some((old, _)) => {
                    self.bytes -= cost(&old);
                    self.evicted_max_seq = self.evicted_max_seq.max(old.seq);
                }
                None => break,
            }
        }
    }

    /// Events with `seq > after` that `wanted` accepts (given each event and the
    /// shards it was routed to), oldest first.
    pub fn after(
        &self,
        after: u64,
        mut wanted: impl FnMut(&Event, u64) -> bool,
    ) -> Vec<Arc<Event>> {
        let start = self.events.partition_point(|(e, _)| e.seq <= after);
        self.events
            .range(start..)
            .filter(|(e, mask)| wanted(e, *mask))
            .map(|(e, _)| e.clone())
            .collect()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn ev(seq: u64, ch: &str, n: usize) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            ch.into(),
            vec![0u8; n].into_boxed_slice(),
            Instant::now(),
        ))
    }

    #[test]
    fn ring_evicts_by_bytes_and_remembers_how_far() {
        let mut r = Ring::new(3 * (100 + 3 + EVENT_OVERHEAD));
        for s in 1..=5 {
            r.push(ev(s, "a:b", 100), 1);
        }
        assert_eq!(r.evicted_max_seq, 2);
        let got: Vec<u64> = r.after(3, |_, _| true).iter().map(|e| e.seq).collect();
        assert_eq!(got, vec![4, 5]);
        let got: Vec<u64> = r
            .after(0, |e, _| &*e.channel == "a:b")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(got, vec![3, 4, 5]);
    }

    #[test]
    fn a_floor_admits_what_came_after_its_subscription() {
        let f = Floor::new(1, 10, 20);
        assert_eq!(f.local(), 10);
        assert_eq!(std::mem::size_of::<Floor>(), 16);
        assert!(
            !f.admits(10, 0b10),
            "taken by the shard before the subscription"
        );
        assert!(
            f.admits(15, 0b10),
            "in the shard's inbox: delivered after it"
        );
        assert!(!f.admits(15, 0b01), "went only to another shard before it");
        assert!(f.admits(21, 0b01), "stamped after it");
        assert!(f.admits(21, 0));
    }
}
