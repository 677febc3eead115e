//! The client commands (SPEC §3), one file each, and the dispatch that checks
//! where the connection is (before HELLO only HELLO or RESUME), the rate window,
//! and the decoding failures (4002, BAD_PAYLOAD, UNKNOWN_TYPE) before a command
//! runs. Commands of one connection run one at a time, in order.

pub mod authorize;
pub mod hello;
pub mod refresh;
pub mod resume;
pub mod subscribe;
pub mod typing;

use std::rc::Rc;
use std::time::Instant;
use tungstenite::protocol::Message;
use xcord_common::clock::unix_millis;

use super::conn::{Conn, Phase};
use super::session::RateVerdict;
use super::Shard;
use crate::protocol::messages::{self as msg, ClientMsg, CommandKind, DecodeError};
use crate::protocol::{codes, ErrorCode};

/// Run one client message.
pub async fn handle_message(shard: &Rc<Shard>, conn: &Rc<Conn>, m: Message) {
    let text = match m {
        Message::Text(t) => t,
        Message::Binary(_) => {
            conn.begin_close(codes::NOT_JSON, true);
            return;
        }
        // Control frames: tungstenite answered pings; any frame counted as activity.
        _ => return,
    };
    let decoded = msg::decode(text.as_bytes());
    if conn.phase() == Phase::AwaitHello {
        match decoded {
            Err(DecodeError::NotJson) => conn.begin_close(codes::NOT_JSON, true),
            Ok(ClientMsg::Hello { token }) => {
                shard.metrics().command(CommandKind::Hello);
                hello::hello(shard, conn, token).await
            }
            Ok(ClientMsg::Resume {
                token,
                session_id,
                seq,
            }) => {
                shard.metrics().command(CommandKind::Resume);
                resume::resume(shard, conn, token, session_id, seq).await
            }
            Err(e) if e.is_handshake() => conn.begin_close(codes::AUTH_FAILED, true),
            _ => conn.begin_close(codes::NOT_AUTHENTICATED, true),
        }
        return;
    }
    let cmd = match decoded {
        Err(DecodeError::NotJson) => {
            conn.begin_close(codes::NOT_JSON, true);
            return;
        }
        Ok(ClientMsg::Hello { .. }) | Ok(ClientMsg::Resume { .. }) => {
            conn.begin_close(codes::ALREADY_AUTHENTICATED, true);
            return;
        }
        Ok(ClientMsg::Ping) => {
            shard.metrics().command(CommandKind::Ping);
            conn.send_json(
                shard,
                &msg::encode(
                    "PONG",
                    msg::Pong {
                        timestamp: unix_millis(),
                    },
                ),
            );
            return;
        }
        other => other,
    };
    // Everything else is a rate-limited command.
    let verdict = {
        let mut s = conn.session.borrow_mut();
        match s.as_mut() {
            Some(s) => s.rate.check(Instant::now(), shard.ctx.cfg.rate_limit),
            None => RateVerdict::Allow,
        }
    };
    match verdict {
        RateVerdict::Close => {
            conn.begin_close(codes::RATE_LIMITED, true);
            return;
        }
        RateVerdict::Limited => {
            conn.send_json(
                shard,
                &msg::error(ErrorCode::RateLimited, "rate limit exceeded", None),
            );
            return;
        }
        RateVerdict::Allow => {}
    }
    match cmd {
        Err(DecodeError::BadPayload { kind, message }) => {
            shard
                .metrics()
                .command(kind.unwrap_or(CommandKind::Unknown));
            conn.send_json(shard, &msg::error(ErrorCode::BadPayload, message, None));
        }
        Err(DecodeError::UnknownType(t)) => {
            shard.metrics().command(CommandKind::Unknown);
            let m = format!("unknown type {}", t.chars().take(64).collect::<String>());
            conn.send_json(shard, &msg::error(ErrorCode::UnknownType, &m, None));
        }
        Err(DecodeError::NotJson) => {}
        Ok(c) => {
            shard.metrics().command(c.kind());
            match c {
                ClientMsg::Subscribe { channels } => {
                    subscribe::subscribe(shard, conn, channels).await
                }
                ClientMsg::Unsubscribe { channels } => {
                    subscribe::unsubscribe(shard, conn, channels)
                }
                ClientMsg::Typing { channel_id, start } => {
                    typing::typing(shard, conn, channel_id, start).await
                }
                ClientMsg::SetPresence { status } => set_presence(shard, conn, &status),
                ClientMsg::Refresh { token } => refresh::refresh(shard, conn, &token),
                ClientMsg::Hello { .. } | ClientMsg::Resume { .. } | ClientMsg::Ping => {}
            }
        }
    }
}

fn set_presence(shard: &Shard, conn: &Conn, status: &str) {
    if let Some(s) = conn.session.borrow().as_ref() {
        shard.presence_set(&s.claims, status);
    }
}

/// Whether a ready connection has per-tick work: typing that ran out, a token
/// that expired (`now_ms`: Unix milliseconds). Reads only; no clock.
pub fn tick_due(shard: &Shard, conn: &Conn, now: Instant, now_ms: u64) -> bool {
    typing::due(conn, now) || refresh::token_expired(shard, conn, now_ms)
}

/// Per-tick work on a ready connection: typing that ran out, a token that expired.
pub fn on_tick(shard: &Shard, conn: &Conn, now: Instant, now_ms: u64) {
    typing::expire(shard, conn, now);
    if refresh::token_expired(shard, conn, now_ms) {
        conn.begin_close(codes::AUTH_FAILED, true);
    }
}
