//! `protocol::decode` on arbitrary bytes (a client text frame).
//!
//! Checks: never panics; the result is `Err(NotJson)` exactly when the input is
//! not one RFC 8259 JSON text (a reference grammar check; a lone surrogate escape
//! or a number beyond f64's range may go either way) or nests arrays/objects
//! deeper than `protocol::depth::MAX_DEPTH` (and `nesting_within` measures that
//! depth exactly on JSON text); when serde_json reads the input and it has no
//! duplicated object key, the result equals a reference decoder over the
//! serde_json value (same variant, fields and error kind/message); every string
//! the decoder returns (channels, tokens, session ids, ...) is a string present
//! in the input; a non-string channel entry is reported as its JSON text.

#![no_main]

#[path = "../common/strict_json.rs"]
mod strict_json;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use xcord_gateway::protocol::depth::{nesting_within, MAX_DEPTH};
use xcord_gateway::protocol::CommandKind;
use xcord_gateway::protocol::{decode, ClientMsg, DecodeError};

fn bad(kind: &'static str, message: &'static str) -> DecodeError {
    DecodeError::BadPayload {
        kind: CommandKind::from_label(kind),
        message,
    }
}

/// What a channel list entry should decode to: `Ok(string)` or `Err(json value)`.
type RefChannels = Vec<Result<String, Value>>;

#[derive(Debug)]
enum Ref {
    Msg(ClientMsg),
    Subscribe(RefChannels),
    Unsubscribe(RefChannels),
}

fn ref_channels(payload: Option<&Value>, kind: &'static str) -> Result<RefChannels, DecodeError> {
    let arr = payload
        .and_then(|p| p.get("channels"))
        .and_then(|c| c.as_array())
        .ok_or_else(|| bad(kind, "payload.channels must be an array"))?;
    Ok(arr
        .iter()
        .map(|v| match v.as_str() {
            Some(s) => Ok(s.to_owned()),
            None => Err(v.clone()),
        })
        .collect())
}

fn ref_token(payload: Option<&Value>, kind: &'static str) -> Result<Option<String>, DecodeError> {
    match payload.and_then(|p| p.get("token")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(kind, "payload.token must be a string")),
    }
}

/// SPEC §3 decoding, written against serde_json's value.
fn reference(v: &Value) -> Result<Ref, DecodeError> {
    let Some(obj) = v.as_object() else {
        return Err(DecodeError::BadPayload {
            kind: None,
            message: "a message is a JSON object",
        });
    };
    let Some(ty) = obj.get("type").and_then(|t| t.as_str()) else {
        return Err(DecodeError::BadPayload {
            kind: None,
            message: "type must be a string",
        });
    };
    let payload = obj.get("payload").filter(|p| !p.is_null());
    if let Some(p) = payload {
        if !p.is_object() {
            return match CommandKind::from_label(ty) {
                Some(k) => Err(DecodeError::BadPayload {
                    kind: Some(k),
                    message: "payload must be an object",
                }),
                None => Err(DecodeError::UnknownType(ty.to_owned())),
            };
        }
    }
    let get_str = |key: &str| payload.and_then(|p| p.get(key)).and_then(|s| s.as_str());
    Ok(match ty {
        "HELLO" => Ref::Msg(ClientMsg::Hello {
            token: ref_token(payload, "HELLO")?,
        }),
        "RESUME" => {
            if payload.is_none() {
                return Err(bad("RESUME", "payload required"));
            }
            let session_id = get_str("sessionId")
                .ok_or_else(|| bad("RESUME", "payload.sessionId must be a string"))?
                .to_owned();
            let seq = payload
                .and_then(|p| p.get("seq"))
                .and_then(|s| s.as_u64())
                .ok_or_else(|| bad("RESUME", "payload.seq must be a non-negative integer"))?;
            Ref::Msg(ClientMsg::Resume {
                token: ref_token(payload, "RESUME")?,
                session_id,
                seq,
            })
        }
        "SUBSCRIBE" => Ref::Subscribe(ref_channels(payload, "SUBSCRIBE")?),
        "UNSUBSCRIBE" => Ref::Unsubscribe(ref_channels(payload, "UNSUBSCRIBE")?),
        "PING" => Ref::Msg(ClientMsg::Ping),
        "TYPING_START" | "TYPING_STOP" => {
            let kind = if ty == "TYPING_START" {
                "TYPING_START"
            } else {
                "TYPING_STOP"
            };
            let channel_id = get_str("channelId")
                .ok_or_else(|| bad(kind, "payload.channelId must be a string"))?
                .to_owned();
            Ref::Msg(ClientMsg::Typing {
                channel_id,
                start: ty == "TYPING_START",
            })
        }
        "SET_PRESENCE" => {
            let status = get_str("status")
                .filter(|s| matches!(*s, "online" | "idle" | "dnd"))
                .ok_or_else(|| bad("SET_PRESENCE", "payload.status must be online, idle or dnd"))?
                .to_owned();
            Ref::Msg(ClientMsg::SetPresence { status })
        }
        "REFRESH" => {
            let token = get_str("token")
                .ok_or_else(|| bad("REFRESH", "payload.token must be a string"))?
                .to_owned();
            Ref::Msg(ClientMsg::Refresh { token })
        }
        other => return Err(DecodeError::UnknownType(other.to_owned())),
    })
}

