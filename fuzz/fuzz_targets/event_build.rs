//! `bus::event::build` on an arbitrary channel, body and seq (one bus message).
//!
//! Checks: never panics; `Ok` only for a UTF-8 channel of 1..=1024 bytes and a body
//! that is exactly one JSON object (RFC 8259 grammar, reference check) nested at
//! most `protocol::depth::MAX_DEPTH` deep, with a string `type`; a valid object is never dropped as `BadJson`, and one with a string
//! `type` is never dropped. When `Ok`: the frame is one final unmasked text frame
//! whose (minimal) header length equals the text length, and `frame_text` is valid
//! JSON `{"type":"EVENT","seq":seq,"payload":{"event":T,"channel":C,"payload":P}}`
//! with seq, channel, event name and payload equal to the inputs (payload `null`
//! when absent; T and P compared when serde_json reads the body and `type`/`payload`
//! are not duplicated).

#![no_main]

#[path = "../common/strict_json.rs"]
mod strict_json;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Instant;
use xcord_gateway::bus::event::{build, frame_text, DropReason};
use xcord_gateway::protocol::depth::MAX_DEPTH;

#[derive(Arbitrary, Debug)]
enum ChannelIn {
    Raw(Vec<u8>),
    Named(u8),
    /// `n` copies of a byte: reaches the 1024-byte limit.
    Long(u16, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    seq: u64,
    channel: ChannelIn,
    body: Vec<u8>,
}

const NAMES: [&str; 6] = [
    "dm:c1",
    "server:srv_1:channel:c9",
    "live:x",
    "user:\u{e9}\"\\\n",
    "\u{0}",
    "a:*",
];

/// Parse a WebSocket frame header; returns (fin+opcode byte, header length, payload length).
fn header(frame: &[u8]) -> (u8, usize, u64) {
    assert!(frame.len() >= 2, "frame too short");
    assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
    match frame[1] & 0x7f {
        126 => {
            let n = u16::from_be_bytes([frame[2], frame[3]]) as u64;
            assert!(n >= 126, "non-minimal 16-bit length");
            (frame[0], 4, n)
        }
        127 => {
            let n = u64::from_be_bytes(frame[2..10].try_into().unwrap());
            assert!(n > u16::MAX as u64, "non-minimal 64-bit length");
            (frame[0], 10, n)
        }
        n => (frame[0], 2, n as u64),
    }
}

fuzz_target!(|input: Input| {
    static START: OnceLock<Instant> = OnceLock::new();
    let received = *START.get_or_init(Instant::now);
    let channel: Vec<u8> = match input.channel {
        ChannelIn::Raw(v) => v,
        ChannelIn::Named(i) => NAMES[i as usize % NAMES.len()].as_bytes().to_vec(),
        ChannelIn::Long(n, b) => vec![b; n as usize % 1100],
    };
    let body = &input.body;
    let seq = input.seq;
    let result = build(&channel, body, seq, received);

    // The reference verdict.
    let ch = std::str::from_utf8(&channel).ok();
    let ch_ok = ch.is_some_and(|c| !c.is_empty() && c.len() <= 1024);
    let gram = strict_json::grammar(body);
    let is_object = gram.is_some_and(|g| g.depth <= MAX_DEPTH)
        && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let lone = gram.is_some_and(|g| g.lone_surrogate);
    // serde_json's reading, for value comparisons (None for 1e400 or lone surrogates).
    let doc = strict_json::parse(body);
    let obj = doc.as_ref().and_then(|d| d.value.as_object());
    // With a duplicated top-level type/payload key, which one wins is not specified.
    let dup_field = doc.as_ref().is_some_and(|d| {
        ["type", "payload"]
            .iter()
            .any(|k| d.top_keys.iter().filter(|t| t == k).count() > 1)
    });
    let ty = obj.filter(|_| !dup_field).and_then(|o| o.get("type"));
    let show = || String::from_utf8_lossy(body).into_owned();

    let ev = match result {
        Err(r) => {
            if !ch_ok {
                assert_eq!(r, DropReason::BadChannel);
            } else if !is_object {
                assert_eq!(r, DropReason::BadJson, "body {:?}", show());
            } else if !(lone && r == DropReason::BadJson) {
                assert_eq!(
                    r,
                    DropReason::NoType,
                    "valid JSON object dropped: {:?}",
                    show()
                );
                assert!(
                    !ty.is_some_and(|t| t.is_string()),
                    "event with a string type dropped: {:?}",
                    show()
                );
            }
            return;
        }
        Ok(ev) => ev,
    };
    assert!(ch_ok, "bad channel accepted");
    let ch = ch.unwrap();
    assert!(
        is_object,
        "body that is not one JSON object accepted: {:?}",
        show()
    );
    if obj.is_some() && !dup_field {
        assert!(
            ty.is_some_and(|t| t.is_string()),
            "body without a string type accepted"
        );
    }
    assert_eq!(ev.seq, seq);
    assert_eq!(&*ev.channel, ch);
    assert_eq!(ev.received, received);

    let (b0, hlen, plen) = header(&ev.frame);
    assert_eq!(b0, 0x81, "FIN + text opcode");
    let text = frame_text(&ev.frame);
    assert_eq!(text.len(), ev.frame.len() - hlen);
    assert_eq!(plen, text.len() as u64, "header length != text length");

    let prefix = format!(r#"{{"type":"EVENT","seq":{seq},"payload":{{"event":"#);
    assert!(text.starts_with(prefix.as_bytes()), "frame prefix");
    assert!(
        strict_json::grammar(text).is_some(),
        "frame text is not JSON: {:?}",
        String::from_utf8_lossy(text)
    );
    let Some(out) = strict_json::parse(text) else {
        return; // 1e400 or a lone surrogate: grammatical, but serde_json won't read it
    };
    let o = out.value.as_object().expect("frame is an object");
    assert_eq!(o.len(), 3);
    assert_eq!(o["type"], "EVENT");
    assert_eq!(o["seq"].as_u64(), Some(seq));
    let p = o["payload"].as_object().expect("payload is an object");
    assert_eq!(p.len(), 3);
    assert_eq!(p["channel"].as_str(), Some(ch));
    if let (Some(obj), false) = (obj, dup_field) {
        let name = obj["type"].as_str().unwrap();
        let payload = obj.get("payload").cloned().unwrap_or(Value::Null);
        assert_eq!(p["event"].as_str(), Some(name));
        assert_eq!(p["payload"], payload, "payload not copied");
    }
});
