//! TYPING_START / TYPING_STOP (SPEC §6): on `dm:{conv}` or
//! `server:{sid}:channel:{cid}` only, authorized as SUBSCRIBE would be, published
//! as `dm.typing` / `server.typing`. A TYPING_START not repeated within
//! `TYPING_TTL` ends by itself, as does every open indicator at the session's end.

use std::rc::Rc;
use std::time::Instant;

use super::authorize::authorize;
use crate::channels::{self, Root, TypingTarget};
use crate::limits::TYPING_TTL;
use crate::protocol::messages as msg;
use crate::protocol::ErrorCode;
use crate::shard::conn::Conn;
use crate::shard::Shard;

/// Publish `dm.typing` / `server.typing` on `channel`.
pub fn publish(shard: &Shard, user: &str, channel: &str, typing: bool) {
    let payload = match channels::typing_target(channel) {
        Some(TypingTarget::Dm { conversation }) => (
            "dm.typing",
            sonic_rs::json!({"conversationId": conversation, "userId": user, "isTyping": typing}),
        ),
        Some(TypingTarget::ServerChannel {
            server,
            channel: cid,
        }) => (
            "server.typing",
            sonic_rs::json!({"serverId": server, "channelId": cid, "userId": user, "isTyping": typing}),
        ),
        None => return,
    };
    shard
        .ctx
        .bus
        .publish(channel, payload.0, &payload.1.to_string());
}

pub async fn typing(shard: &Rc<Shard>, conn: &Rc<Conn>, channel_id: String, start: bool) {
    let Some(target) = channels::typing_target(&channel_id) else {
        conn.send_json(
            shard,
            &msg::error(
                ErrorCode::InvalidChannel,
                "typing needs dm:{conv} or server:{sid}:channel:{cid}",
                Some(&channel_id),
            ),
        );
        return;
    };
    let Some(claims) = conn.session.borrow().as_ref().map(|s| s.claims.clone()) else {
        return;
    };
    let user = claims.sub.clone();
    let (root, id) = match &target {
        TypingTarget::Dm { conversation } => (Root::Dm, conversation.as_str()),
        TypingTarget::ServerChannel { server, .. } => (Root::Server, server.as_str()),
    };
    if !authorize(shard, &claims, root, id).await {
        conn.send_json(
            shard,
            &msg::error(
                ErrorCode::Forbidden,
                "not allowed on this channel",
                Some(&channel_id),
            ),
        );
        return;
    }
    {
        let mut s = conn.session.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        session.typing.retain(|(c, _)| *c != channel_id);
        if start {
            session
                .typing
                .push((channel_id.clone(), Instant::now() + TYPING_TTL));
        }
    }
    publish(shard, &user, &channel_id, start);
}

/// Whether a typing indicator of `conn` ran out.
pub fn due(conn: &Conn, now: Instant) -> bool {
    conn.session
        .borrow()
        .as_ref()
        .is_some_and(|s| s.typing.iter().any(|(_, until)| *until <= now))
}

/// End the typing indicators of `conn` that ran out (with an `isTyping: false`).
pub fn expire(shard: &Shard, conn: &Conn, now: Instant) {
    let mut stopped: Vec<String> = Vec::new();
    let user;
    {
        let mut s = conn.session.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        if session.typing.is_empty() {
            return;
        }
        user = session.claims.sub.clone();
        session.typing.retain(|(c, until)| {
            if *until <= now {
                stopped.push(c.clone());
                false
            } else {
                true
            }
        });
    }
    for c in stopped {
        publish(shard, &user, &c, false);
    }
}
