//! REFRESH (SPEC §8): a new token for the same user extends the session; another
//! user's token, or an invalid one, closes 4004. A session whose token's `exp` plus
//! `--token-grace-seconds` passes without a refresh is closed 4004 by the sweep.

use std::rc::Rc;

use crate::protocol::codes;
use crate::protocol::messages as msg;
use crate::shard::conn::Conn;
use crate::shard::Shard;

pub fn refresh(shard: &Rc<Shard>, conn: &Rc<Conn>, token: &str) {
    let verified = shard.ctx.verifier.verify(token);
    let mut s = conn.session.borrow_mut();
    let Some(session) = s.as_mut() else { return };
    match verified {
        Ok(c) if c.sub == session.claims.sub => {
            let exp = c.exp;
            session.claims = c;
            drop(s);
            conn.send_json(shard, &msg::encode("REFRESHED", msg::Refreshed { exp }));
        }
        _ => {
            drop(s);
            conn.begin_close(codes::AUTH_FAILED, true);
        }
    }
}

/// Whether the session's token passed `exp` + `--token-grace-seconds` at
/// `now_ms` (Unix milliseconds, read once per sweep: "once it has passed", not
/// up to a second later).
pub fn token_expired(shard: &Shard, conn: &Conn, now_ms: u64) -> bool {
    let s = conn.session.borrow();
    let Some(session) = s.as_ref() else {
        return false;
    };
    let grace = shard.ctx.cfg.token_grace.as_secs();
    let deadline = session
        .claims
        .exp
        .saturating_add(grace)
        .saturating_mul(1000);
    now_ms > deadline
}
