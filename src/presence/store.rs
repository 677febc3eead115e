//! Presence in Redis (SPEC §6): what the presence thread reads and writes, over one
//! command connection. Every decision is one of the Lua scripts (`scripts.rs`) on
//! one user's slot; the writes to other slots follow it in the next pipeline.
//!
//! Keys (u a user, N this node's id):
//! * design document: `presence:u` HASH `status`, `last_seen`; `presence:u:alive`
//!   (`SETEX TTL 1`); `server:{sid}:online` SET;
//! * the gateway's own: `xcord:{presence:u}:sessions` HASH node → its sessions of u;
//!   `xcord:{presence:u}:servers` SET, the servers u was added to online in (so
//!   whoever writes offline removes exactly those); `xcord:nodes` ZSET node → until
//!   when it is alive; `xcord:node:N:users` SET, the users N holds sessions of (so a
//!   node that lost Redis for a while can replace what Redis holds for it, zeros
//!   included); `xcord:presence:expiry` ZSET u → when its alive key lapses (the
//!   sweep's index).

use redis::{RedisResult, Value};
use std::collections::HashSet;
use std::time::Duration;
use xcord_common::clock::unix_secs;

use super::scripts::{CLAIM, FORGET, SET, SYNC};
use crate::limits::SWEEP_BATCH;
use crate::link::{Client, Conn, Pipe};

/// A change everyone hears of: `user` is now `status`, in these servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    pub user: String,
    pub servers: Vec<String>,
    pub status: String,
}

/// This node's count of a user's sessions, and the servers its sessions' claims
/// name.
#[derive(Debug, Clone)]
pub struct SyncOp {
    pub user: String,
    pub count: u32,
    pub servers: Vec<String>,
}

const EXPIRY: &str = "xcord:presence:expiry";
const NODES: &str = "xcord:nodes";
/// Users refreshed per pipeline (bounds one pipeline's memory on a big node).
const REFRESH_CHUNK: usize = 5000;