fn same_channels(got: &[Result<String, String>], want: &RefChannels) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| match (g, w) {
            (Ok(g), Ok(w)) => g == w,
            // The non-string entry is echoed as JSON text: it must parse back to the same value.
            (Err(g), Err(w)) => strict_json::parse(g.as_bytes()).is_some_and(|d| d.value == *w),
            _ => false,
        })
}

/// Every string the decoder hands out.
fn strings_of(m: &ClientMsg) -> Vec<&str> {
    match m {
        ClientMsg::Hello { token } => token.iter().map(|s| s.as_str()).collect(),
        ClientMsg::Resume {
            token, session_id, ..
        } => token
            .iter()
            .map(|s| s.as_str())
            .chain([session_id.as_str()])
            .collect(),
        ClientMsg::Subscribe { channels } | ClientMsg::Unsubscribe { channels } => channels
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(|s| s.as_str())
            .collect(),
        ClientMsg::Ping => vec![],
        ClientMsg::Typing { channel_id, .. } => vec![channel_id.as_str()],
        ClientMsg::SetPresence { status } => vec![status.as_str()],
        ClientMsg::Refresh { token } => vec![token.as_str()],
    }
}

fuzz_target!(|data: &[u8]| {
    let got = decode(data);
    // Neither accessor may panic.
    if let Ok(m) = &got {
        assert!(CommandKind::ALL.contains(&m.kind()));
    }
    if let Err(e) = &got {
        let _ = e.is_handshake();
    }

    let Some(g) = strict_json::grammar(data) else {
        assert_eq!(got, Err(DecodeError::NotJson), "input is not JSON");
        return;
    };
    // The nesting pre-scan is exact on JSON text.
    assert!(nesting_within(data, g.depth));
    assert!(g.depth == 0 || !nesting_within(data, g.depth - 1));
    if g.depth > MAX_DEPTH {
        assert_eq!(
            got,
            Err(DecodeError::NotJson),
            "nesting {} accepted",
            g.depth
        );
        return;
    }
    // A lone surrogate escape is grammatical but has no String form, and RFC 8259 §6
    // lets a parser limit number range: either verdict for those.
    if !g.lone_surrogate && !g.huge_number {
        assert_ne!(
            got,
            Err(DecodeError::NotJson),
            "valid JSON reported as NotJson"
        );
    }
    // Value-level checks need serde_json's reading (it refuses 1e400 and lone surrogates).
    let Some(doc) = strict_json::parse(data) else {
        return;
    };

    if let Ok(m) = &got {
        for s in strings_of(m) {
            assert!(
                doc.strings.iter().any(|d| d == s),
                "decoded string {s:?} is not a string of the input"
            );
        }
    }

    if doc.has_dup {
        return; // duplicate keys: which one wins is not specified
    }
    let want = reference(&doc.value);
    match (&got, &want) {
        (Ok(ClientMsg::Subscribe { channels }), Ok(Ref::Subscribe(w)))
        | (Ok(ClientMsg::Unsubscribe { channels }), Ok(Ref::Unsubscribe(w))) => {
            assert!(same_channels(channels, w), "channels {channels:?} != {w:?}");
        }
        (Ok(g), Ok(Ref::Msg(w))) => assert_eq!(g, w),
        (Err(g), Err(w)) => assert_eq!(g, w),
        _ => panic!("decode {got:?} != reference {want:?}"),
    }
});
