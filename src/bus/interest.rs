//! Interest (SPEC §9, `--routing roots`): which roots this node holds, and whether
//! Redis has confirmed each one's `SSUBSCRIBE xcord:{ROOT}`.
//!
//! The router tells it when a name gains its first route on the node (a shard's
//! first holder, or a parked session) and when it loses its last; a root is held
//! while at least one name under it is routed — the automatic `user:{sub}` and
//! parked sessions included — and for up to `linger` after the last one leaves, so
//! a user flapping between tabs does not churn Redis. The pub/sub link takes the
//! changes (`take_changes`) and reports confirmations back (`confirmed`); a shard
//! that makes a root new waits for its confirmation (`wait`) before it answers
//! SUBSCRIBED or HELLO_ACK. In `pattern` routing every root counts as confirmed.

use futures_channel::oneshot;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::channels::root_of;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Wanted; Redis has not confirmed it yet.
    Subscribing,
    /// Confirmed.
    Held,
    /// No name holds it any more; unsubscribed at this time unless one comes back.
    Lingering(Instant),
}

struct Root {
    /// Routed names under this root.
    names: u32,
    state: State,
    /// Shards waiting for the confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

/// What the link must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Subscribe(Box<str>),
    Unsubscribe(Box<str>),
}

pub struct Interest {
    /// `--routing roots`; otherwise every root is confirmed and nothing is tracked.
    enabled: bool,
    linger: Duration,
    roots: HashMap<Box<str>, Root>,
    changes: Vec<Change>,
    /// The earliest linger deadline, if any (an upper bound: checked lazily).
    next_linger: Option<Instant>,
    /// Roots in `Subscribing`, kept as states change: the link reads the confirmed
    /// count on every wake-up (an event each), and counting 10k roots there cost
    /// ~30 µs an event.
    subscribing: usize,
}

impl Interest {
    pub fn new(enabled: bool, linger: Duration) -> Interest {
        Interest {
            enabled,
            linger,
            roots: HashMap::new(),
            changes: Vec::new(),
            next_linger: None,
            subscribing: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A name got its first route on the node.
    pub fn name_added(&mut self, name: &str) {
        let Some(root) = self.root(name) else { return };
        match self.roots.get_mut(root) {
            Some(r) => {
                r.names += 1;
                if let State::Lingering(_) = r.state {
                    r.state = State::Held;
                }
            }
            None => {
                self.roots.insert(
                    root.into(),
                    Root {
                        names: 1,
                        state: State::Subscribing,
                        waiters: Vec::new(),
                    },
                );
                self.subscribing += 1;
                self.changes.push(Change::Subscribe(root.into()));
            }
        }
    }

    /// A name lost its last route on the node.
    pub fn name_removed(&mut self, name: &str, now: Instant) {
        let Some(root) = self.root(name) else { return };
        let Some(r) = self.roots.get_mut(root) else {
            return;
        };
        r.names = r.names.saturating_sub(1);
        if r.names > 0 {
            return;
        }
        match r.state {
            State::Held => {
                let until = now + self.linger;
                r.state = State::Lingering(until);
                self.next_linger = Some(self.next_linger.map_or(until, |t| t.min(until)));
            }
            // Never confirmed: nothing to keep.
            State::Subscribing => {
                self.roots.remove(root);
                self.subscribing -= 1;
                self.changes.push(Change::Unsubscribe(root.into()));
            }
            State::Lingering(_) => {}
        }
    }

    fn root<'a>(&self, name: &'a str) -> Option<&'a str> {
        if self.enabled {
            root_of(name)
        } else {
            None
        }
    }

    /// `reply` fires once `root` is confirmed (at once when it is, or when roots
    /// are not tracked).
    pub fn wait(&mut self, root: &str, reply: oneshot::Sender<()>) {
        match self.roots.get_mut(root) {
            Some(r) if r.state == State::Subscribing => r.waiters.push(reply),
            _ => {
                let _ = reply.send(());
            }
        }
    }

