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
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::inbox::Inbox;
use super::interest::Interest;
use super::parked::{Detached, Grant, Parked, Resumed};
use super::replay::{Floor, Ring};
use super::{event, RouteOp, RouterLimits, SessionEnded};
use crate::channels::Trie;
use crate::metrics::{DropReason, Metrics};

/// The router-trie value for names held by parked sessions: outside the shard id
/// space (at most 64 shards, ids 0..=63), so it never takes a shard's bit; events
/// under it are still recorded in the replay ring.
const PARKED: u8 = u8::MAX;

/// A RESUME granted to a shard that has not applied the grant yet: the grant holds
/// the route (name → shard) on its own, so the shard's own accounting (its last
/// local holder of the name leaving meanwhile) cannot remove it under the grant.
#[derive(Debug)]
struct Pending {
    /// Grants on this route not yet released by the shard.
    grants: u32,
    /// Whether the shard itself holds the name (its own Add/Remove).
    shard_holds: bool,
}

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
    /// Routes held by grants, by name and shard (empty but while a RESUME is in flight).
    pending: HashMap<Box<str>, Vec<(u8, Pending)>>,
    /// Sessions granted to a shard that has not settled the grant yet, each with
    /// the RESUMEs of it that arrived meanwhile (answered once it settles).
    lent: HashMap<String, Vec<RouteOp>>,
    limits: RouterLimits,
    /// Told when a parked session's window ends unresumed (presence may go offline).
    session_ended: SessionEnded,
    /// Which roots the node holds on Redis (`--routing roots`).
    interest: Interest,
}

impl Router {
    pub fn new(
        inboxes: Vec<Arc<Inbox>>,
        routes: Receiver<RouteOp>,
        metrics: Arc<Metrics>,
        limits: RouterLimits,
        session_ended: SessionEnded,
        stamped: Arc<AtomicU64>,
        interest: Interest,
    ) -> Router {
        Router {
            trie: Trie::new(),
            inboxes,
            routes,
            seq: 0,
            stamped,
            metrics,
            ring: Ring::new(limits.ring_bytes),
            parked: Parked::new(limits.max_sessions),
            pending: HashMap::new(),
            lent: HashMap::new(),
            limits,
            session_ended,
            interest,
        }
    }

    /// Route `name` to `v` (a shard, or the parked marker); the node's interest
    /// hears of a name new on the node.
    fn add_route(&mut self, name: &str, v: u8) {
        let (_, first) = self.trie.insert(name, v);
        if first {
            self.interest.name_added(name);
        }
    }

    fn remove_route(&mut self, name: &str, v: u8) {
        let (removed, last) = self.trie.remove(name, v);
        if removed && last {
            self.interest.name_removed(name, Instant::now());
        }
    }

    pub fn interest_mut(&mut self) -> &mut Interest {
        &mut self.interest
    }

    /// Whether route changes wait in the queue (the bus thread must not sleep).
    pub fn has_queued_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// A message on a channel that is not the gateway's (counted, dropped).
    pub fn drop_bad_channel(&mut self) {
        self.metrics.bus.received.fetch_add(1, Relaxed);
        self.metrics.bus.dropped(DropReason::BadChannel);
    }

    /// Apply every queued route change, end sessions whose window passed, and
    /// let roots whose linger ended go.
    pub fn apply_routes(&mut self) {
        while let Ok(op) = self.routes.try_recv() {
            self.apply(op);
        }
        let now = Instant::now();
        self.expire(now);
        self.interest.tick(now);
    }

