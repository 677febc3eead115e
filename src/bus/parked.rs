//! Sessions waiting to be resumed (SPEC §8), owned by the bus thread: a session
//! whose connection ended uncleanly is parked here with its subscriptions and
//! their floors until a RESUME takes it or its window ends; [`Grant`] is the answer
//! a RESUME gets, queued into the target shard's inbox in order with its events.
//!
//! While parked, a session's names stay routed (to no shard), so events on them
//! are still recorded in the replay ring.

use std::collections::HashMap;
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

/// Detached sessions by id, and how many of them hold each name (for the router's
/// "detached" routes, which keep their channels recorded in the ring).
#[derive(Default)]
pub struct Parked {
    pub sessions: HashMap<String, Detached>,
    pub names: HashMap<String, u32>,
    pub next_expiry: Option<Instant>,
}

impl Parked {
    /// Park a session; returns the names that gained their first holder.
    pub fn park(&mut self, d: Detached) -> Vec<String> {
        let mut first = Vec::new();
        for n in d.names() {
            let c = self.names.entry(n.to_owned()).or_insert(0);
            *c += 1;
            if *c == 1 {
                first.push(n.to_owned());
            }
        }
        self.next_expiry = Some(self.next_expiry.map_or(d.expires, |t| t.min(d.expires)));
        if let Some(old) = self.sessions.insert(d.session_id.clone(), d) {
            // The same session parked twice (should not happen): drop the old names.
            let _ = self.release(&old);
        }
        first
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

    /// Sessions whose window has passed.
    pub fn expired(&mut self, now: Instant) -> Vec<Detached> {
        if self.next_expiry.is_none_or(|t| t > now) {
            return Vec::new();
        }
        let ids: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, d)| d.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let out: Vec<Detached> = ids
            .iter()
            .filter_map(|id| self.sessions.remove(id))
            .collect();
        self.next_expiry = self.sessions.values().map(|d| d.expires).min();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parking_counts_names() {
        let claims = Claims::new("u", &[], &[], 60);
        let d = |id: &str| Detached {
            session_id: id.into(),
            claims: claims.clone(),
            auto_sub: "user:u".into(),
            floor: Floor::default(),
            subs: vec![("live:x".into(), Floor::default())],
            expires: Instant::now(),
        };
        let mut p = Parked::default();
        assert_eq!(p.park(d("a")).len(), 2);
        assert!(p.park(d("b")).is_empty());
        let a = p.sessions.remove("a").unwrap();
        assert!(p.release(&a).is_empty());
        assert_eq!(
            p.expired(Instant::now() + std::time::Duration::from_secs(1))
                .len(),
            1
        );
    }
}