fn user_keys(u: &str) -> [String; 3] {
    [
        format!("presence:{u}"),
        format!("xcord:{{presence:{u}}}:sessions"),
        format!("xcord:{{presence:{u}}}:servers"),
    ]
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

/// A script's `{code, list}` answer.
fn verdict(v: &Value) -> (i64, Vec<String>) {
    match v {
        Value::Array(items) => {
            let code = match items.first() {
                Some(Value::Int(i)) => *i,
                _ => -1,
            };
            (code, items.get(1).map(strings).unwrap_or_default())
        }
        _ => (-1, Vec::new()),
    }
}

pub struct Store {
    client: Client,
    con: Option<Conn>,
    node: String,
    ttl: Duration,
    /// Redis was unreachable (or never reached) since the node last replaced what
    /// Redis holds for it.
    gap: bool,
    scripts: [redis::Script; 4],
}

impl Store {
    pub fn new(client: Client, node: String, ttl: Duration) -> Store {
        Store {
            client,
            con: None,
            node,
            ttl,
            gap: true,
            scripts: [
                redis::Script::new(SYNC),
                redis::Script::new(CLAIM),
                redis::Script::new(SET),
                redis::Script::new(FORGET),
            ],
        }
    }

    /// Connect if needed (loading the scripts). `Ok(true)`: connected after a gap —
    /// the caller must re-assert the node's whole view now.
    pub fn connect(&mut self) -> RedisResult<bool> {
        if self.con.is_none() {
            let mut c = self.client.connect()?;
            for code in [SYNC, CLAIM, SET, FORGET] {
                // On a cluster, SCRIPT LOAD goes to every master.
                c.query_cmd::<Value>(redis::cmd("SCRIPT").arg("LOAD").arg(code))?;
            }
            self.con = Some(c);
        }
        Ok(std::mem::take(&mut self.gap))
    }

    /// A command failed: drop the connection; the next connect is after a gap.
    pub fn failed(&mut self) {
        self.con = None;
        self.gap = true;
    }

    fn con(&mut self) -> RedisResult<&mut Conn> {
        match self.con.as_mut() {
            Some(c) => Ok(c),
            None => Err((redis::ErrorKind::Io, "not connected").into()),
        }
    }

    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    /// The users of `user:{u}:servers` for each user (one pipeline).
    fn memberships(&mut self, users: &[&str]) -> RedisResult<Vec<Vec<String>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = Pipe::new();
        for u in users {
            pipe.cmd("SMEMBERS").arg(format!("user:{u}:servers"));
        }
        let v: Vec<Value> = self.con()?.query(&pipe)?;
        Ok(v.iter().map(strings).collect())
    }

    /// Claim servers ∪ the Redis set, sorted, without repeats.
    fn servers_now(claim: &[String], members: Vec<String>) -> Vec<String> {
        let mut all: Vec<String> = claim.iter().cloned().chain(members).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Write this node's counts (one round trip for memberships, one for the
    /// scripts, one for what follows them); returns what must be broadcast.
    pub fn sync(&mut self, ops: &[SyncOp]) -> RedisResult<Vec<Broadcast>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let asking: Vec<&str> = ops
            .iter()
            .filter(|o| o.count > 0)
            .map(|o| o.user.as_str())
            .collect();
        let mut members = self.memberships(&asking)?.into_iter();
        let now = unix_secs();
        let mut servers_of = Vec::with_capacity(ops.len());
        let mut pipe = Pipe::new();
        for op in ops {
            let servers = if op.count > 0 {
                Self::servers_now(&op.servers, members.next().unwrap_or_default())
            } else {
                Vec::new()
            };
            let keys = user_keys(&op.user);
            pipe.cmd("EVALSHA")
                .arg(self.scripts[0].get_hash())
                .arg(3)
                .arg(&keys[..])
                .arg(&self.node)
                .arg(op.count)
                .arg(now)
                .arg(&servers[..]);
            servers_of.push(servers);
        }
        let verdicts: Vec<Value> = self.con()?.query(&pipe)?;
        let ttl = self.ttl_secs();
        let node_users = format!("xcord:node:{}:users", self.node);
        let mut after = Pipe::new();
        let mut out = Vec::new();
        for ((op, servers), v) in ops.iter().zip(servers_of).zip(verdicts.iter()) {
            let u = &op.user;
            if op.count > 0 {
                after.cmd("SADD").arg(&node_users).arg(u).ignore();
                after
                    .cmd("SETEX")
                    .arg(format!("presence:{u}:alive"))
                    .arg(ttl)
                    .arg(1)
                    .ignore();
                after.cmd("ZADD").arg(EXPIRY).arg(now + ttl).arg(u).ignore();
            } else {
                after.cmd("SREM").arg(&node_users).arg(u).ignore();
            }
            match verdict(v) {
                (code @ (0 | 1), gone) => {
                    for sid in &servers {
                        after
                            .cmd("SADD")
                            .arg(format!("server:{sid}:online"))
                            .arg(u)
                            .ignore();
                    }
                    for sid in &gone {
                        after
                            .cmd("SREM")
                            .arg(format!("server:{sid}:online"))
                            .arg(u)
                            .ignore();
                    }
                    if code == 1 {
                        out.push(Broadcast {
                            user: u.clone(),
                            servers,
                            status: "online".into(),
                        });
                    }
                }
                (2, old) => {
                    self.offline_writes(&mut after, u, &old);
                    out.push(Broadcast {
                        user: u.clone(),
                        servers: old,
                        status: "offline".into(),
                    });
                }
                (3, left) if !left.is_empty() => self.offline_writes(&mut after, u, &left),
                _ => {}
            }
        }
        self.con()?.query::<()>(&after)?;
        Ok(out)
    }

    /// The writes that follow an offline decision, outside the user's slot, then
    /// the remembered servers forgotten (only once the online sets are clean).
    fn offline_writes(&self, p: &mut Pipe, u: &str, servers: &[String]) {
        for sid in servers {
            p.cmd("SREM")
                .arg(format!("server:{sid}:online"))
                .arg(u)
                .ignore();
        }
        p.cmd("DEL").arg(format!("presence:{u}:alive")).ignore();
        p.cmd("ZREM").arg(EXPIRY).arg(u).ignore();
        p.cmd("EVALSHA")
            .arg(self.scripts[3].get_hash())
            .arg(3)
            .arg(&user_keys(u)[..])
            .ignore();
    }

    /// SET_PRESENCE; `None` when the status did not change (nothing is published).
    pub fn set(
        &mut self,
        user: &str,
        status: &str,
        claim: &[String],
    ) -> RedisResult<Option<Broadcast>> {
        let members = self
            .memberships(&[user])?
            .into_iter()
            .next()
            .unwrap_or_default();
        let servers = Self::servers_now(claim, members);
        let keys = user_keys(user);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts[2].get_hash())
            .arg(3)
            .arg(&keys[..])
            .arg(status)
            .arg(unix_secs())
            .arg(&servers[..]);
        let v: Value = self.con()?.query_cmd(&cmd)?;
        let (code, gone) = verdict(&v);
        if code != 1 {
            return Ok(None);
        }
        let mut after = Pipe::new();
        for sid in &servers {
            after
                .cmd("SADD")
                .arg(format!("server:{sid}:online"))
                .arg(user)
                .ignore();
        }
        for sid in &gone {
            after
                .cmd("SREM")
                .arg(format!("server:{sid}:online"))
                .arg(user)
                .ignore();
        }
        self.con()?.query::<()>(&after)?;
        Ok(Some(Broadcast {
            user: user.to_owned(),
            servers,
            status: status.to_owned(),
        }))
    }

    /// This node is alive, and so is every user it holds (their alive keys and
    /// their place in the sweep's index move on by one TTL).
    pub fn refresh<'a>(&mut self, users: impl Iterator<Item = &'a String>) -> RedisResult<()> {
        let ttl = self.ttl_secs();
        let now = unix_secs();
        let mut pipe = Pipe::new();
        pipe.cmd("ZADD")
            .arg(NODES)
            .arg(now + ttl)
            .arg(&self.node)
            .ignore();
        // Nodes gone for long are forgotten (their users were claimed by then).
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(NODES)
            .arg("-inf")
            .arg(now.saturating_sub(10 * ttl))
            .ignore();
        let mut n = 0;
        for u in users {
            pipe.cmd("SETEX")
                .arg(format!("presence:{u}:alive"))
                .arg(ttl)
                .arg(1)
                .ignore();
            pipe.cmd("ZADD").arg(EXPIRY).arg(now + ttl).arg(u).ignore();
            n += 1;
            if n % REFRESH_CHUNK == 0 {
                self.con()?.query::<()>(&pipe)?;
                pipe = Pipe::new();
            }
        }
        self.con()?.query::<()>(&pipe)
    }

    /// Users Redis says this node holds (to replace with the node's own view).
    pub fn node_users(&mut self) -> RedisResult<Vec<String>> {
        let key = format!("xcord:node:{}:users", self.node);
        self.con()?.query_cmd(redis::cmd("SMEMBERS").arg(key))
    }

    /// Find users whose alive key lapsed and claim them (SPEC §6); `held` tells the
    /// users this node holds (its refresh re-arms those). A user a live node still
    /// holds is re-armed, so the sweep always gets past it.
    pub fn sweep(&mut self, held: impl Fn(&str) -> bool) -> RedisResult<Vec<Broadcast>> {
        let now = unix_secs();
        // Live: alive until strictly after now. A node refreshes every TTL/3, so a
        // live one is always well ahead; one whose last refresh was a TTL ago died
        // in the same second its users' alive keys lapsed, and must not hold them.
        let live: Vec<String> = self.con()?.query_cmd(
            redis::cmd("ZRANGEBYSCORE")
                .arg(NODES)
                .arg(format!("({now}"))
                .arg("+inf"),
        )?;
        let due: Vec<String> = self.con()?.query_cmd(
            redis::cmd("ZRANGEBYSCORE")
                .arg(EXPIRY)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_BATCH),
        )?;
        let due: Vec<String> = due.into_iter().filter(|u| !held(u)).collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = Pipe::new();
        for u in &due {
            let keys = user_keys(u);
            pipe.cmd("EVALSHA")
                .arg(self.scripts[1].get_hash())
                .arg(3)
                .arg(&keys[..])
                .arg(now)
                .arg(&live[..]);
        }
        let verdicts: Vec<Value> = self.con()?.query(&pipe)?;
        let ttl = self.ttl_secs();
        let mut after = Pipe::new();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (u, v) in due.iter().zip(verdicts.iter()) {
            if !seen.insert(u) {
                continue;
            }
            match verdict(v) {
                (2, servers) => {
                    tracing::info!(user = %u, "presence: claimed a lapsed user, now offline");
                    self.offline_writes(&mut after, u, &servers);
                    out.push(Broadcast {
                        user: u.clone(),
                        servers,
                        status: "offline".into(),
                    });
                }
                (0, _) => {
                    after.cmd("ZADD").arg(EXPIRY).arg(now + ttl).arg(u).ignore();
                }
                (3, left) if !left.is_empty() => self.offline_writes(&mut after, u, &left),
                _ => {
                    after.cmd("ZREM").arg(EXPIRY).arg(u).ignore();
                }
            }
        }
        self.con()?.query::<()>(&after)?;
        Ok(out)
    }
}
