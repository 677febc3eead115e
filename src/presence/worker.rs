//! The `xcord-presence` thread: the node's user → local-session-count map, and with
//! `--redis` the only writer of the presence keys. Changes queued meanwhile are
//! written in one pipeline; alive keys are refreshed every TTL/3 in one pipeline;
//! the sweep claims users whose alive key lapsed. Without Redis it decides
//! online/offline from the local counts alone.

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::scripts::{CLAIM, SET, SYNC};
use super::{Change, Settings};
use crate::bus::Bus;
use crate::limits::{PRESENCE_BATCH, SWEEP_BATCH};
use crate::link;
use crate::throttle::Throttle;

struct Local {
    sessions: u32,
    servers: Vec<String>,
}

pub(super) struct Worker {
    s: Settings,
    client: Option<redis::Client>,
    con: Option<redis::Connection>,
    /// Redis was unreachable at some point: write the whole local state again.
    reassert: bool,
    /// SYNCs to write in the next pipeline: (user, this node's count, servers).
    pending: Vec<(String, u32, Vec<String>)>,
    /// Session starts to acknowledge once `pending` is written.
    dones: Vec<futures_channel::oneshot::Sender<()>>,
    local: HashMap<String, Local>,
    bus: Arc<Bus>,
    warn_log: Throttle,
}