    pub fn apply(&mut self, op: RouteOp) {
        if let RouteOp::Resume { session_id, .. } = &op {
            if let Some(waiting) = self.lent.get_mut(session_id.as_str()) {
                // In flight to another connection: answered once it settles.
                waiting.push(op);
                return;
            }
        }
        match op {
            RouteOp::Add { shard, name } => match self.pending_mut(&name, shard) {
                Some(p) => p.shard_holds = true,
                None => self.add_route(&name, shard),
            },
            RouteOp::Remove { shard, name } => match self.pending_mut(&name, shard) {
                Some(p) => p.shard_holds = false,
                None => self.remove_route(&name, shard),
            },
            RouteOp::Release { shard, name } => self.release_grant(&name, shard),
            RouteOp::Await { root, reply } => self.interest.wait(&root, reply),
            RouteOp::Park(d) => self.park(d),
            RouteOp::Settle { session_id, parked } => {
                let waiting = self.lent.remove(&session_id).unwrap_or_default();
                if let Some(d) = parked {
                    self.park(d);
                }
                // Taken: they are told INVALID_SESSION; parked again: the first
                // may take it (and the rest wait on it again).
                for op in waiting {
                    self.apply(op);
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
                if outcome.is_some() {
                    self.lent.insert(session_id, Vec::new());
                }
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

    fn park(&mut self, d: Box<Detached>) {
        let parking = self.parked.park(*d);
        for n in parking.first {
            self.add_route(&n, PARKED);
        }
        for d in parking.dropped {
            self.end_parked(d);
        }
    }

    fn resume(&mut self, session_id: &str, user: &str, seq: u64, shard: u8) -> Option<Resumed> {
        let d = self.parked.get(session_id)?;
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
        if bytes > self.limits.max_frame_bytes {
            return None;
        }
        let d = self.parked.take(session_id)?;
        // The new shard's routes go in before the next event is routed: the seam.
        // The grant holds them until the shard has applied it (`Release`).
        for n in d.names() {
            self.hold_for_grant(n, shard);
        }
        for n in self.parked.release(&d) {
            self.remove_route(&n, PARKED);
        }
        Some(Resumed {
            session: d,
            replay,
            s0: self.seq,
        })
    }

    fn expire(&mut self, now: Instant) {
        for d in self.parked.expired(now) {
            self.end_parked(d);
        }
    }

    /// A parked session's window ended (or it was dropped to make room).
    fn end_parked(&mut self, d: Detached) {
        for n in self.parked.release(&d) {
            self.remove_route(&n, PARKED);
        }
        // The session is over: now the user may go offline.
        (self.session_ended)(&d.claims.sub);
    }

    fn pending_mut(&mut self, name: &str, shard: u8) -> Option<&mut Pending> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending
            .get_mut(name)?
            .iter_mut()
            .find(|(s, _)| *s == shard)
            .map(|(_, p)| p)
    }

    /// A grant routes `name` to `shard` until the shard releases it.
    fn hold_for_grant(&mut self, name: &str, shard: u8) {
        if let Some(p) = self.pending_mut(name, shard) {
            p.grants += 1;
            return;
        }
        let shard_holds = self.trie.contains(name, shard);
        self.add_route(name, shard);
        self.pending.entry(name.into()).or_default().push((
            shard,
            Pending {
                grants: 1,
                shard_holds,
            },
        ));
    }

    /// The shard applied (or gave up) a grant: the route stays only if the shard
    /// holds the name itself.
    fn release_grant(&mut self, name: &str, shard: u8) {
        let Some(list) = self.pending.get_mut(name) else {
            return;
        };
        let Some(i) = list.iter().position(|(s, _)| *s == shard) else {
            return;
        };
        list[i].1.grants -= 1;
        if list[i].1.grants > 0 {
            return;
        }
        let (_, p) = list.swap_remove(i);
        if list.is_empty() {
            self.pending.remove(name);
        }
        if !p.shard_holds {
            self.remove_route(name, shard);
        }
    }

    /// Route one bus message: `channel` without the `events:` prefix, `body` as
    /// published (`--routing pattern`).
    pub fn route(&mut self, channel: &[u8], body: &[u8]) {
        let received = Instant::now();
        self.apply_routes();
        self.metrics.bus.received.fetch_add(1, Relaxed);
        let ev = event::build(channel, body, self.seq + 1, received);
        self.deliver(ev);
    }

    /// Route one message that came on `xcord:{root}` (`--routing roots`): its body
    /// names its channel, which must be under `root`.
    pub fn route_rooted(&mut self, root: &[u8], body: &[u8]) {
        let received = Instant::now();
        self.apply_routes();
        self.metrics.bus.received.fetch_add(1, Relaxed);
        let ev = event::build_rooted(root, body, self.seq + 1, received);
        self.deliver(ev);
    }

    /// Stamp a built event (its seq is the next one), record it and push it into
    /// the inbox of every shard that wants it.
    fn deliver(&mut self, ev: Result<super::Event, DropReason>) {
        let ev = match ev {
            Ok(e) => e,
            Err(reason) => {
                self.metrics.bus.dropped(reason);
                return;
            }
        };
        if ev.frame.len() > self.limits.max_frame_bytes {
            // It could only close every subscriber 4010 (SPEC §5): drop it once, here.
            self.metrics.bus.dropped(DropReason::TooLarge);
            return;
        }
        self.seq += 1;
        self.stamped.store(self.seq, Relaxed);
        let mut mask: u64 = 0;
        let mut parked = false;
        self.trie.for_each_covering(&ev.channel, |v| {
            if v == PARKED {
                parked = true;
            } else {
                mask |= 1u64 << v;
            }
        });
        if mask == 0 && !parked {
            return;
        }
        let ev = Arc::new(ev);
        if self.limits.ring_bytes > 0 {
            self.ring.push(ev.clone(), mask);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;
    use crate::bus::Item;
    use std::sync::Mutex;
    use std::time::Duration;

    struct Fixture {
        router: Router,
        inboxes: Vec<Arc<Inbox>>,
        ended: Arc<Mutex<Vec<String>>>,
    }

    fn fixture(shards: usize, max_frame_bytes: usize, max_sessions: usize) -> Fixture {
        let inboxes: Vec<Arc<Inbox>> = (0..shards).map(|_| Arc::new(Inbox::new(1024))).collect();
        let (_tx, rx) = crossbeam_channel::unbounded();
        let ended = Arc::new(Mutex::new(Vec::new()));
        let e = ended.clone();
        let router = Router::new(
            inboxes.clone(),
            rx,
            Arc::new(Metrics::new(shards)),
            RouterLimits {
                ring_bytes: 1 << 20,
                max_frame_bytes,
                max_sessions,
            },
            Box::new(move |u: &str| e.lock().unwrap().push(u.to_owned())),
            Arc::new(AtomicU64::new(0)),
            Interest::new(false, Duration::from_secs(60)),
        );
        Fixture {
            router,
            inboxes,
            ended,
        }
    }

    fn events(inbox: &Inbox) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(item) = inbox.pop() {
            if let Item::Event(e) = item {
                out.push(e.seq);
            }
        }
        out
    }

    /// The grants in an inbox: (conn_id, granted).
    fn grants(inbox: &Inbox) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        while let Some(item) = inbox.pop() {
            if let Item::Grant(g) = item {
                out.push((g.conn_id, g.outcome.is_some()));
            }
        }
        out
    }

    fn resume_op(session: &str, user: &str, conn_id: u64) -> RouteOp {
        RouteOp::Resume {
            session_id: session.into(),
            user: user.into(),
            seq: 0,
            shard: 0,
            conn_key: conn_id as u32,
            conn_id,
        }
    }

    /// A RESUME that reaches the bus while the session is granted to a connection
    /// that may yet give it back waits for the outcome: it was answered
    /// INVALID_SESSION (CI saw it when a client's first RESUME was cut short).
    #[test]
    fn a_resume_of_a_session_in_flight_waits_for_it_to_settle() {
        let mut f = fixture(1, 1 << 20, 100);
        f.router
            .apply(RouteOp::Park(parked("s1", "u", &["live:a"])));
        f.router.apply(resume_op("s1", "u", 1));
        assert_eq!(grants(&f.inboxes[0]), vec![(1, true)]);
        f.router.apply(resume_op("s1", "u", 2));
        assert!(grants(&f.inboxes[0]).is_empty(), "waits while lent");
        // Connection 1 closed before the grant: given back, and 2 takes it.
        let back = parked("s1", "u", &["live:a"]);
        f.router.apply(RouteOp::Settle {
            session_id: "s1".into(),
            parked: Some(back),
        });
        assert_eq!(grants(&f.inboxes[0]), vec![(2, true)]);
        // A third waits; connection 2 keeps it: the third is refused.
        f.router.apply(resume_op("s1", "u", 3));
        assert!(grants(&f.inboxes[0]).is_empty());
        f.router.apply(RouteOp::Settle {
            session_id: "s1".into(),
            parked: None,
        });
        assert_eq!(grants(&f.inboxes[0]), vec![(3, false)]);
        assert!(f.router.lent.is_empty());
        // Refused outright when nothing is lent or parked.
        f.router.apply(resume_op("s1", "u", 4));
        assert_eq!(grants(&f.inboxes[0]), vec![(4, false)]);
    }

    fn add(f: &mut Fixture, shard: u8, name: &str) {
        f.router.apply(RouteOp::Add {
            shard,
            name: name.into(),
        });
    }

    const BODY: &[u8] = br#"{"type":"t","payload":{}}"#;

    fn parked(id: &str, user: &str, names: &[&str]) -> Box<Detached> {
        Box::new(Detached {
            session_id: id.into(),
            claims: Claims::new(user, &[], &[], 60),
            auto_sub: format!("user:{user}"),
            floor: Floor::default(),
            subs: names
                .iter()
                .map(|n| (n.to_string(), Floor::default()))
                .collect(),
            expires: Instant::now() + Duration::from_secs(60),
        })
    }

    /// Issue 12 defect 2: the parked marker was bit 63 of the shard mask, so on a
    /// 64-shard node shard 63 never got an event.
    #[test]
    fn shard_63_of_64_gets_its_events_with_parked_sessions_around() {
        let mut f = fixture(64, 1 << 20, 100);
        add(&mut f, 63, "live:a");
        add(&mut f, 0, "live:a");
        f.router.apply(RouteOp::Park(parked("p", "u", &["live:a"])));
        f.router.route(b"live:a", BODY);
        assert_eq!(events(&f.inboxes[63]), vec![1]);
        assert_eq!(events(&f.inboxes[0]), vec![1]);
        // Parked alone still records (in the ring) without reaching a shard.
        f.router.apply(RouteOp::Park(parked("q", "v", &["live:b"])));
        f.router.route(b"live:b", BODY);
        assert!(f.inboxes.iter().all(|i| events(i).is_empty()));
        assert_eq!(f.router.ring.after(0, |_, _| true).len(), 2);
    }

    /// Issue 12 defect 4: a RESUME granted to shard 0 must keep its routes until
    /// the shard applies the grant, even if the shard's last local holder of a
    /// name leaves in between.
    #[test]
    fn a_grant_holds_its_routes_until_the_shard_releases_them() {
        let mut f = fixture(2, 1 << 20, 100);
        add(&mut f, 0, "live:a"); // another connection on shard 0 holds it
        f.router
            .apply(RouteOp::Park(parked("s1", "u", &["live:a"])));
        f.router.apply(RouteOp::Resume {
            session_id: "s1".into(),
            user: "u".into(),
            seq: 0,
            shard: 0,
            conn_key: 1,
            conn_id: 1,
        });
        // The other holder leaves before the grant is applied.
        f.router.apply(RouteOp::Remove {
            shard: 0,
            name: "live:a".into(),
        });
        f.router.route(b"live:a", BODY);
        assert_eq!(
            events(&f.inboxes[0]),
            vec![1],
            "the grant's route still delivers"
        );
        // The shard applies the grant: subscribes (its own Add), then releases.
        add(&mut f, 0, "live:a");
        f.router.apply(RouteOp::Release {
            shard: 0,
            name: "live:a".into(),
        });
        f.router.apply(RouteOp::Release {
            shard: 0,
            name: "user:u".into(),
        });
        f.router.route(b"live:a", BODY);
        assert_eq!(events(&f.inboxes[0]), vec![2]);
        // The session's connection leaves: the route goes.
        f.router.apply(RouteOp::Remove {
            shard: 0,
            name: "live:a".into(),
        });
        f.router.route(b"live:a", BODY);
        assert!(events(&f.inboxes[0]).is_empty());
        assert!(f.router.pending.is_empty());
        // Released without the shard holding it: gone too.
        f.router
            .apply(RouteOp::Park(parked("s2", "w", &["live:c"])));
        f.router.apply(RouteOp::Resume {
            session_id: "s2".into(),
            user: "w".into(),
            seq: 0,
            shard: 1,
            conn_key: 2,
            conn_id: 2,
        });
        f.router.apply(RouteOp::Release {
            shard: 1,
            name: "live:c".into(),
        });
        f.router.route(b"live:c", BODY);
        assert!(events(&f.inboxes[1]).is_empty());
    }

    /// Issue 12 defect 8: one oversized event is dropped once, at the bus.
    #[test]
    fn an_event_larger_than_a_send_queue_is_dropped_once_and_counted() {
        let mut f = fixture(1, 4096, 100);
        add(&mut f, 0, "live:a");
        let big = format!(r#"{{"type":"t","payload":"{}"}}"#, "x".repeat(5000));
        f.router.route(b"live:a", big.as_bytes());
        f.router.route(b"live:a", BODY);
        assert_eq!(
            events(&f.inboxes[0]),
            vec![1],
            "seq is not spent on the dropped one"
        );
        assert_eq!(
            f.router.metrics.bus.dropped[DropReason::TooLarge as usize].load(Relaxed),
            1
        );
    }

    /// Issue 12 defect 5: sessions dropped to make room end like expired ones.
    #[test]
    fn a_session_dropped_for_room_ends_and_releases_its_names() {
        let mut f = fixture(1, 1 << 20, 2);
        f.router
            .apply(RouteOp::Park(parked("a", "ua", &["live:a"])));
        f.router
            .apply(RouteOp::Park(parked("b", "ub", &["live:b"])));
        f.router
            .apply(RouteOp::Park(parked("c", "uc", &["live:c"])));
        assert_eq!(*f.ended.lock().unwrap(), vec!["ua".to_string()]);
        assert!(!f.router.trie.covers("live:a:x"));
        assert!(f.router.trie.covers("live:b"));
        assert_eq!(f.router.parked.len(), 2);
    }
}
