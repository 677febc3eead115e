//! RESUME (SPEC §8): authenticate like HELLO, then ask the bus thread — which
//! stamps `seq` and keeps the replay ring and the parked sessions — for the session.
//! Its answer (a [`Grant`]) comes back through this shard's inbox in order with its
//! events, so applying it is the seam: every event before it is in the replay,
//! every event after it arrives live.

use std::rc::Rc;
use std::time::Instant;

use super::hello::authenticate;
use crate::bus::{Grant, Resumed, RouteOp};
use crate::protocol::codes;
use crate::protocol::messages as msg;
use crate::shard::conn::{Conn, Phase};
use crate::shard::session::{RateWindow, Session};
use crate::shard::Shard;

pub async fn resume(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    token: Option<String>,
    session_id: String,
    seq: u64,
) {
    let Some(claims) = authenticate(shard, conn, token) else {
        conn.begin_close(codes::AUTH_FAILED, true);
        return;
    };
    if conn.creds.resuming.borrow().is_some() {
        return; // one RESUME at a time
    }
    let user = claims.sub.clone();
    *conn.creds.resuming.borrow_mut() = Some(Box::new(claims));
    // The bus thread answers in this shard's inbox, in order with its events.
    shard.ctx.bus.route_op(RouteOp::Resume {
        session_id,
        user,
        seq,
        shard: shard.id as u8,
        conn_key: conn.key.get(),
        conn_id: conn.id,
    });
}

/// Nobody takes the session the grant carries now: give back the routes the grant
/// held. A session whose new connection closed before the grant arrived is parked
/// again, so the client may RESUME once more (a RESUME that reached the bus while
/// the grant was in flight waits for this, not INVALID_SESSION); one a HELLO
/// superseded ends.
fn give_up(shard: &Shard, r: Resumed, park_again: bool) {
    let d = r.session;
    let names: Vec<String> = d.names().map(str::to_owned).collect();
    let user = d.claims.sub.clone();
    // Queued before the releases: the names never stop being recorded.
    shard.ctx.bus.route_op(RouteOp::Settle {
        session_id: d.session_id.clone(),
        parked: park_again.then(|| Box::new(d)),
    });
    for n in &names {
        shard.ctx.bus.release_route(shard.id, n);
    }
    if !park_again {
        shard.presence_ended(&user);
    }
}

/// A RESUME's answer, applied in inbox order: every event before it is in the
/// replay, every event after it is live.
pub fn apply_grant(shard: &Rc<Shard>, g: Grant) {
    let conn = shard.conns.borrow().get(g.conn_key as usize).cloned();
    let conn = conn.filter(|c| c.id == g.conn_id);
    let claims = conn
        .as_ref()
        .and_then(|c| c.creds.resuming.borrow_mut().take());
    let (Some(conn), Some(claims)) = (conn, claims) else {
        // The connection is gone.
        if let Some(r) = g.outcome {
            give_up(shard, r, true);
        }
        return;
    };
    let Some(r) = g.outcome else {
        conn.send_json(shard, &msg::encode("INVALID_SESSION", msg::Empty {}));
        return;
    };
    if conn.phase() != Phase::AwaitHello {
        // Closing: keep the session for another try. A HELLO got there first: the
        // client chose a new session, the old one ends here.
        let park_again = conn.is_closing();
        give_up(shard, r, park_again);
        return;
    }
    let key = conn.key.get();
    let d = r.session;
    // Taken: a RESUME of it waiting at the bus is told INVALID_SESSION. Queued
    // before any Park of this connection's close, so the session is never lent twice.
    shard.ctx.bus.route_op(RouteOp::Settle {
        session_id: d.session_id.clone(),
        parked: None,
    });
    shard.subscribe(&d.auto_sub, key);
    for (n, _) in &d.subs {
        shard.subscribe(n, key);
    }
    // The shard's own routes are in place (or queued): the grant's go.
    for n in d.names() {
        shard.ctx.bus.release_route(shard.id, n);
    }
    let replayed = r.replay.len() as u64;
    let limit = shard.ctx.cfg.send_queue_bytes;
    for ev in &r.replay {
        conn.push_event(&ev.frame, ev.received, limit);
    }
    conn.last_seq.set(r.s0);
    let session = Session {
        session_id: d.session_id,
        claims: *claims,
        floor: d.floor,
        subs: d.subs.into_iter().collect(),
        rate: RateWindow::new(Instant::now()),
        typing: Vec::new(),
    };
    let reply = msg::encode(
        "RESUMED",
        msg::Resumed {
            session_id: &session.session_id,
            replayed,
        },
    );
    *conn.session.borrow_mut() = Some(session);
    if conn.phase() != Phase::AwaitHello {
        // The replay overflowed the send queue (closed 4010): not resumed.
        return;
    }
    conn.life.phase.set(Phase::Ready);
    conn.last_rx.set(Instant::now());
    conn.send_json(shard, &reply);
}
