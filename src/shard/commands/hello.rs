//! HELLO (SPEC §3): authenticate (the token in the message, else the upgrade's
//! `Authorization` header), route the user's own tree `user:{sub}`, have presence
//! count the session, then HELLO_ACK — events routed meanwhile are held and follow
//! the ACK, so the session sees its own `user.presence`.

use std::rc::Rc;
use std::time::Instant;

use crate::auth::Claims;
use crate::bus::Floor;
use crate::channels;
use crate::limits::PRESENCE_COUNT_WAIT;
use crate::protocol::codes;
use crate::protocol::messages as msg;
use crate::shard::conn::{Conn, Phase};
use crate::shard::session::{RateWindow, Session, SubSet};
use crate::shard::Shard;

fn new_session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The claims for a HELLO/RESUME: the token in the message if any (it must be
/// valid), else the upgrade's Authorization header.
pub(super) fn authenticate(shard: &Shard, conn: &Conn, token: Option<String>) -> Option<Claims> {
    match token {
        Some(t) => shard.ctx.verifier.verify(&t).ok(),
        None => conn.creds.header.borrow().as_deref().cloned(),
    }
}

pub async fn hello(shard: &Rc<Shard>, conn: &Rc<Conn>, token: Option<String>) {
    let Some(claims) = authenticate(shard, conn, token) else {
        conn.begin_close(codes::AUTH_FAILED, true);
        return;
    };
    // The user tree is routed first, so the session sees its own `user.presence`;
    // events that arrive before HELLO_ACK are held and follow it.
    let auto_sub = channels::user_channel(&claims.sub);
    conn.out.hold();
    let floor = shard.floor();
    let started = std::time::Instant::now();
    let new_root = channels::root_of(&auto_sub)
        .filter(|r| shard.root_is_new(r))
        .map(str::to_owned);
    shard.subscribe(&auto_sub, conn.key.get());
    // Counted before HELLO_ACK (SPEC §6): once the client has it, this session keeps
    // its user online even if another of the user's sessions, on any node, ends
    // right away.
    let counted = shard.presence_started(&claims);
    let _ = glommio::timer::timeout(PRESENCE_COUNT_WAIT, async { Ok(counted.await) }).await;
    // With `--routing roots`, the user's root confirmed on Redis first (SPEC §9);
    // past the wait HELLO is acknowledged anyway and the root keeps being retried.
    if let Some(root) = new_root {
        super::subscribe::unconfirmed(shard, &[root], started).await;
    }
    let held = conn.out.release_held();
    if conn.phase() != Phase::AwaitHello {
        // Closed while waiting: the session never started.
        shard.unsubscribe(&auto_sub, conn.key.get());
        shard.presence_ended(&claims.sub);
        return;
    }
    start_session(shard, conn, claims, new_session_id(), floor);
    if !held.is_empty() {
        conn.out.buf.borrow_mut().extend_from_slice(&held);
        conn.wake_writer();
    }
}

fn start_session(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    claims: Claims,
    session_id: String,
    floor: Floor,
) {
    // hello() routed the user tree before this.
    let ack = msg::encode(
        "HELLO_ACK",
        msg::HelloAck {
            session_id: &session_id,
            heartbeat_interval: shard.ctx.cfg.heartbeat_ms(),
            user_id: &claims.sub,
        },
    );
    let session = Session {
        session_id,
        claims,
        floor,
        subs: SubSet::default(),
        rate: RateWindow::new(Instant::now()),
        typing: Vec::new(),
    };
    *conn.session.borrow_mut() = Some(session);
    conn.life.phase.set(Phase::Ready);
    conn.send_json(shard, &ack);
}