fn now_unix() -> u64 {
    xcord_common::clock::unix_secs()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Decode `{code, servers}` from SYNC/CLAIM.
fn verdict(v: &Value) -> (i64, Vec<String>) {
    match v {
        Value::Array(items) => {
            let code = match items.first() {
                Some(Value::Int(i)) => *i,
                _ => 0,
            };
            (code, items.get(1).map(strings).unwrap_or_default())
        }
        _ => (0, Vec::new()),
    }
}

impl Worker {
    pub(super) fn new(s: Settings, client: Option<redis::Client>, bus: Arc<Bus>) -> Worker {
        Worker {
            s,
            client,
            con: None,
            reassert: false,
            pending: Vec::new(),
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
                    // Everything queued meanwhile is written in one pipeline.
                    self.apply(c);
                    for _ in 1..PRESENCE_BATCH {
                        match rx.try_recv() {
                            Ok(c) => self.apply(c),
                            Err(_) => break,
                        }
                    }
                    self.flush_syncs();
                    for d in self.dones.drain(..) {
                        let _ = d.send(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.client.is_none() {
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

    fn warn(&mut self, what: &str, e: &str) {
        if self.warn_log.ready() {
            warn!("presence: {what}: {e}");
        }
    }

    /// The Redis connection, (re)connecting when needed; re-asserts after a gap.
    fn con(&mut self) -> Option<&mut redis::Connection> {
        if self.con.is_none() {
            let client = self.client.as_ref()?;
            match link::connect(client) {
                Ok(c) => {
                    self.con = Some(c);
                    if self.reassert {
                        self.reassert = false;
                        self.reassert_all();
                    }
                }
                Err(e) => {
                    self.reassert = true;
                    self.warn("redis unreachable", &e.to_string());
                    return None;
                }
            }
        }
        self.con.as_mut()
    }

    fn failed(&mut self, e: redis::RedisError) {
        self.warn("redis command failed", &e.to_string());
        self.con = None;
        self.reassert = true;
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
                let entry = self.local.entry(user.clone()).or_insert(Local {
                    sessions: 0,
                    servers: Vec::new(),
                });
                entry.sessions += 1;
                for s in servers {
                    if !entry.servers.contains(&s) {
                        entry.servers.push(s);
                    }
                }
                let (count, servers) = (entry.sessions, entry.servers.clone());
                if self.client.is_none() {
                    if count == 1 {
                        self.broadcast(&user, &servers, "online");
                    }
                } else {
                    self.pending.push((user, count, servers));
                }
            }
            Change::End { user } => {
                let Some(entry) = self.local.get_mut(&user) else {
                    return;
                };
                entry.sessions = entry.sessions.saturating_sub(1);
                let (count, servers) = (entry.sessions, entry.servers.clone());
                if count == 0 {
                    self.local.remove(&user);
                }
                if self.client.is_none() {
                    if count == 0 {
                        self.broadcast(&user, &servers, "offline");
                    }
                } else {
                    self.pending.push((user, count, servers));
                }
            }
            Change::Set { user, status } => {
                self.flush_syncs(); // keep the order of changes
                if self.client.is_none() {
                    let servers = self
                        .local
                        .get(&user)
                        .map(|l| l.servers.clone())
                        .unwrap_or_default();
                    self.broadcast(&user, &servers, &status);
                    return;
                }
                let now = now_unix().to_string();
                let r = match self.con() {
                    Some(con) => redis::Script::new(SET)
                        .arg(&user)
                        .arg(&status)
                        .arg(&now)
                        .invoke::<Value>(con),
                    None => return,
                };
                match r {
                    Ok(v) => {
                        let servers = strings(&v);
                        self.broadcast(&user, &servers, &status);
                    }
                    Err(e) => self.failed(e),
                }
            }
        }
    }

    /// Run the queued SYNCs in one pipeline (EVALSHA; the script is loaded first if
    /// this connection has not seen it), then broadcast what changed.
    fn flush_syncs(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.pending);
        let now = now_unix().to_string();
        let ttl = self.s.ttl.as_secs().max(1).to_string();
        let node = self.s.node_id.clone();
        let script = redis::Script::new(SYNC);
        let mut pipe = redis::pipe();
        for (user, count, servers) in &ops {
            let c = pipe
                .cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(0)
                .arg(user)
                .arg(&node)
                .arg(*count)
                .arg(&now)
                .arg(&ttl);
            for s in servers {
                c.arg(s);
            }
        }
        let r = match self.con() {
            Some(con) => match script.load(con) {
                Ok(_) => pipe.query::<Vec<Value>>(con),
                Err(e) => Err(e),
            },
            None => return,
        };
        match r {
            Ok(values) => {
                for ((user, _, _), v) in ops.iter().zip(values.iter()) {
                    match verdict(v) {
                        (1, servers) => self.broadcast(user, &servers, "online"),
                        (2, servers) => self.broadcast(user, &servers, "offline"),
                        _ => {}
                    }
                }
            }
            Err(e) => self.failed(e),
        }
    }

    fn sync(&mut self, user: &str, count: u32, servers: &[String]) {
        let now = now_unix().to_string();
        let ttl = self.s.ttl.as_secs().max(1).to_string();
        let node = self.s.node_id.clone();
        let r = match self.con() {
            Some(con) => {
                let script = redis::Script::new(SYNC);
                let mut inv = script.prepare_invoke();
                inv.arg(user).arg(&node).arg(count).arg(&now).arg(&ttl);
                for s in servers {
                    inv.arg(s);
                }
                inv.invoke::<Value>(con)
            }
            None => return,
        };
        match r {
            Ok(v) => match verdict(&v) {
                (1, servers) => self.broadcast(user, &servers, "online"),
                (2, servers) => self.broadcast(user, &servers, "offline"),
                _ => {}
            },
            Err(e) => self.failed(e),
        }
    }

    /// Refresh this node's liveness and every local user's alive key, in one pipeline.
    fn refresh(&mut self) {
        let ttl = self.s.ttl.as_secs().max(1);
        let expiry = now_unix() + ttl;
        let mut pipe = redis::pipe();
        pipe.cmd("SETEX")
            .arg(format!("xcord:node:{}", self.s.node_id))
            .arg(ttl)
            .arg(1)
            .ignore();
        for user in self.local.keys() {
            pipe.cmd("SETEX")
                .arg(format!("presence:{user}:alive"))
                .arg(ttl)
                .arg(1)
                .ignore();
            pipe.cmd("ZADD")
                .arg("xcord:presence:expiry")
                .arg(expiry)
                .arg(user)
                .ignore();
        }
        let r = match self.con() {
            Some(con) => pipe.query::<()>(con),
            None => return,
        };
        if let Err(e) = r {
            self.failed(e);
        }
    }

    /// Find users whose alive key lapsed and claim them (SPEC §6).
    fn sweep(&mut self) {
        let now = now_unix();
        let due: Vec<String> = match self.con() {
            Some(con) => match redis::cmd("ZRANGEBYSCORE")
                .arg("xcord:presence:expiry")
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_BATCH)
                .query::<Vec<String>>(con)
            {
                Ok(v) => v,
                Err(e) => {
                    self.failed(e);
                    return;
                }
            },
            None => return,
        };
        for user in due {
            if self.local.contains_key(&user) {
                continue; // ours and alive: the next refresh re-arms it
            }
            let r = match self.con() {
                Some(con) => redis::Script::new(CLAIM)
                    .arg(&user)
                    .arg(now)
                    .invoke::<Value>(con),
                None => return,
            };
            match r {
                Ok(v) => {
                    if let (2, servers) = verdict(&v) {
                        info!(user = %user, "presence: claimed a lapsed user, now offline");
                        self.broadcast(&user, &servers, "offline");
                    }
                }
                Err(e) => {
                    self.failed(e);
                    return;
                }
            }
        }
    }

    /// After a Redis gap: write every local user again (hash, alive key, online sets).
    fn reassert_all(&mut self) {
        let users: Vec<(String, u32, Vec<String>)> = self
            .local
            .iter()
            .map(|(u, l)| (u.clone(), l.sessions, l.servers.clone()))
            .collect();
        if !users.is_empty() {
            info!(
                users = users.len(),
                "presence: re-asserting local users after a Redis gap"
            );
        }
        self.refresh();
        for (u, n, servers) in users {
            self.sync(&u, n, &servers);
        }
    }

    fn broadcast(&self, user: &str, servers: &[String], status: &str) {
        for sid in servers {
            let p = sonic_rs::json!({"serverId": sid, "userId": user, "presence": status});
            self.bus.publish(
                &format!("server:{sid}"),
                "server.member.presence",
                &p.to_string(),
            );
        }
        let p = sonic_rs::json!({"userId": user, "presence": status});
        self.bus.publish(
            &format!("user:{user}:presence"),
            "user.presence",
            &p.to_string(),
        );
    }
}
