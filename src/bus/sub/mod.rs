//! The bus thread with Redis (`xcord-bus`): the pub/sub side, on connections of
//! its own that also hear what Redis pushes, driven by one `poll(2)` loop that
//! wakes for Redis and for route changes alike (a shard's SUBSCRIBE or RESUME is
//! answered without waiting for the next event).
//!
//! * `--routing pattern`: one connection PSUBSCRIBEs `events:*` — on `--redis`, or
//!   on one master of a cluster (classic PUBLISH reaches every node), moving to
//!   another when that one is lost.
//! * `--routing roots`: one connection per master (one in all on `--redis`) holds
//!   `SSUBSCRIBE xcord:{ROOT}` for exactly the roots the node's interest wants
//!   (`interest.rs`), batched one slot per command, each sent to its slot's master.
//!   A root is re-subscribed on its new owner after `-MOVED`, after Redis pushes a
//!   `sunsubscribe` (its slot migrated), and after its master's connection is lost
//!   (a failover): the slot map is re-read from the cluster, and each such root
//!   counts once in `xcord_bus_resubscribes_total` when it is confirmed again.
//!
//! Redis disconnects a subscriber that falls 32 MB behind, so this thread only
//! parses, stamps and pushes into bounded shard queues; it never waits on a shard.
//! Nothing published while a link was down is replayed (pub/sub is at-most-once;
//! per client, RESUME covers it). `xcord_redis_up` (and `/readyz`) follows whether
//! any master is reachable.

pub mod node;
pub mod resp;
pub mod slots;
mod wake;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::interest::Change;
use super::Router;
use crate::config::{RedisTarget, Routing};
use crate::link::Backoff;
use crate::metrics::Metrics;
use crate::throttle::Throttle;
use node::{Auth, Event, Node, State};
use slots::{parse_moved, read_slots, SlotMap};
pub use wake::Waker;

/// `host:port` of a Redis URL, and its credentials.
fn addr_of(url: &str) -> Result<(String, Auth), String> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| format!("bad Redis URL {url}: {e}"))?;
    let addr = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        other => return Err(format!("unsupported Redis address {other:?} for pub/sub")),
    };
    let r = info.redis_settings();
    Ok((
        addr,
        Auth {
            username: r.username().map(str::to_owned),
            password: r.password().map(str::to_owned),
        },
    ))
}

/// Start the `xcord-bus` thread for a Redis deployment.
pub fn start(
    target: &RedisTarget,
    routing: Routing,
    router: Router,
    metrics: Arc<Metrics>,
    waker: Arc<Waker>,
) -> Result<(), String> {
    let (urls, cluster) = match target {
        RedisTarget::Single(u) => (vec![u.clone()], false),
        RedisTarget::Cluster(s) => (s.clone(), true),
    };
    let mut seeds = Vec::new();
    let mut auth = Auth::default();
    for u in &urls {
        let (a, au) = addr_of(u)?;
        seeds.push(a);
        auth = au;
    }
    let link = Link {
        routing,
        cluster,
        seed_urls: urls,
        seeds,
        auth,
        nodes: HashMap::new(),
        retry: HashMap::new(),
        slots: SlotMap::default(),
        refresh_at: Some(Instant::now()),
        placed: HashMap::new(),
        pending: HashSet::new(),
        lost: HashSet::new(),
        pattern_on: None,
        ever_up: false,
        metrics,
        log: Throttle::new(Duration::from_secs(10)),
    };
    std::thread::Builder::new()
        .name("xcord-bus".into())
        .spawn(move || link.run(router, waker))
        .map(|_| ())
        .map_err(|e| format!("cannot start the bus thread: {e}"))
}

struct Link {
    routing: Routing,
    cluster: bool,
    seed_urls: Vec<String>,
    /// `host:port` of the seeds (the one server of `--redis`).
    seeds: Vec<String>,
    auth: Auth,
    /// Connections by `host:port`: every master (roots), or the one PSUBSCRIBEd.
    nodes: HashMap<String, Node>,
    /// Reconnect backoff per address.
    retry: HashMap<String, (Backoff, Instant)>,
    slots: SlotMap,
    /// When to re-read the slot map (cluster).
    refresh_at: Option<Instant>,
    /// Roots sent to a node, and whether it confirmed them.
    placed: HashMap<Box<str>, (String, bool)>,
    /// Roots wanted and not yet sent anywhere.
    pending: HashSet<Box<str>>,
    /// Roots that were confirmed once and lost since: confirming one again is a
    /// resubscribe.
    lost: HashSet<Box<str>>,
    /// The node that confirmed PSUBSCRIBE (pattern routing).
    pattern_on: Option<String>,
    ever_up: bool,
    metrics: Arc<Metrics>,
    log: Throttle,
}

