//! The `xcord-presence` thread: the node's user → local-session-count map, and with
//! `--redis` the only writer of the presence keys (`store.rs`). Changes queued
//! meanwhile are written together (coalesced per user: a connect and disconnect in
//! one batch never flaps the user); alive keys are refreshed every TTL/3 in one
//! pipeline; the sweep claims users whose alive key lapsed. After Redis was
//! unreachable (or restored from a snapshot), the node's whole view replaces what
//! Redis holds for it, zeros included, before anything else. Without Redis it
//! decides online/offline from the local counts alone.

use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::store::{Broadcast, Store, SyncOp};
use super::{Change, Settings};
use crate::bus::Bus;
use crate::limits::PRESENCE_BATCH;
use crate::throttle::Throttle;

/// One user's sessions on this node.
struct Local {
    sessions: u32,
    /// The servers the claims of its sessions name (since the first of them).
    servers: Vec<String>,
    /// The last status (decisions without Redis).
    status: &'static str,
}

pub(super) struct Worker {
    s: Settings,
    store: Option<Store>,
    /// This node's new counts, one per user, to write in the next batch.
    pending: Vec<SyncOp>,
    /// Where each user's op is in `pending` (a connect storm queues thousands).
    pending_at: HashMap<String, usize>,
    /// Session starts to acknowledge once `pending` is written.
    dones: Vec<futures_channel::oneshot::Sender<()>>,
    local: HashMap<String, Local>,
    bus: Arc<Bus>,
    warn_log: Throttle,
}

impl Worker {
    pub(super) fn new(s: Settings, client: Option<crate::link::Client>, bus: Arc<Bus>) -> Worker {
        let store = client.map(|c| Store::new(c, s.node_id.clone(), s.ttl));
        Worker {
            s,
            store,
            pending: Vec::new(),
            pending_at: HashMap::new(),
            dones: Vec::new(),
            local: HashMap::new(),
            bus,
            warn_log: Throttle::new(Duration::from_secs(10)),
        }
    }

