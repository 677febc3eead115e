//! Sessions waiting to be resumed (SPEC §8), owned by the bus thread: a session
//! whose connection ended uncleanly is parked here with its subscriptions and
//! their floors until a RESUME takes it or its window ends; [`Grant`] is the answer
//! a RESUME gets, queued into the target shard's inbox in order with its events.
//!
//! While parked, a session's names stay routed (to no shard), so events on them
//! are still recorded in the replay ring.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::replay::Floor;
use super::Event;
use crate::auth::Claims;

/// A session whose connection ended uncleanly, kept for `--resume-window-seconds`.
/// Each of its names carries the [`Floor`] of its subscription.
#[derive(Debug, Clone)]
pub struct Detached {
    pub session_id: String,
    pub claims: Claims,
    /// `user:{sub}`, held since `floor`.
    pub auto_sub: String,
    pub floor: Floor,
    /// Explicit subscriptions (normalised names), each with its floor.
    pub subs: Vec<(String, Floor)>,
    pub expires: Instant,
}

impl Detached {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.auto_sub.as_str()).chain(self.subs.iter().map(|(s, _)| s.as_str()))
    }

    /// Every name with its floor.
    pub fn floors(&self) -> impl Iterator<Item = (&str, Floor)> {
        std::iter::once((self.auto_sub.as_str(), self.floor))
            .chain(self.subs.iter().map(|(s, f)| (s.as_str(), *f)))
    }
}

/// What a shard gets back for a RESUME, in order with its events.
pub struct Grant {
    pub conn_key: u32,
    pub conn_id: u64,
    pub outcome: Option<Resumed>,
}

pub struct Resumed {
    pub session: Detached,
    pub replay: Vec<Arc<Event>>,
    /// The last seq covered by the replay; live delivery starts after it.
    pub s0: u64,
}

/// Most resumable sessions one user may have on a node (SPEC §8): past it the
/// user's oldest is dropped.
pub const PER_USER: usize = 16;

struct Entry {
    d: Detached,
    /// Tells this parking apart from an earlier one of the same session id (a
    /// session may be resumed and parked again): stale expiry entries are skipped.
    gen: u64,
}

/// Resumable sessions by id, and how many of them hold each name (for the router's
/// "parked" routes, which keep their channels recorded in the ring). Bounded: at
/// most [`PER_USER`] per user and `max_total` in all, the oldest dropped first;
/// windows end in expiry order (a heap), so ending them costs O(log n) each.
pub struct Parked {
    sessions: HashMap<String, Entry>,
    names: HashMap<String, u32>,
    /// (expiry, generation, session id), earliest first.
    by_expiry: BinaryHeap<Reverse<(Instant, u64, String)>>,
    /// Each user's parked session ids with their generation, oldest first.
    per_user: HashMap<String, VecDeque<(String, u64)>>,
    next_gen: u64,
    max_total: usize,
}

/// What parking a session changed.
#[derive(Default)]
pub struct Parking {
    /// Names that gained their first parked holder.
    pub first: Vec<String>,
    /// Sessions dropped to make room (their windows end now).
    pub dropped: Vec<Detached>,
}