fn channel_of(root: &str) -> Vec<u8> {
    format!("xcord:{{{root}}}").into_bytes()
}

fn root_of_channel(ch: &[u8]) -> Option<&[u8]> {
    ch.strip_prefix(b"xcord:{")?.strip_suffix(b"}")
}

impl Link {
    fn run(mut self, mut router: Router, waker: Arc<Waker>) {
        let mut events = Vec::new();
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut addrs: Vec<String> = Vec::new();
        loop {
            router.apply_routes();
            for c in router.interest_mut().take_changes() {
                match c {
                    Change::Subscribe(r) => {
                        self.pending.insert(r);
                    }
                    Change::Unsubscribe(r) => self.drop_root(&r),
                }
            }
            self.maintain(&mut router);
            let up = self.nodes.values().any(|n| n.state == State::Up)
                && (self.routing == Routing::Roots || self.pattern_on.is_some());
            self.metrics.bus.redis_up.store(up, Relaxed);
            self.metrics.bus.subscriptions.store(
                i64::try_from(router.interest_mut().confirmed_count()).unwrap_or(i64::MAX),
                Relaxed,
            );

            pfds.clear();
            addrs.clear();
            pfds.push(libc::pollfd {
                fd: waker.fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            for (a, n) in &self.nodes {
                if let Some(fd) = n.fd() {
                    let mut ev = libc::POLLIN;
                    if n.wants_write() {
                        ev |= libc::POLLOUT;
                    }
                    pfds.push(libc::pollfd {
                        fd,
                        events: ev,
                        revents: 0,
                    });
                    addrs.push(a.clone());
                }
            }
            waker.sleep();
            let timeout = if router.has_queued_routes() { 0 } else { 250 };
            // SAFETY: `pfds` is a valid array of pollfd for its length.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            waker.awake();
            if n <= 0 {
                continue;
            }
            if pfds[0].revents != 0 {
                waker.drain();
            }
            for (p, a) in pfds[1..].iter().zip(&addrs) {
                if p.revents == 0 {
                    continue;
                }
                self.on_ready(a, p.revents, &mut events, &mut router);
            }
        }
    }

    fn on_ready(&mut self, addr: &str, revents: i16, events: &mut Vec<Event>, router: &mut Router) {
        let Some(node) = self.nodes.get_mut(addr) else {
            return;
        };
        let was = node.state;
        let mut failed = None;
        if revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
            if let Err(e) = node.on_writable() {
                failed = Some(e.to_string());
            }
        }
        if failed.is_none() && revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            if let Err(e) = node.on_readable(events) {
                failed = Some(e.to_string());
            }
        }
        let now_up = node.state == State::Up;
        if was == State::Connecting && now_up {
            self.on_connected(addr, router);
        }
        for e in events.drain(..) {
            self.on_event(addr, e, router);
        }
        if let Some(e) = failed {
            self.node_lost(addr, &e, router);
        }
    }

    fn on_connected(&mut self, addr: &str, _router: &mut Router) {
        if let Some((b, _)) = self.retry.get_mut(addr) {
            b.reset();
        }
        if self.ever_up {
            self.metrics.bus.reconnects.fetch_add(1, Relaxed);
        }
        self.ever_up = true;
        if self.routing == Routing::Pattern {
            if let Some(n) = self.nodes.get_mut(addr) {
                n.psubscribe(b"events:*");
            }
        }
    }

