//! The authenticated part of a connection: its session (id, claims, subscriptions
//! with their resume floors, typing indicators) and the command rate window.
//! Nothing here does I/O; the commands under `commands/` change it.

use std::time::Instant;

use crate::auth::Claims;
use crate::bus::Floor;
use crate::channels;
use crate::config::RateLimit;

/// A fixed-window rate limiter (SPEC §2 `--rate-limit`): the window opens at the
/// first counted command; `count` commands pass, the rest of the window gets
/// RATE_LIMITED, and the 2×count-th command in one window closes 4008.
#[derive(Debug)]
pub struct RateWindow {
    start: Instant,
    used: u32,
}

pub enum RateVerdict {
    Allow,
    Limited,
    Close,
}

impl RateWindow {
    pub fn new(now: Instant) -> RateWindow {
        RateWindow {
            start: now,
            used: 0,
        }
    }
    pub fn check(&mut self, now: Instant, limit: RateLimit) -> RateVerdict {
        if now.duration_since(self.start) >= limit.window {
            self.start = now;
            self.used = 0;
        }
        self.used = self.used.saturating_add(1);
        if self.used >= limit.count.saturating_mul(2) {
            RateVerdict::Close
        } else if self.used > limit.count {
            RateVerdict::Limited
        } else {
            RateVerdict::Allow
        }
    }
}

/// A connection's explicit subscriptions: a sorted vector of names, each with the
/// [`Floor`] of its subscription (for resume) — a few dozen bytes for the usual
/// handful, binary search for the up-to-1000.
#[derive(Debug, Default, Clone)]
pub struct SubSet(Vec<(Box<str>, Floor)>);

impl SubSet {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(name))
    }
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }
    pub fn insert(&mut self, name: &str, floor: Floor) -> bool {
        match self.find(name) {
            Ok(_) => false,
            Err(i) => {
                // Exact growth: most connections hold a handful, idle for hours.
                self.0.reserve_exact(1);
                self.0.insert(i, (name.into(), floor));
                true
            }
        }
    }
    pub fn remove(&mut self, name: &str) -> bool {
        match self.find(name) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| &**n)
    }
    /// Names with their floors.
    pub fn floors(&self) -> impl Iterator<Item = (&str, Floor)> {
        self.0.iter().map(|(n, f)| (&**n, *f))
    }
}

impl FromIterator<(String, Floor)> for SubSet {
    fn from_iter<I: IntoIterator<Item = (String, Floor)>>(it: I) -> Self {
        let mut v: Vec<(Box<str>, Floor)> = it
            .into_iter()
            .map(|(n, f)| (n.into_boxed_str(), f))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        SubSet(v)
    }
}

/// The authenticated part of a connection. Its automatic subscription,
/// `user:{sub}` (not counted, not removable), is derived from the claims.
pub struct Session {
    pub session_id: String,
    pub claims: Claims,
    /// Where the event stream stood when `user:{sub}` was subscribed (resume).
    pub floor: Floor,
    /// Explicit subscriptions (normalised names).
    pub subs: SubSet,
    pub rate: RateWindow,
    /// Typing indicators this session started: channel → when it ends by itself.
    pub typing: Vec<(String, Instant)>,
}

impl Session {
    /// `user:{sub}`, subscribed at HELLO.
    pub fn auto_sub(&self) -> String {
        channels::user_channel(&self.claims.sub)
    }

    pub fn is_auto_sub(&self, name: &str) -> bool {
        name.strip_prefix("user:") == Some(self.claims.sub.as_str())
    }
}