    /// Redis confirmed the SSUBSCRIBE of `root`.
    pub fn confirmed(&mut self, root: &str) {
        if let Some(r) = self.roots.get_mut(root) {
            if r.state == State::Subscribing {
                r.state = State::Held;
                self.subscribing -= 1;
            }
            for w in r.waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// The link lost `root` (its connection dropped, its slot moved): wanted again,
    /// not confirmed until Redis says so.
    pub fn lost(&mut self, root: &str) {
        if let Some(r) = self.roots.get_mut(root) {
            if r.state == State::Held {
                r.state = State::Subscribing;
                self.subscribing += 1;
            }
        }
    }

    /// Whether `root` is wanted (held, being subscribed, or lingering).
    pub fn wanted(&self, root: &str) -> bool {
        self.roots.contains_key(root)
    }

    /// Every wanted root (a new link subscribes them all).
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.roots.keys().map(|k| &**k)
    }

    /// Roots whose linger ended are unsubscribed.
    pub fn tick(&mut self, now: Instant) {
        if self.next_linger.is_none_or(|t| t > now) {
            return;
        }
        let done: Vec<Box<str>> = self
            .roots
            .iter()
            .filter(|(_, r)| matches!(r.state, State::Lingering(t) if t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            self.roots.remove(&k);
            self.changes.push(Change::Unsubscribe(k));
        }
        self.next_linger = self
            .roots
            .values()
            .filter_map(|r| match r.state {
                State::Lingering(t) => Some(t),
                _ => None,
            })
            .min();
    }

    /// What the link must do since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Roots held and confirmed.
    pub fn confirmed_count(&self) -> usize {
        debug_assert_eq!(
            self.subscribing,
            self.roots
                .values()
                .filter(|r| r.state == State::Subscribing)
                .count()
        );
        self.roots.len() - self.subscribing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_lives_while_a_name_holds_it_and_lingers_after() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut i = Interest::new(true, 60 * s);
        i.name_added("server:s1");
        i.name_added("server:s1:channel:c");
        assert_eq!(
            i.take_changes(),
            vec![Change::Subscribe("server:s1".into())]
        );
        let (tx, mut rx) = oneshot::channel();
        i.wait("server:s1", tx);
        assert_eq!(rx.try_recv(), Ok(None), "not confirmed yet");
        i.confirmed("server:s1");
        assert_eq!(rx.try_recv(), Ok(Some(())));
        i.name_removed("server:s1", t0);
        i.name_removed("server:s1:channel:c", t0);
        i.tick(t0 + 30 * s);
        assert!(i.take_changes().is_empty(), "lingering");
        i.name_added("server:s1:channel:d"); // back within the linger: no churn
        i.name_removed("server:s1:channel:d", t0 + 40 * s);
        i.tick(t0 + 90 * s);
        assert!(i.take_changes().is_empty(), "the linger restarted at 40 s");
        i.tick(t0 + 101 * s);
        assert_eq!(
            i.take_changes(),
            vec![Change::Unsubscribe("server:s1".into())]
        );
        assert!(!i.wanted("server:s1"));
    }

    #[test]
    fn a_held_root_answers_at_once_and_pattern_routing_tracks_nothing() {
        let mut i = Interest::new(true, Duration::from_secs(60));
        i.name_added("dm:c1");
        i.confirmed("dm:c1");
        let (tx, mut rx) = oneshot::channel();
        i.wait("dm:c1", tx);
        assert_eq!(rx.try_recv(), Ok(Some(())));
        let mut p = Interest::new(false, Duration::from_secs(60));
        p.name_added("dm:c1");
        assert!(p.take_changes().is_empty());
        let (tx, mut rx) = oneshot::channel();
        p.wait("dm:c1", tx);
        assert_eq!(rx.try_recv(), Ok(Some(())));
    }
}