    fn on_event(&mut self, addr: &str, e: Event, router: &mut Router) {
        match e {
            Event::Message { channel, body } => match self.routing {
                Routing::Pattern => {
                    let ch = channel.strip_prefix(b"events:").unwrap_or(&channel);
                    router.route(ch, &body);
                }
                Routing::Roots => match root_of_channel(&channel) {
                    Some(root) => router.route_rooted(root, &body),
                    None => router.drop_bad_channel(),
                },
            },
            Event::PatternSubscribed => {
                info!("redis pub/sub link up on {addr} (PSUBSCRIBE events:*)");
                self.pattern_on = Some(addr.to_owned());
            }
            Event::Subscribed(ch) => {
                let Some(root) = root_of_channel(&ch).and_then(|r| std::str::from_utf8(r).ok())
                else {
                    return;
                };
                if !router.interest_mut().wanted(root) {
                    // Unwanted while the SSUBSCRIBE was in flight: give it back.
                    self.placed.remove(root);
                    if let Some(n) = self.nodes.get_mut(addr) {
                        n.unsubscribe(vec![ch]);
                    }
                    return;
                }
                if let Some(p) = self.placed.get_mut(root) {
                    p.1 = true;
                }
                router.interest_mut().confirmed(root);
                if self.lost.remove(root) {
                    self.metrics.bus.resubscribes.fetch_add(1, Relaxed);
                }
            }
            Event::Unsubscribed { channel, pushed } => {
                let Some(root) =
                    root_of_channel(&channel).and_then(|r| std::str::from_utf8(r).ok())
                else {
                    return;
                };
                if !pushed {
                    return;
                }
                // Redis dropped it on its own: its slot moved to another master.
                self.placed.remove(root);
                if router.interest_mut().wanted(root) {
                    self.lose(root, router);
                    self.refresh_at = Some(Instant::now());
                }
            }
            Event::Refused { channels, error } => {
                if let Some((slot, to)) = parse_moved(&error) {
                    self.slots.moved(slot, &to);
                } else if self.log.ready() {
                    warn!("redis {addr} refused SSUBSCRIBE: {error}; retrying");
                }
                for ch in channels {
                    if let Some(root) =
                        root_of_channel(&ch).and_then(|r| std::str::from_utf8(r).ok())
                    {
                        self.placed.remove(root);
                        if router.interest_mut().wanted(root) {
                            self.pending.insert(root.into());
                        }
                    }
                }
                if !error.starts_with("MOVED") {
                    // CLUSTERDOWN, TRYAGAIN…: the cluster is settling; ask it again soon.
                    self.refresh_at = Some(Instant::now() + Duration::from_millis(250));
                }
            }
        }
    }

    /// A confirmed root is no longer subscribed: wanted again.
    fn lose(&mut self, root: &str, router: &mut Router) {
        router.interest_mut().lost(root);
        self.lost.insert(root.into());
        self.pending.insert(root.into());
    }

    fn node_lost(&mut self, addr: &str, why: &str, router: &mut Router) {
        if self.log.ready() {
            warn!("redis pub/sub link to {addr} lost: {why}; reconnecting with backoff");
        }
        if let Some(n) = self.nodes.get_mut(addr) {
            n.close();
        }
        let (b, at) = self.retry.entry(addr.to_owned()).or_insert_with(|| {
            (
                Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
                Instant::now(),
            )
        });
        *at = Instant::now() + b.next_delay();
        if self.pattern_on.as_deref() == Some(addr) {
            self.pattern_on = None;
        }
        let gone: Vec<(Box<str>, bool)> = self
            .placed
            .iter()
            .filter(|(_, (a, _))| a == addr)
            .map(|(r, (_, c))| (r.clone(), *c))
            .collect();
        for (root, confirmed) in gone {
            self.placed.remove(&root);
            if !router.interest_mut().wanted(&root) {
                continue;
            }
            if confirmed {
                self.lose(&root, router);
            } else {
                self.pending.insert(root);
            }
        }
        if self.cluster {
            // A failover may be under way: learn the new owners.
            self.refresh_at = Some(Instant::now() + Duration::from_millis(200));
        }
    }

    /// A root nobody wants any more.
    fn drop_root(&mut self, root: &str) {
        self.pending.remove(root);
        self.lost.remove(root);
        if let Some((addr, _)) = self.placed.remove(root) {
            if let Some(n) = self.nodes.get_mut(&addr) {
                if n.state == State::Up {
                    n.unsubscribe(vec![channel_of(root)]);
                }
            }
        }
    }

