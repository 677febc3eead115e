//! Presence and its Redis layout (SPEC §6, the design document's keys exactly).
//!
//! One `xcord-presence` thread per node owns presence: shards tell it (over a
//! bounded queue, never waiting) when a session starts or ends and when a user sets
//! a status; it keeps the node's user → local-session-count map, and with `--redis`
//! it is the only writer of the presence keys:
//!
//! * `presence:{u}` HASH `status`, `last_seen` — the design document's hash;
//! * `presence:{u}:alive` — `SETEX TTL 1`, refreshed for every user with a live
//!   session here every TTL/3 in one pipeline (never per PING);
//! * `server:{sid}:online` SET — the user while online, for each of the user's
//!   servers (claim ∪ `user:{u}:servers`, remembered in `presence:{u}:servers` so
//!   that whoever writes offline removes exactly what was added);
//! * `presence:{u}:sessions` HASH node-id → sessions of `u` on that node, and
//!   `xcord:node:{id}` (`SETEX TTL`) — a node's liveness; a node counts only its
//!   own field, so two nodes never race: one Lua script (`SYNC`) sets this node's
//!   count and decides online/offline from the sum over live nodes, atomically;
//! * `xcord:presence:expiry` ZSET user → when the alive key lapses: the sweep's index.
//!
//! A node that dies stops refreshing; within TTL + `--presence-sweep-seconds` every
//! live node's sweep sees the lapsed users, and the `CLAIM` script lets exactly one
//! of them (the first; the script flips the status) write offline and broadcast.
//! A starting node sweeps at once. After Redis comes back (empty or not) the node
//! re-asserts every local user with `SYNC`.
//!
//! Without `--redis` presence lives in this thread alone: online at a user's first
//! session, offline at the last, broadcast on the in-process bus.
//!
//! Every change is published as `server.member.presence {serverId, userId,
//! presence}` on `server:{sid}` for each of the user's servers and once as
//! `user.presence {userId, presence}` on `user:{u}:presence`.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use crate::bus::Bus;
use crate::metrics::Metrics;
use crate::shard::conn::{Conn, Session};
use crate::shard::Shard;

/// What shards tell the presence thread.
#[derive(Debug)]
pub enum Change {
    /// `done` fires once the session is counted (in Redis, with `--redis`): HELLO_ACK
    /// waits for it, so a session on another node that closes right after this one
    /// is acknowledged can never make the user flap offline.
    Start {
        user: String,
        servers: Vec<String>,
        done: Option<futures_channel::oneshot::Sender<()>>,
    },
    End {
        user: String,
    },
    Set {
        user: String,
        status: String,
    },
}

/// The shards' handle.
pub struct Presence {
    tx: Sender<Change>,
    metrics: Arc<Metrics>,
}

impl Presence {
    fn send(&self, c: Change) -> bool {
        let ok = self.tx.try_send(c).is_ok();
        if !ok {
            self.metrics.bus.dropped("publish_failed");
        }
        ok
    }

    pub fn end(&self, user: &str) -> bool {
        self.send(Change::End {
            user: user.to_owned(),
        })
    }
}

/// Count a new session; the receiver resolves once it is counted (or could not be).
pub fn session_started(
    shard: &Shard,
    claims: &crate::auth::Claims,
) -> futures_channel::oneshot::Receiver<()> {
    let (tx, rx) = futures_channel::oneshot::channel();
    let _ = shard.shared.presence.send(Change::Start {
        user: claims.sub.clone(),
        servers: claims.servers.clone(),
        done: Some(tx),
    });
    rx
}

pub fn session_ended(shard: &Shard, s: &Session) {
    let _ = shard.shared.presence.send(Change::End {
        user: s.claims.sub.clone(),
    });
}

pub fn set_presence(shard: &Shard, conn: &Conn, status: &str) {
    let s = conn.session.borrow();
    let Some(s) = s.as_ref() else { return };
    let _ = shard.shared.presence.send(Change::Set {
        user: s.claims.sub.clone(),
        status: status.to_owned(),
    });
}

/// Settings of the presence thread.
pub struct Settings {
    pub redis_url: Option<String>,
    pub ttl: Duration,
    pub sweep: Duration,
    pub node_id: String,
}

/// The queue into the presence thread (made first: the bus router ends sessions too).
pub fn channel() -> (Sender<Change>, Receiver<Change>) {
    crossbeam_channel::bounded(100_000)
}

/// Start the presence thread.
pub fn start(
    settings: Settings,
    tx: Sender<Change>,
    rx: Receiver<Change>,
    bus: Arc<Bus>,
    metrics: Arc<Metrics>,
) -> Result<Arc<Presence>, String> {
    let client = match &settings.redis_url {
        Some(u) => {
            Some(redis::Client::open(u.as_str()).map_err(|e| format!("bad --redis URL: {e}"))?)
        }
        None => None,
    };
    std::thread::Builder::new()
        .name("xcord-presence".into())
        .spawn(move || {
            let mut p = Worker {
                s: settings,
                client,
                con: None,
                reassert: false,
                pending: Vec::new(),
                dones: Vec::new(),
                local: HashMap::new(),
                bus,
                last_warn: None,
            };
            p.run(rx)
        })
        .map_err(|e| format!("cannot start the presence thread: {e}"))?;
    Ok(Arc::new(Presence { tx, metrics }))
}

