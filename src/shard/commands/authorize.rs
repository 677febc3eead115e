//! Who may subscribe, or type, where (SPEC §4): the token's claims first, then the
//! Redis sets `user:{sub}:dms` / `user:{sub}:servers` for what the claims do not
//! grant — read at the time of the command, so a user who joins a server needs no
//! new token. SUBSCRIBE and TYPING share this one rule.

use crate::auth::Claims;
use crate::channels::Root;
use crate::limits::REDIS_ANSWER_TIMEOUT;
use crate::shard::Shard;

/// Whether the claims alone grant the root `root` with id `id` (`user:{id}`,
/// `dm:{id}`…); `None` means "ask Redis".
pub fn by_claims(claims: &Claims, root: Root, id: &str) -> Option<bool> {
    match root {
        Root::User => Some(id == claims.sub),
        Root::Live => Some(true),
        Root::Dm => claims.dms.iter().any(|d| d == id).then_some(true),
        Root::Server => claims.servers.iter().any(|d| d == id).then_some(true),
    }
}

/// Ask Redis whether `user` is in each (set, member) pair, in one pipeline; no
/// answer within the timeout (or no Redis) counts as "no".
pub async fn memberships(shard: &Shard, user: &str, asks: &[(Root, String)]) -> Vec<bool> {
    let Some(redis) = shard.ctx.bus.redis() else {
        return vec![false; asks.len()];
    };
    if asks.is_empty() {
        return Vec::new();
    }
    let mut pipe = crate::link::Pipe::new();
    for (root, id) in asks {
        let set = if *root == Root::Dm {
            format!("user:{user}:dms")
        } else {
            format!("user:{user}:servers")
        };
        pipe.cmd("SISMEMBER").arg(set).arg(id);
    }
    let r =
        glommio::timer::timeout(REDIS_ANSWER_TIMEOUT, async { Ok(redis.query(pipe).await) }).await;
    match r {
        Ok(Ok(vals)) => {
            let mut out: Vec<bool> = vals
                .iter()
                .map(|v| matches!(v, redis::Value::Int(1)))
                .collect();
            out.resize(asks.len(), false);
            out
        }
        _ => vec![false; asks.len()],
    }
}

/// Whether `claims` grant `root`/`id`, asking Redis when the claims do not say.
pub async fn authorize(shard: &Shard, claims: &Claims, root: Root, id: &str) -> bool {
    match by_claims(claims, root, id) {
        Some(v) => v,
        None => memberships(shard, &claims.sub, &[(root, id.to_owned())])
            .await
            .first()
            .copied()
            .unwrap_or(false),
    }
}
