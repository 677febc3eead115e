//! SUBSCRIBE and UNSUBSCRIBE (SPEC §3, §4). A SUBSCRIBE answers one ERROR per
//! refused channel, then always SUBSCRIBED with the granted ones. A granted name is
//! routed (the route queued to the bus thread) before SUBSCRIBED is sent: that is
//! the promise — any event published after the client reads SUBSCRIBED is delivered.

use std::rc::Rc;

use super::authorize::{by_claims, memberships};
use crate::channels::{self, Root};
use crate::protocol::messages as msg;
use crate::protocol::ErrorCode;
use crate::shard::conn::{Conn, Phase};
use crate::shard::Shard;

pub async fn subscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, channels: Vec<Result<String, String>>) {
    let (user, claims) = match conn.session.borrow().as_ref() {
        Some(s) => (s.claims.sub.clone(), s.claims.clone()),
        None => return,
    };
    enum Verdict {
        Invalid,
        Granted,
        Forbidden,
        Ask(usize),
    }
    let mut asks: Vec<(Root, String)> = Vec::new();
    let mut plan: Vec<(String, Option<channels::Subscription>, Verdict)> = Vec::new();
    for raw in channels {
        let raw = match raw {
            Ok(s) => s,
            Err(repr) => {
                plan.push((repr, None, Verdict::Invalid));
                continue;
            }
        };
        match channels::parse_subscription(&raw) {
            None => plan.push((raw, None, Verdict::Invalid)),
            Some(sub) => {
                let v = match by_claims(&claims, sub.root, sub.id()) {
                    Some(true) => Verdict::Granted,
                    Some(false) => Verdict::Forbidden,
                    None => {
                        let i = asks
                            .iter()
                            .position(|(r, id)| *r == sub.root && id == sub.id())
                            .unwrap_or_else(|| {
                                asks.push((sub.root, sub.id().to_owned()));
                                asks.len() - 1
                            });
                        Verdict::Ask(i)
                    }
                };
                plan.push((raw, Some(sub), v));
            }
        }
    }
    let answers = memberships(shard, &user, &asks).await;
    if conn.phase() != Phase::Ready {
        return;
    }
    let max = shard.ctx.cfg.max_subscriptions;
    let key = conn.key.get();
    let mut granted: Vec<String> = Vec::new();
    let mut replies: Vec<Vec<u8>> = Vec::new();
    {
        let mut s = conn.session.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        for (raw, sub, verdict) in plan {
            let ok = match verdict {
                Verdict::Invalid => {
                    replies.push(msg::error(
                        ErrorCode::InvalidChannel,
                        "invalid channel name",
                        Some(&raw),
                    ));
                    continue;
                }
                Verdict::Granted => true,
                Verdict::Forbidden => false,
                Verdict::Ask(i) => answers.get(i).copied().unwrap_or(false),
            };
            let Some(sub) = sub else { continue };
            if !ok {
                replies.push(msg::error(
                    ErrorCode::Forbidden,
                    "not allowed to subscribe",
                    Some(&raw),
                ));
                continue;
            }
            if !session.is_auto_sub(&sub.name) && !session.subs.contains(&sub.name) {
                if session.subs.len() >= max {
                    replies.push(msg::error(
                        ErrorCode::TooManySubscriptions,
                        "subscription limit reached",
                        Some(&raw),
                    ));
                    continue;
                }
                // Route queued before SUBSCRIBED is sent (SPEC §3's promise).
                let floor = shard.floor();
                shard.subscribe(&sub.name, key);
                session.subs.insert(&sub.name, floor);
            }
            if !granted.contains(&raw) {
                granted.push(raw);
            }
        }
    }
    replies.push(msg::encode(
        "SUBSCRIBED",
        msg::Channels { channels: &granted },
    ));
    let replies: Vec<&[u8]> = replies.iter().map(Vec::as_slice).collect();
    conn.send_replies(shard, &replies);
}

pub fn unsubscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, channels: Vec<Result<String, String>>) {
    let key = conn.key.get();
    let mut done: Vec<String> = Vec::new();
    {
        let mut s = conn.session.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        for raw in channels.into_iter().flatten() {
            if let Some(sub) = channels::parse_subscription(&raw) {
                if session.subs.remove(&sub.name) {
                    shard.unsubscribe(&sub.name, key);
                }
            }
            if !done.contains(&raw) {
                done.push(raw);
            }
        }
    }
    conn.send_json(
        shard,
        &msg::encode("UNSUBSCRIBED", msg::Channels { channels: &done }),
    );
}
