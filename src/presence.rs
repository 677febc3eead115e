//! Presence (SPEC §6). Placeholder until the presence issue: status changes are
//! broadcast on the bus; nothing is kept in Redis yet.

use crate::shard::conn::{Conn, Session};
use crate::shard::Shard;

pub fn session_started(_shard: &Shard, _s: &Session) {}

pub fn session_ended(_shard: &Shard, _s: &Session) {}

pub fn set_presence(shard: &Shard, conn: &Conn, status: &str) {
    let s = conn.session.borrow();
    let Some(s) = s.as_ref() else { return };
    broadcast(shard, &s.claims.sub, &s.claims.servers, status);
}

/// Publish `server.member.presence` on each server and `user.presence` once.
pub fn broadcast(shard: &Shard, user: &str, servers: &[String], status: &str) {
    for sid in servers {
        let p = sonic_rs::json!({"serverId": sid, "userId": user, "presence": status});
        shard.shared.bus.publish(
            &format!("server:{sid}"),
            "server.member.presence",
            &p.to_string(),
        );
    }
    let p = sonic_rs::json!({"userId": user, "presence": status});
    shard.shared.bus.publish(
        &format!("user:{user}:presence"),
        "user.presence",
        &p.to_string(),
    );
}
