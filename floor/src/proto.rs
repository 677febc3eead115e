//! The XCORD messages the floor speaks (SPEC §3 subset): client commands decoded
//! from borrowed JSON, the replies, and the event frame — built once per event into
//! one reused buffer, byte for byte the gateway's
//! `{"type":"EVENT","seq":N,"payload":{"event":E,"channel":C,"payload":P}}`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

use crate::ws;

/// A decoded client command.
#[derive(Debug, PartialEq)]
pub enum Command<'a> {
    Hello(Option<Cow<'a, str>>),
    Subscribe(Vec<Cow<'a, str>>),
    Ping,
    /// A known type with a wrong payload, or no string `type`.
    BadPayload,
    /// A string `type` the floor does not know.
    Unknown,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct HelloPayload<'a> {
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SubscribePayload<'a> {
    #[serde(borrow)]
    channels: Vec<Cow<'a, str>>,
}

/// Decode a client text frame; `None` means not JSON (close 4002).
pub fn command(text: &[u8]) -> Option<Command<'_>> {
    let env: Envelope<'_> = match serde_json::from_slice(text) {
        Ok(e) => e,
        Err(_) => {
            return serde_json::from_slice::<serde::de::IgnoredAny>(text)
                .ok()
                .map(|_| Command::BadPayload)
        }
    };
    let payload = env.payload.map_or("{}", RawValue::get);
    let cmd = match env.ty.as_deref() {
        Some("HELLO") => serde_json::from_str::<HelloPayload<'_>>(payload)
            .map_or(Command::BadPayload, |h| Command::Hello(h.token)),
        Some("SUBSCRIBE") => serde_json::from_str::<SubscribePayload<'_>>(payload)
            .map_or(Command::BadPayload, |s| Command::Subscribe(s.channels)),
        Some("PING") => Command::Ping,
        Some(_) => Command::Unknown,
        None => Command::BadPayload,
    };
    Some(cmd)
}

#[derive(Serialize)]
struct Out<'a, P> {
    #[serde(rename = "type")]
    ty: &'a str,
    payload: P,
}

#[derive(Serialize)]
struct HelloAck<'a> {
    #[serde(rename = "sessionId")]
    session_id: &'a str,
    #[serde(rename = "heartbeatInterval")]
    heartbeat_interval: u64,
    #[serde(rename = "userId")]
    user_id: &'a str,
}

#[derive(Serialize)]
struct Channels<'a> {
    channels: &'a [&'a str],
}

#[derive(Serialize)]
struct Pong {
    timestamp: u64,
}

#[derive(Serialize)]
struct ErrorMsg<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
}

/// Append `{"type": ty, "payload": payload}` as one text frame to `out`, using
/// `json` as scratch.
fn push<P: Serialize>(ty: &str, payload: P, json: &mut Vec<u8>, out: &mut Vec<u8>) {
    json.clear();
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *json, &Out { ty, payload });
    ws::push_frame(ws::OP_TEXT, json, out);
}

pub fn hello_ack(session: &str, hb_ms: u64, user: &str, json: &mut Vec<u8>, out: &mut Vec<u8>) {
    let ack = HelloAck {
        session_id: session,
        heartbeat_interval: hb_ms,
        user_id: user,
    };
    push("HELLO_ACK", ack, json, out);
}

pub fn subscribed(channels: &[&str], json: &mut Vec<u8>, out: &mut Vec<u8>) {
    push("SUBSCRIBED", Channels { channels }, json, out);
}

pub fn pong(timestamp: u64, json: &mut Vec<u8>, out: &mut Vec<u8>) {
    push("PONG", Pong { timestamp }, json, out);
}

pub fn error(
    code: &str,
    message: &str,
    channel: Option<&str>,
    json: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let e = ErrorMsg {
        code,
        message,
        channel,
    };
    push("ERROR", e, json, out);
}

/// Longest event channel (the gateway's limit).
const CHANNEL_MAX: usize = 1024;
/// Room for the longest frame header in front of the JSON.
const HEAD: usize = 10;

/// A backend's `{"type": NAME, "payload": ANY}`.
#[derive(Deserialize)]
struct BusBody<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a RawValue,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// The admin route's `{"channel", "event", "payload"}`.
#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Builds each event's frame once, into one buffer reused for every event.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where the frame starts in `buf` (the header is right-aligned before the JSON).
    start: usize,
    /// The admin payload, without insignificant whitespace.
    compact: Vec<u8>,
}