    /// Re-read the slot map when due, keep a connection to every master (or the
    /// one server), and send the pending roots to their owners.
    fn maintain(&mut self, router: &mut Router) {
        let now = Instant::now();
        if self.cluster && self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_slots(router);
        }
        let wanted: Vec<String> = if !self.cluster {
            self.seeds.iter().take(1).cloned().collect()
        } else if self.routing == Routing::Pattern {
            // One node: the one in use, else the first reachable master.
            match &self.pattern_on {
                Some(a) => vec![a.clone()],
                None => self
                    .slots
                    .masters()
                    .into_iter()
                    .find(|a| self.retry.get(a).is_none_or(|(_, t)| *t <= now))
                    .into_iter()
                    .collect(),
            }
        } else {
            self.slots.masters()
        };
        for a in &wanted {
            let due = self.retry.get(a).is_none_or(|(_, t)| *t <= now);
            let down = self.nodes.get(a).is_none_or(|n| n.state == State::Down);
            if down && due {
                let n = Node::connect(a, &self.auth);
                let failed = n.state == State::Down;
                self.nodes.insert(a.clone(), n);
                if failed {
                    self.node_lost(a, "cannot connect", router);
                }
            }
        }
        // Connections to nodes that are no longer masters go.
        if self.cluster && !self.slots.is_empty() {
            let stale: Vec<String> = self
                .nodes
                .keys()
                .filter(|a| !wanted.contains(a))
                .cloned()
                .collect();
            for a in stale {
                self.node_lost(&a, "no longer a master", router);
                self.nodes.remove(&a);
            }
        }
        if self.routing == Routing::Roots {
            self.place_pending();
        }
    }

    /// Send every pending root to its slot's master, one SSUBSCRIBE per slot.
    fn place_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut by_slot: HashMap<(String, u16), Vec<Box<str>>> = HashMap::new();
        for root in &self.pending {
            let ch = channel_of(root);
            let slot = slots::slot(&ch);
            let owner = if self.cluster {
                match self.slots.owner(slot) {
                    Some(o) => o.to_owned(),
                    None => continue,
                }
            } else {
                match self.seeds.first() {
                    Some(s) => s.clone(),
                    None => continue,
                }
            };
            if self.nodes.get(&owner).is_some_and(|n| n.state == State::Up) {
                by_slot.entry((owner, slot)).or_default().push(root.clone());
            }
        }
        for ((owner, _), roots) in by_slot {
            for chunk in roots.chunks(256) {
                if let Some(n) = self.nodes.get_mut(&owner) {
                    n.subscribe(chunk.iter().map(|r| channel_of(r)).collect());
                }
                for r in chunk {
                    self.pending.remove(r);
                    self.placed.insert(r.clone(), (owner.clone(), false));
                }
            }
        }
    }

    /// Read `CLUSTER SLOTS` from a seed or a known master (blocking, bounded).
    fn refresh_slots(&mut self, router: &mut Router) {
        let mut candidates: Vec<String> = self.seed_urls.clone();
        candidates.extend(
            self.slots
                .masters()
                .into_iter()
                .map(|a| format!("redis://{a}")),
        );
        for url in candidates {
            let Some(map) = read_slots(&url, &self.auth) else {
                continue;
            };
            if map.is_empty() {
                continue;
            }
            self.slots = map;
            self.refresh_at = None;
            // Roots placed on a node that no longer owns their slot move.
            let moved: Vec<(Box<str>, String, bool)> = self
                .placed
                .iter()
                .filter(|(r, (a, _))| {
                    self.slots.owner(slots::slot(&channel_of(r))) != Some(a.as_str())
                })
                .map(|(r, (a, c))| (r.clone(), a.clone(), *c))
                .collect();
            for (root, addr, confirmed) in moved {
                self.placed.remove(&root);
                if let Some(n) = self.nodes.get_mut(&addr) {
                    if n.state == State::Up {
                        n.unsubscribe(vec![channel_of(&root)]);
                    }
                }
                if confirmed {
                    self.lose(&root, router);
                } else {
                    self.pending.insert(root);
                }
            }
            return;
        }
        if self.log.ready() {
            warn!("no Redis Cluster node answered CLUSTER SLOTS; retrying");
        }
        self.refresh_at = Some(Instant::now() + Duration::from_millis(500));
    }
}