    pub(super) fn run(&mut self, rx: Receiver<Change>) {
        let refresh_every = (self.s.ttl / 3).max(Duration::from_millis(200));
        let mut next_refresh = Instant::now();
        let mut next_sweep = Instant::now(); // a starting node sweeps at once
        loop {
            let next = next_refresh.min(next_sweep);
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(c) => {
                    self.apply(c);
                    for _ in 1..PRESENCE_BATCH {
                        match rx.try_recv() {
                            Ok(c) => self.apply(c),
                            Err(_) => break,
                        }
                    }
                    self.flush();
                    for d in self.dones.drain(..) {
                        let _ = d.send(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.store.is_none() {
                next_refresh = Instant::now() + Duration::from_secs(3600);
                next_sweep = next_refresh;
                continue;
            }
            let now = Instant::now();
            if now >= next_refresh {
                self.refresh();
                next_refresh = now + refresh_every;
            }
            if now >= next_sweep {
                self.sweep();
                next_sweep = now + self.s.sweep;
            }
        }
    }

    fn warn(&self, what: &str, e: &redis::RedisError) {
        if self.warn_log.ready() {
            warn!("presence: {what}: {e}");
        }
    }

    /// The Redis store, connected, with the node's view re-asserted after a gap.
    fn store(&mut self) -> Option<&mut Store> {
        let connected = self.store.as_mut()?.connect();
        match connected {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = self.reassert() {
                    self.fail("re-asserting after a Redis gap", &e);
                    return None;
                }
            }
            Err(e) => {
                self.fail("redis unreachable", &e);
                return None;
            }
        }
        self.store.as_mut()
    }

    fn fail(&mut self, what: &str, e: &redis::RedisError) {
        self.warn(what, e);
        if let Some(s) = self.store.as_mut() {
            s.failed();
        }
    }

    /// Replace what Redis holds for this node by its own view: every local user's
    /// count, and zero for every user Redis thinks this node holds and it does not.
    fn reassert(&mut self) -> redis::RedisResult<()> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let stale = store.node_users()?;
        let mut ops: Vec<SyncOp> = self
            .local
            .iter()
            .map(|(u, l)| SyncOp {
                user: u.clone(),
                count: l.sessions,
                servers: l.servers.clone(),
            })
            .collect();
        ops.extend(
            stale
                .into_iter()
                .filter(|u| !self.local.contains_key(u))
                .map(|user| SyncOp {
                    user,
                    count: 0,
                    servers: Vec::new(),
                }),
        );
        if !ops.is_empty() {
            info!(
                users = ops.len(),
                "presence: replacing what Redis holds for this node after a gap"
            );
        }
        store.refresh(self.local.keys())?;
        let mut out = Vec::new();
        for chunk in ops.chunks(PRESENCE_BATCH) {
            out.extend(store.sync(chunk)?);
        }
        // What was queued is part of the view just written.
        self.pending.clear();
        self.pending_at.clear();
        self.publish(out);
        Ok(())
    }

    /// Queue this node's new count of `user` (one op per user per batch).
    fn queue(&mut self, user: &str) {
        let (count, servers) = match self.local.get(user) {
            Some(l) => (l.sessions, l.servers.clone()),
            None => (0, Vec::new()),
        };
        match self
            .pending_at
            .get(user)
            .and_then(|&i| self.pending.get_mut(i))
        {
            Some(o) => {
                o.count = count;
                o.servers = servers;
            }
            None => {
                self.pending_at.insert(user.to_owned(), self.pending.len());
                self.pending.push(SyncOp {
                    user: user.to_owned(),
                    count,
                    servers,
                });
            }
        }
    }

    fn apply(&mut self, c: Change) {
        match c {
            Change::Start {
                user,
                servers,
                done,
            } => {
                if let Some(d) = done {
                    self.dones.push(d);
                }
                let l = self.local.entry(user.clone()).or_insert_with(|| Local {
                    sessions: 0,
                    servers: Vec::new(),
                    status: "online",
                });
                l.sessions += 1;
                for s in servers {
                    if !l.servers.contains(&s) {
                        l.servers.push(s);
                    }
                }
                if self.store.is_some() {
                    self.queue(&user);
                } else if l.sessions == 1 {
                    let b = Broadcast {
                        user,
                        servers: l.servers.clone(),
                        status: "online".into(),
                    };
                    self.publish(vec![b]);
                }
            }
            Change::End { user } => {
                let Some(l) = self.local.get_mut(&user) else {
                    return;
                };
                l.sessions = l.sessions.saturating_sub(1);
                if l.sessions > 0 {
                    if self.store.is_some() {
                        self.queue(&user);
                    }
                    return;
                }
                let servers = self
                    .local
                    .remove(&user)
                    .map(|l| l.servers)
                    .unwrap_or_default();
                if self.store.is_some() {
                    self.queue(&user);
                } else {
                    self.publish(vec![Broadcast {
                        user,
                        servers,
                        status: "offline".into(),
                    }]);
                }
            }
            Change::Set {
                user,
                status,
                servers,
            } => self.set(user, status, servers),
            Change::Batch(changes) => {
                for c in changes {
                    self.apply(c);
                }
            }
        }
    }

    /// SET_PRESENCE: published only when the status changes.
    fn set(&mut self, user: String, status: String, servers: Vec<String>) {
        if self.store.is_none() {
            let Some(l) = self.local.get_mut(&user) else {
                return;
            };
            if l.status == status {
                return;
            }
            // One of SET_PRESENCE's statuses (decoding refused any other).
            l.status = match status.as_str() {
                "idle" => "idle",
                "dnd" => "dnd",
                _ => "online",
            };
            self.publish(vec![Broadcast {
                user,
                servers,
                status,
            }]);
            return;
        }
        self.flush(); // keep the order of changes
        let Some(store) = self.store() else { return };
        match store.set(&user, &status, &servers) {
            Ok(Some(b)) => self.publish(vec![b]),
            Ok(None) => {}
            Err(e) => self.fail("SET_PRESENCE", &e),
        }
    }

    /// Write the queued counts; what cannot be written now is re-asserted after
    /// the gap.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.pending);
        self.pending_at.clear();
        let Some(store) = self.store() else { return };
        match store.sync(&ops) {
            Ok(out) => self.publish(out),
            Err(e) => self.fail("writing session counts", &e),
        }
    }

    fn refresh(&mut self) {
        // Connects, and re-asserts everything after a gap.
        if self.store().is_none() {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if let Err(e) = store.refresh(self.local.keys()) {
            self.fail("refreshing alive keys", &e);
        }
    }

    fn sweep(&mut self) {
        if self.store().is_none() {
            return;
        }
        let local = &self.local;
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.sweep(|u| local.contains_key(u)) {
            Ok(out) => self.publish(out),
            Err(e) => self.fail("sweeping lapsed users", &e),
        }
    }

    /// Publish each change on `server:{sid}` for each of the user's servers and
    /// once on `user:{u}:presence`.
    fn publish(&self, changes: Vec<Broadcast>) {
        for b in changes {
            for sid in &b.servers {
                let p = sonic_rs::json!({"serverId": sid, "userId": b.user, "presence": b.status});
                self.bus.publish(
                    &format!("server:{sid}"),
                    "server.member.presence",
                    &p.to_string(),
                );
            }
            let p = sonic_rs::json!({"userId": b.user, "presence": b.status});
            self.bus.publish(
                &format!("user:{}:presence", b.user),
                "user.presence",
                &p.to_string(),
            );
        }
    }
}