/// Set this node's count for a user and decide online/offline over all live nodes.
/// KEYS: none (single-instance Redis). ARGV: user, node, count, now, ttl, claim servers…
/// Returns {1, servers} when the user went online, {2, servers} offline, {0} otherwise.
const SYNC: &str = r#"
local u, node, count, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local pk, sk, srv = 'presence:'..u, 'presence:'..u..':sessions', 'presence:'..u..':servers'
if count > 0 then redis.call('HSET', sk, node, count) else redis.call('HDEL', sk, node) end
local total = 0
local s = redis.call('HGETALL', sk)
for i = 1, #s, 2 do
  if redis.call('EXISTS', 'xcord:node:'..s[i]) == 1 or s[i] == node then
    total = total + tonumber(s[i + 1])
  else
    redis.call('HDEL', sk, s[i])
  end
end
local st = redis.call('HGET', pk, 'status')
if total > 0 then
  redis.call('SETEX', pk..':alive', ttl, 1)
  redis.call('ZADD', 'xcord:presence:expiry', tonumber(now) + ttl, u)
  for i = 6, #ARGV do redis.call('SADD', srv, ARGV[i]) end
  redis.call('SUNIONSTORE', srv, srv, 'user:'..u..':servers')
  local servers = redis.call('SMEMBERS', srv)
  for _, sid in ipairs(servers) do redis.call('SADD', 'server:'..sid..':online', u) end
  if st == false or st == 'offline' then
    redis.call('HSET', pk, 'status', 'online', 'last_seen', now)
    return {1, servers}
  end
  return {0}
end
if st ~= false and st ~= 'offline' then
  redis.call('HSET', pk, 'status', 'offline', 'last_seen', now)
  redis.call('DEL', pk..':alive')
  redis.call('ZREM', 'xcord:presence:expiry', u)
  local servers = redis.call('SMEMBERS', srv)
  for _, sid in ipairs(servers) do redis.call('SREM', 'server:'..sid..':online', u) end
  return {2, servers}
end
redis.call('ZREM', 'xcord:presence:expiry', u)
return {0}
"#;

/// Claim a user whose alive key lapsed: offline unless a live node still holds a
/// session. Exactly one caller gets {2, servers}; the others get {0}.
/// ARGV: user, now.
const CLAIM: &str = r#"
local u, now = ARGV[1], ARGV[2]
local pk, sk = 'presence:'..u, 'presence:'..u..':sessions'
if redis.call('EXISTS', pk..':alive') == 1 then return {0} end
local live = 0
local s = redis.call('HGETALL', sk)
for i = 1, #s, 2 do
  if redis.call('EXISTS', 'xcord:node:'..s[i]) == 1 then live = live + tonumber(s[i + 1]) else redis.call('HDEL', sk, s[i]) end
end
if live > 0 then return {0} end
redis.call('ZREM', 'xcord:presence:expiry', u)
local st = redis.call('HGET', pk, 'status')
if st == false or st == 'offline' then return {0} end
redis.call('HSET', pk, 'status', 'offline', 'last_seen', now)
local servers = redis.call('SMEMBERS', pk..':servers')
for _, sid in ipairs(servers) do redis.call('SREM', 'server:'..sid..':online', u) end
return {2, servers}
"#;

/// SET_PRESENCE: ARGV user, status, now. Returns the user's servers.
const SET: &str = r#"
local u = ARGV[1]
redis.call('HSET', 'presence:'..u, 'status', ARGV[2], 'last_seen', ARGV[3])
return redis.call('SMEMBERS', 'presence:'..u..':servers')
"#;

struct Local {
    sessions: u32,
    servers: Vec<String>,
}

struct Worker {
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
    last_warn: Option<Instant>,
}

fn now_unix() -> u64 {
    crate::auth::now_secs()
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
    fn run(&mut self, rx: Receiver<Change>) {
        let refresh_every = (self.s.ttl / 3).max(Duration::from_millis(200));
        let mut next_refresh = Instant::now();
        let mut next_sweep = Instant::now(); // a starting node sweeps at once
        loop {
            let next = next_refresh.min(next_sweep);
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(c) => {
                    // Everything queued meanwhile is written in one pipeline.
                    self.apply(c);
                    for _ in 0..255 {
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
        if self
            .last_warn
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            warn!("presence: {what}: {e}");
            self.last_warn = Some(Instant::now());
        }
    }

    /// The Redis connection, (re)connecting when needed; re-asserts after a gap.
    fn con(&mut self) -> Option<&mut redis::Connection> {
        if self.con.is_none() {
            let client = self.client.as_ref()?;
            match client.get_connection_with_timeout(Duration::from_secs(2)) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
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
                .arg(1000)
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