impl Framer {
    /// Frame a bus message (`channel` is what follows `events:`) as [`Framer::last`];
    /// its channel, or `None` when it is dropped (not JSON, no string `type`, a bad
    /// channel).
    pub fn bus<'c>(&mut self, seq: u64, channel: &'c [u8], body: &[u8]) -> Option<&'c str> {
        let channel = std::str::from_utf8(channel).ok()?;
        if channel.is_empty() || channel.len() > CHANNEL_MAX {
            return None;
        }
        let b: BusBody<'_> = serde_json::from_slice(body).ok()?;
        let ty = b.ty.get();
        if !ty.starts_with('"') {
            return None;
        }
        // The name and payload are copied as the backend wrote them, as the gateway does.
        let payload = b.payload.map_or("null", RawValue::get);
        self.frame(seq, ty.as_bytes(), channel, payload.as_bytes());
        Some(channel)
    }

    /// Frame an admin publish body as [`Framer::last`]: its channel, or an error
    /// message for a 400.
    pub fn admin<'b>(&mut self, seq: u64, body: &'b [u8]) -> Result<Cow<'b, str>, &'static str> {
        let p: PublishBody<'_> = serde_json::from_slice(body).map_err(|_| "body is not JSON")?;
        if !xcord_common::channels::valid_channel(&p.channel) {
            return Err("channel must be a valid channel name");
        }
        if p.event.is_empty() {
            return Err("event must be a non-empty string");
        }
        let mut name = Vec::with_capacity(p.event.len() + 2);
        let _ = serde_json::to_writer(&mut name, &*p.event);
        // The gateway re-serialises the payload compactly: drop the whitespace.
        let mut compact = std::mem::take(&mut self.compact);
        compact.clear();
        minify(
            p.payload.map_or("null", RawValue::get).as_bytes(),
            &mut compact,
        );
        self.frame(seq, &name, &p.channel, &compact);
        self.compact = compact;
        Ok(p.channel)
    }

    fn frame(&mut self, seq: u64, name_json: &[u8], channel: &str, payload: &[u8]) {
        let b = &mut self.buf;
        b.clear();
        b.resize(HEAD, 0);
        b.extend_from_slice(br#"{"type":"EVENT","seq":"#);
        // Writing a number into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *b, &seq);
        b.extend_from_slice(br#","payload":{"event":"#);
        b.extend_from_slice(name_json);
        b.extend_from_slice(br#","channel":"#);
        let _ = serde_json::to_writer(&mut *b, channel);
        b.extend_from_slice(br#","payload":"#);
        b.extend_from_slice(payload);
        b.extend_from_slice(b"}}");
        let mut h = [0u8; HEAD];
        let n = ws::header_into(ws::OP_TEXT, b.len() - HEAD, &mut h);
        b[HEAD - n..HEAD].copy_from_slice(&h[HEAD - n..]);
        self.start = HEAD - n;
    }

    /// The frame built last.
    pub fn last(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Copy valid JSON without the whitespace outside strings.
fn minify(json: &[u8], out: &mut Vec<u8>) {
    let (mut in_str, mut escaped) = (false, false);
    for &c in json {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            in_str = c == b'"';
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(frame: &[u8]) -> &str {
        let head = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(&frame[head..]).unwrap()
    }

    #[test]
    fn bus_frame_is_the_gateways() {
        let mut f = Framer::default();
        let ch = f.bus(
            7,
            b"dm:c1",
            br#"{"type":"dm.message.new","payload":{"message":{"id":"m1","n":1.50}}}"#,
        );
        assert_eq!(ch, Some("dm:c1"));
        let fr = f.last().to_vec();
        assert_eq!(fr[0], 0x81);
        assert_eq!(
            json_of(&fr),
            r#"{"type":"EVENT","seq":7,"payload":{"event":"dm.message.new","channel":"dm:c1","payload":{"message":{"id":"m1","n":1.50}}}}"#
        );
        let big = format!(r#"{{"type":"t","payload":"{}"}}"#, "x".repeat(70_000));
        assert!(f.bus(8, b"live:x", big.as_bytes()).is_some());
        let fr = f.last();
        assert_eq!(fr[1], 127);
        assert!(json_of(fr).ends_with("\"}}"));
        assert_eq!(f.bus(9, b"x", br#"{"type":5}"#), None);
        assert_eq!(f.bus(9, b"x", br#"{"type":"t"}x"#), None);
        assert!(f.bus(9, b"x", br#"{"type":"t"}"#).is_some());
        let t = json_of(f.last());
        assert!(t.ends_with(r#""payload":null}}"#), "{t}");
    }

    #[test]
    fn admin_frame_is_compact() {
        let mut f = Framer::default();
        let body = br#"{"channel":"server:s1:channel:c","event":"t","payload":{ "k" : 1, "s": "a b\" c" }}"#;
        assert_eq!(f.admin(3, body).unwrap(), "server:s1:channel:c");
        let t = json_of(f.last()).to_owned();
        assert_eq!(
            t,
            r#"{"type":"EVENT","seq":3,"payload":{"event":"t","channel":"server:s1:channel:c","payload":{"k":1,"s":"a b\" c"}}}"#
        );
        assert!(f.admin(4, br#"{"channel":"a b","event":"t"}"#).is_err());
        assert!(f.admin(4, br#"{"channel":"a","event":""}"#).is_err());
    }

    #[test]
    fn commands() {
        assert_eq!(
            command(br#"{"type":"HELLO","payload":{"token":"t"}}"#),
            Some(Command::Hello(Some("t".into())))
        );
        assert_eq!(
            command(br#"{"type":"SUBSCRIBE","payload":{"channels":["a","b"]}}"#),
            Some(Command::Subscribe(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            command(br#"{"type":"SUBSCRIBE","payload":{}}"#),
            Some(Command::BadPayload)
        );
        assert_eq!(command(br#"{"type":"PING"}"#), Some(Command::Ping));
        assert_eq!(command(br#"{"type":"X"}"#), Some(Command::Unknown));
        assert_eq!(command(br#"[1]"#), Some(Command::BadPayload));
        assert_eq!(command(b"{nope"), None);
    }
}