impl Parked {
    pub fn new(max_total: usize) -> Parked {
        Parked {
            sessions: HashMap::new(),
            names: HashMap::new(),
            by_expiry: BinaryHeap::new(),
            per_user: HashMap::new(),
            next_gen: 0,
            max_total: max_total.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn get(&self, session_id: &str) -> Option<&Detached> {
        self.sessions.get(session_id).map(|e| &e.d)
    }

    /// Park a session, dropping the user's oldest past [`PER_USER`] and the
    /// node's oldest past `max_total`. The names of dropped sessions are released
    /// by the caller ([`Parked::release`]).
    pub fn park(&mut self, d: Detached) -> Parking {
        let mut out = Parking::default();
        if let Some(old) = self.take(&d.session_id) {
            // The same session parked twice (should not happen): the new one wins.
            out.dropped.push(old);
        }
        let user = d.claims.sub.clone();
        while self
            .per_user
            .get(&user)
            .is_some_and(|q| q.len() >= PER_USER)
        {
            let oldest = self
                .per_user
                .get(&user)
                .and_then(|q| q.front())
                .map(|(sid, _)| sid.clone());
            match oldest.and_then(|sid| self.take(&sid)) {
                Some(old) => out.dropped.push(old),
                None => break,
            }
        }
        while self.sessions.len() >= self.max_total {
            match self.pop_earliest() {
                Some(old) => out.dropped.push(old),
                None => break,
            }
        }
        for n in d.names() {
            let c = self.names.entry(n.to_owned()).or_insert(0);
            *c += 1;
            if *c == 1 {
                out.first.push(n.to_owned());
            }
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        self.by_expiry
            .push(Reverse((d.expires, gen, d.session_id.clone())));
        self.per_user
            .entry(user)
            .or_default()
            .push_back((d.session_id.clone(), gen));
        self.sessions.insert(d.session_id.clone(), Entry { d, gen });
        out
    }

    /// Remove a session (resumed, or dropped); its names are still counted until
    /// [`Parked::release`].
    pub fn take(&mut self, session_id: &str) -> Option<Detached> {
        let e = self.sessions.remove(session_id)?;
        if let Some(q) = self.per_user.get_mut(&e.d.claims.sub) {
            q.retain(|(sid, g)| !(sid == session_id && *g == e.gen));
            if q.is_empty() {
                self.per_user.remove(&e.d.claims.sub);
            }
        }
        Some(e.d)
    }

    /// Unpark; returns the names that lost their last holder.
    pub fn release(&mut self, d: &Detached) -> Vec<String> {
        let mut last = Vec::new();
        for n in d.names() {
            if let Some(c) = self.names.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    self.names.remove(n);
                    last.push(n.to_owned());
                }
            }
        }
        last
    }

    /// The session whose window ends first (skipping entries of sessions already
    /// taken or parked again since).
    fn pop_earliest(&mut self) -> Option<Detached> {
        while let Some(Reverse((_, gen, sid))) = self.by_expiry.pop() {
            if self.sessions.get(&sid).is_some_and(|e| e.gen == gen) {
                return self.take(&sid);
            }
        }
        None
    }

    /// Sessions whose window has passed, earliest first.
    pub fn expired(&mut self, now: Instant) -> Vec<Detached> {
        let mut out = Vec::new();
        while let Some(Reverse((t, gen, sid))) = self.by_expiry.peek() {
            let live = self.sessions.get(sid).is_some_and(|e| e.gen == *gen);
            if live && *t > now {
                break;
            }
            let sid = sid.clone();
            self.by_expiry.pop();
            if live {
                out.extend(self.take(&sid));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn d(id: &str, user: &str, expires: Instant) -> Detached {
        Detached {
            session_id: id.into(),
            claims: Claims::new(user, &[], &[], 60),
            auto_sub: format!("user:{user}"),
            floor: Floor::default(),
            subs: vec![("live:x".into(), Floor::default())],
            expires,
        }
    }

    #[test]
    fn parking_counts_names() {
        let now = Instant::now();
        let mut p = Parked::new(100);
        assert_eq!(p.park(d("a", "u", now)).first.len(), 2);
        assert!(p.park(d("b", "u", now)).first.is_empty());
        let a = p.take("a").unwrap();
        assert!(p.release(&a).is_empty());
        assert_eq!(p.expired(now + Duration::from_secs(1)).len(), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn at_most_sixteen_per_user_the_oldest_dropped() {
        let now = Instant::now();
        let mut p = Parked::new(1000);
        for i in 0..PER_USER {
            assert!(p.park(d(&format!("s{i}"), "u", now)).dropped.is_empty());
        }
        p.park(d("other", "v", now));
        let r = p.park(d("s16", "u", now));
        assert_eq!(r.dropped.len(), 1);
        assert_eq!(r.dropped[0].session_id, "s0", "the user's oldest goes");
        assert!(p.get("s0").is_none() && p.get("s16").is_some() && p.get("other").is_some());
        assert_eq!(p.len(), PER_USER + 1);
    }

    #[test]
    fn at_most_max_total_the_earliest_dropped() {
        let now = Instant::now();
        let mut p = Parked::new(3);
        for (i, u) in ["a", "b", "c"].iter().enumerate() {
            p.park(d(u, u, now + Duration::from_secs(i as u64)));
        }
        let r = p.park(d("d", "d", now + Duration::from_secs(9)));
        assert_eq!(r.dropped.len(), 1);
        assert_eq!(r.dropped[0].session_id, "a");
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn windows_end_in_order_and_a_reparked_session_keeps_its_new_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut p = Parked::new(100);
        p.park(d("late", "u", t0 + 5 * s));
        p.park(d("early", "v", t0 + s));
        p.park(d("again", "w", t0 + 2 * s));
        // Resumed, then parked again with a later window.
        let again = p.take("again").unwrap();
        p.park(Detached {
            expires: t0 + 9 * s,
            ..again
        });
        let ids = |v: Vec<Detached>| v.into_iter().map(|d| d.session_id).collect::<Vec<_>>();
        assert_eq!(ids(p.expired(t0 + 3 * s)), vec!["early"]);
        assert_eq!(ids(p.expired(t0 + 6 * s)), vec!["late"]);
        assert_eq!(ids(p.expired(t0 + 10 * s)), vec!["again"]);
        assert!(p.is_empty());
    }

    #[test]
    fn ending_many_windows_touches_only_the_due_ones() {
        let t0 = Instant::now();
        let mut p = Parked::new(100_000);
        for i in 0..50_000u64 {
            p.park(d(
                &format!("s{i}"),
                &format!("u{i}"),
                t0 + Duration::from_millis(i),
            ));
        }
        // A mass disconnect: each sweep ends only what is due, earliest first.
        let first = p.expired(t0 + Duration::from_millis(10));
        assert_eq!(first.len(), 11);
        assert_eq!(p.by_expiry.len(), 50_000 - 11);
    }
}
