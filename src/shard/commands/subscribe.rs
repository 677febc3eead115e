//! SUBSCRIBE and UNSUBSCRIBE (SPEC §3, §4, §9). A SUBSCRIBE answers one ERROR per
//! refused channel, then always SUBSCRIBED with the granted ones — all in one write.
//! A granted name is routed (the route queued to the bus thread) before SUBSCRIBED
//! is sent: that is the promise — any event published after the client reads
//! SUBSCRIBED is delivered. With `--routing roots`, a name whose root is new on
//! this shard also waits until Redis confirmed the root's SSUBSCRIBE (at most
//! `REDIS_ANSWER_TIMEOUT`; past it those channels get `ERROR UNAVAILABLE`).

use std::rc::Rc;
use std::time::Instant;

use super::authorize::{by_claims, memberships};
use crate::channels::{self, root_of, Root, Subscription};
use crate::limits::REDIS_ANSWER_TIMEOUT;
use crate::protocol::messages as msg;
use crate::protocol::ErrorCode;
use crate::shard::conn::{Conn, Phase};
use crate::shard::Shard;

enum Verdict {
    Invalid,
    Granted,
    Forbidden,
    /// Decided by the i-th Redis membership answer.
    Ask(usize),
}

/// Each requested entry (as sent) with what the claims say, and the membership
/// questions for Redis.
type Plan = (
    Vec<(String, Option<Subscription>, Verdict)>,
    Vec<(Root, String)>,
);

fn plan(claims: &crate::auth::Claims, channels: Vec<Result<String, String>>) -> Plan {
    let mut asks: Vec<(Root, String)> = Vec::new();
    let mut plan = Vec::new();
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
                let v = match by_claims(claims, sub.root, sub.id()) {
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
    (plan, asks)
}

/// What a SUBSCRIBE did: the ERRORs so far, the granted entries (as sent, and the
/// name they route), and the roots new on the shard.
#[derive(Default)]
struct Outcome {
    replies: Vec<Vec<u8>>,
    granted: Vec<(String, String)>,
    new_roots: Vec<String>,
}

/// Route every granted name (SPEC §3's promise: before SUBSCRIBED is sent).
fn apply(
    shard: &Shard,
    conn: &Conn,
    plan: Vec<(String, Option<Subscription>, Verdict)>,
    answers: &[bool],
) -> Outcome {
    let mut out = Outcome::default();
    let max = shard.ctx.cfg.max_subscriptions;
    let key = conn.key.get();
    let mut s = conn.session.borrow_mut();
    let Some(session) = s.as_mut() else {
        return out;
    };
    for (raw, sub, verdict) in plan {
        let ok = match verdict {
            Verdict::Invalid => {
                out.replies.push(msg::error(
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
            out.replies.push(msg::error(
                ErrorCode::Forbidden,
                "not allowed to subscribe",
                Some(&raw),
            ));
            continue;
        }
        if !session.is_auto_sub(&sub.name) && !session.subs.contains(&sub.name) {
            if session.subs.len() >= max {
                out.replies.push(msg::error(
                    ErrorCode::TooManySubscriptions,
                    "subscription limit reached",
                    Some(&raw),
                ));
                continue;
            }
            if let Some(root) = root_of(&sub.name).filter(|r| shard.root_is_new(r)) {
                if !out.new_roots.iter().any(|r| r == root) {
                    out.new_roots.push(root.to_owned());
                }
            }
            let floor = shard.floor();
            shard.subscribe(&sub.name, key);
            session.subs.insert(&sub.name, floor);
        }
        if !out.granted.iter().any(|(r, _)| *r == raw) {
            out.granted.push((raw, sub.name));
        }
    }
    out
}

/// Wait (until `REDIS_ANSWER_TIMEOUT` after `start`) for Redis to confirm each
/// root new on the shard; the roots it did not confirm in time.
pub(super) async fn unconfirmed(shard: &Shard, roots: &[String], start: Instant) -> Vec<String> {
    if roots.is_empty() {
        return Vec::new();
    }
    let waits: Vec<_> = roots
        .iter()
        .map(|r| (r, shard.ctx.bus.await_root(r)))
        .collect();
    let deadline = start + REDIS_ANSWER_TIMEOUT;
    let mut missing = Vec::new();
    for (root, rx) in waits {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = glommio::timer::timeout(left, async { Ok(rx.await) }).await;
        if matches!(r, Ok(Ok(()))) {
            shard.root_confirmed(root);
        } else {
            missing.push(root.clone());
        }
    }
    missing
}

pub async fn subscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, channels: Vec<Result<String, String>>) {
    let Some(claims) = conn.session.borrow().as_ref().map(|s| s.claims.clone()) else {
        return;
    };
    let (plan, asks) = plan(&claims, channels);
    let answers = memberships(shard, &claims.sub, &asks).await;
    if conn.phase() != Phase::Ready {
        return;
    }
    let mut out = apply(shard, conn, plan, &answers);
    let missing = unconfirmed(shard, &out.new_roots, Instant::now()).await;
    if conn.phase() != Phase::Ready {
        return;
    }
    if !missing.is_empty() {
        // Redis did not confirm these roots: their channels are refused, and the
        // routes just made go (the root stays wanted while anything holds it).
        let key = conn.key.get();
        let mut s = conn.session.borrow_mut();
        out.granted.retain(|(raw, name)| {
            let unavailable = root_of(name).is_some_and(|r| missing.iter().any(|m| m == r));
            if unavailable {
                if let Some(session) = s.as_mut() {
                    if session.subs.remove(name) {
                        shard.unsubscribe(name, key);
                    }
                }
                out.replies.push(msg::error(
                    ErrorCode::Unavailable,
                    "Redis did not confirm the subscription in time",
                    Some(raw),
                ));
            }
            !unavailable
        });
    }
    let granted: Vec<String> = out.granted.into_iter().map(|(raw, _)| raw).collect();
    out.replies.push(msg::encode(
        "SUBSCRIBED",
        msg::Channels { channels: &granted },
    ));
    let replies: Vec<&[u8]> = out.replies.iter().map(Vec::as_slice).collect();
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
