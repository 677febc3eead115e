//! One bus event: parsed once, stamped with the node's `seq`, and encoded once into
//! the exact WebSocket frame every subscriber on this node receives (SPEC §3, §5).
//!
//! Input (what a backend PUBLISHes on `events:{channel}`): `{"type": NAME,
//! "payload": ANY}`. Output frame text:
//! `{"type":"EVENT","seq":N,"payload":{"event":NAME,"channel":CHANNEL,"payload":ANY}}`.
//! The payload is copied as the raw JSON slice the backend sent — never re-serialised.

use sonic_rs::{JsonValueTrait, LazyValue};
use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Instant;

use crate::limits::EVENT_CHANNEL_MAX;
pub use crate::metrics::DropReason;
use crate::protocol::frame;

/// An event ready for fan-out. Shared (behind an `Arc`) by every shard that wants it.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub channel: Box<str>,
    /// The complete WebSocket text frame (header + JSON), identical for every subscriber.
    pub frame: Box<[u8]>,
    /// When the bus received it: the start of `xcord_delivery_latency_seconds`.
    pub received: Instant,
    /// The permessage-deflate frame, made once by the first shard that needs it.
    deflated: OnceLock<Box<[u8]>>,
}

thread_local! {
    /// Each shard's compressor, reset for each event (no context takeover).
    static COMPRESSOR: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(crate::protocol::deflate::compressor());
}

impl Event {
    pub fn new(seq: u64, channel: Box<str>, frame: Box<[u8]>, received: Instant) -> Event {
        Event {
            seq,
            channel,
            frame,
            received,
            deflated: OnceLock::new(),
        }
    }

    /// The compressed frame (SPEC §3: compressed once per node, the same bytes for
    /// every subscriber that negotiated it).
    pub fn deflated(&self) -> &[u8] {
        self.deflated.get_or_init(|| {
            COMPRESSOR.with(|c| {
                crate::protocol::deflate::compress_frame(
                    frame::payload(&self.frame),
                    &mut c.borrow_mut(),
                )
                .into_boxed_slice()
            })
        })
    }
}

/// The braces of a JSON object.
const OBJECT_OPEN: u8 = 0x7b;
const OBJECT_CLOSE: u8 = 0x7d;

/// The members of a bus message body the gateway reads, as raw slices of it.
struct Body<'a> {
    ty: LazyValue<'a>,
    payload: Option<LazyValue<'a>>,
    channel: Option<LazyValue<'a>>,
}

/// Validate a body (one JSON object, nothing after it) and find its members.
///
/// sonic-rs's validating object iterator walks the top level once and hands back
/// the members as raw slices (the payload is skipped, not parsed into a tree); the
/// whole text is validated on the way.
fn parse_body(body: &[u8]) -> Result<Body<'_>, DropReason> {
    // The parser recurses without a depth limit: refuse deep nesting first.
    if !crate::protocol::depth::nesting_within(body, crate::protocol::depth::MAX_DEPTH) {
        return Err(DropReason::BadJson);
    }
    // Only an object is an event.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&OBJECT_OPEN) {
        return Err(DropReason::BadJson);
    }
    let mut ty: Option<LazyValue<'_>> = None;
    let mut payload: Option<LazyValue<'_>> = None;
    let mut channel: Option<LazyValue<'_>> = None;
    // Where the last member's value ends: the iterator stops at the closing brace
    // and never looks past it, so what follows is checked here.
    let mut end = body
        .iter()
        .position(|b| *b == OBJECT_OPEN)
        .map_or(0, |i| i + 1);
    let range = body.as_ptr_range();
    for item in sonic_rs::to_object_iter(body) {
        let (k, v) = item.map_err(|_| DropReason::BadJson)?;
        let raw = v.as_raw_str().as_bytes().as_ptr_range();
        if raw.start < range.start || raw.end > range.end {
            // Not a view into `body` (never expected): validate the hard way.
            sonic_rs::from_slice::<serde::de::IgnoredAny>(body).map_err(|_| DropReason::BadJson)?;
        } else {
            end = end.max(raw.end as usize - range.start as usize);
        }
        match &*k {
            "type" => ty = Some(v),
            "payload" => payload = Some(v),
            "channel" => channel = Some(v),
            _ => {}
        }
    }
    let rest = body.get(end..).unwrap_or(&[]);
    // JSON whitespace only (RFC 8259 §2): `is_ascii_whitespace` also admits form feed.
    let json_ws = |b: &&u8| matches!(**b, b' ' | b'\t' | b'\n' | b'\r');
    let mut rest = rest.iter().skip_while(json_ws);
    if rest.next() != Some(&OBJECT_CLOSE) || !rest.all(|b| json_ws(&b)) {
        return Err(DropReason::BadJson);
    }
    let ty = ty.ok_or(DropReason::NoType)?;
    if !ty.is_str() {
        return Err(DropReason::NoType);
    }
    Ok(Body {
        ty,
        payload,
        channel,
    })
}

fn checked_channel(channel: &str) -> Result<&str, DropReason> {
    if channel.is_empty() || channel.len() > EVENT_CHANNEL_MAX {
        return Err(DropReason::BadChannel);
    }
    Ok(channel)
}

fn from_body(b: &Body<'_>, channel: &str, seq: u64, received: Instant) -> Event {
    let payload: Cow<'_, str> = match &b.payload {
        Some(p) => Cow::Borrowed(p.as_raw_str()),
        None => Cow::Borrowed("null"),
    };
    // `type` is a JSON string literal already, quotes and escapes included.
    encode(seq, b.ty.as_raw_str(), channel, &payload, received)
}

/// Parse a bus message body and build its frame. `channel` is the part after
/// `events:` (`--routing pattern`, SPEC §5).
pub fn build(
    channel: &[u8],
    body: &[u8],
    seq: u64,
    received: Instant,
) -> Result<Event, DropReason> {
    let channel = std::str::from_utf8(channel).map_err(|_| DropReason::BadChannel)?;
    let channel = checked_channel(channel)?;
    let b = parse_body(body)?;
    Ok(from_body(&b, channel, seq, received))
}

/// Build an event that came on `xcord:{root}` (`--routing roots`, SPEC §9): its
/// channel is the body's `channel`, which must be `root` or below it.
pub fn build_rooted(
    root: &[u8],
    body: &[u8],
    seq: u64,
    received: Instant,
) -> Result<Event, DropReason> {
    let b = parse_body(body)?;
    let channel = b
        .channel
        .as_ref()
        .and_then(|c| c.as_str())
        .ok_or(DropReason::BadChannel)?;
    let channel = checked_channel(channel)?;
    let under = crate::channels::root_of(channel).map(str::as_bytes) == Some(root);
    if !under || !crate::channels::valid_channel(channel) {
        return Err(DropReason::BadChannel);
    }
    Ok(from_body(&b, channel, seq, received))
}

/// Encode an event whose name is given as a JSON string literal and payload as raw JSON.
fn encode(
    seq: u64,
    event_name_json: &str,
    channel: &str,
    payload_json: &str,
    received: Instant,
) -> Event {
    let mut text =
        Vec::with_capacity(64 + event_name_json.len() + channel.len() + payload_json.len());
    text.extend_from_slice(br#"{"type":"EVENT","seq":"#);
    text.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    text.extend_from_slice(br#","payload":{"event":"#);
    text.extend_from_slice(event_name_json.as_bytes());
    text.extend_from_slice(br#","channel":"#);
    // A channel name is a plain string; serialising a &str cannot fail.
    let _ = sonic_rs::to_writer(&mut text, channel);
    text.extend_from_slice(br#","payload":"#);
    text.extend_from_slice(payload_json.as_bytes());
    text.extend_from_slice(b"}}");
    Event::new(
        seq,
        channel.into(),
        frame::text_frame(&text).into_boxed_slice(),
        received,
    )
}

/// The body a backend publishes on `xcord:{root}` (`--routing roots`):
/// `{"channel": channel, "type": event, "payload": payload_json}`.
pub fn rooted_body(channel: &str, event: &str, payload_json: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(48 + channel.len() + event.len() + payload_json.len());
    v.extend_from_slice(br#"{"channel":"#);
    let _ = sonic_rs::to_writer(&mut v, channel);
    v.extend_from_slice(br#","type":"#);
    let _ = sonic_rs::to_writer(&mut v, event);
    v.extend_from_slice(br#","payload":"#);
    v.extend_from_slice(payload_json.as_bytes());
    v.push(OBJECT_CLOSE);
    v
}

/// The body a backend publishes for `{"type": event, "payload": payload_json}`.
pub fn publish_body(event: &str, payload_json: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + event.len() + payload_json.len());
    v.extend_from_slice(br#"{"type":"#);
    let _ = sonic_rs::to_writer(&mut v, event);
    v.extend_from_slice(br#","payload":"#);
    v.extend_from_slice(payload_json.as_bytes());
    v.push(OBJECT_CLOSE);
    v
}

/// The JSON text of a frame built by [`build`] (tests and tools).
pub fn frame_text(frame: &[u8]) -> &[u8] {
    frame::payload(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(e: &Event) -> String {
        String::from_utf8(frame_text(&e.frame).to_vec()).unwrap()
    }

    #[test]
    fn splices_raw_payload() {
        let e = build(
            b"dm:c1",
            br#"{"type":"dm.message.new","payload":{"message":{"id":"m1","n":1.50}}}"#,
            7,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(
            text(&e),
            r#"{"type":"EVENT","seq":7,"payload":{"event":"dm.message.new","channel":"dm:c1","payload":{"message":{"id":"m1","n":1.50}}}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text(&e)).unwrap();
        assert_eq!(v["payload"]["payload"]["message"]["id"], "m1");
    }

    #[test]
    fn escapes_and_missing_payload() {
        let e = build(b"live:x", br#"{"type":"a\"b"}"#, 1, Instant::now()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text(&e)).unwrap();
        assert_eq!(v["payload"]["event"], "a\"b");
        assert!(v["payload"]["payload"].is_null());
    }

    #[test]
    fn drops_bad_input() {
        let now = Instant::now();
        assert_eq!(
            build(b"x", b"{not json", 1, now).unwrap_err(),
            DropReason::BadJson
        );
        assert_eq!(
            build(b"x", br#"{"type":"t","payload":{"a":}}"#, 1, now).unwrap_err(),
            DropReason::BadJson
        );
        assert_eq!(
            build(b"x", br#"{"payload":{}}"#, 1, now).unwrap_err(),
            DropReason::NoType
        );
        assert_eq!(
            build(b"x", br#"{"type":5}"#, 1, now).unwrap_err(),
            DropReason::NoType
        );
        assert_eq!(
            build(b"x", br#"[1]"#, 1, now).unwrap_err(),
            DropReason::BadJson
        );
        assert_eq!(
            build(&[0xff], br#"{"type":"t"}"#, 1, now).unwrap_err(),
            DropReason::BadChannel
        );
    }

    #[test]
    fn a_rooted_event_names_its_channel_under_its_root() {
        let now = Instant::now();
        let b = rooted_body("server:s1:channel:c", "m", r#"{"k":1}"#);
        let e = build_rooted(b"server:s1", &b, 4, now).unwrap();
        assert_eq!(&*e.channel, "server:s1:channel:c");
        assert!(
            text(&e).contains(r#""event":"m","channel":"server:s1:channel:c","payload":{"k":1}"#)
        );
        assert_eq!(
            build_rooted(b"server:s1", &rooted_body("server:s10", "m", "1"), 1, now).map(|_| ()),
            Err(DropReason::BadChannel),
            "server:s10 is not under server:s1"
        );
        assert_eq!(
            build_rooted(b"dm:c", br#"{"type":"m"}"#, 1, now).map(|_| ()),
            Err(DropReason::BadChannel),
            "no channel"
        );
        assert_eq!(
            build_rooted(b"dm:c", br#"{"channel":5,"type":"m"}"#, 1, now).map(|_| ()),
            Err(DropReason::BadChannel)
        );
        assert!(build_rooted(b"dm:c", &rooted_body("dm:c", "m", "null"), 1, now).is_ok());
    }

    #[test]
    fn publish_body_round_trips() {
        let b = publish_body("x.y", r#"{"k":1}"#);
        let e = build(b"live:s", &b, 3, Instant::now()).unwrap();
        assert!(text(&e).contains(r#""event":"x.y","channel":"live:s","payload":{"k":1}"#));
    }

    /// Fuzz finding (fuzz target `event_build`, minimized input body `{}c`): the
    /// object iterator stops at the closing brace and never looks at what follows,
    /// so a body with trailing non-whitespace text is not dropped as `bad_json`
    /// (and with a `type` it is even delivered).
    #[test]
    fn drops_trailing_garbage() {
        let now = Instant::now();
        for body in [
            &b"{}c"[..],
            b"{}0",
            br#"{"type":"t"}xyz"#,
            br#"{"type":"t"}}"#,
            br#"{"type":"t","payload":1} {"#,
        ] {
            assert_eq!(
                build(b"x", body, 1, now).map(|_| ()),
                Err(DropReason::BadJson),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Trailing JSON whitespace is fine.
        assert!(build(b"x", b"{\"type\":\"t\"} \r\n\t", 1, now).is_ok());
    }

    /// Fuzz finding (fuzz target `event_build`, after the trailing-text fix): a form
    /// feed is ASCII whitespace but not JSON whitespace, so `{..}\x0c` is not JSON.
    #[test]
    fn form_feed_is_not_json_whitespace() {
        let now = Instant::now();
        for body in [
            &b"{\"type\":\"t\"}\x0c"[..],
            b"{}\r\x0c",
            b"{\"type\":\"t\"} \x0c ",
        ] {
            assert_eq!(
                build(b"x", body, 1, now).map(|_| ()),
                Err(DropReason::BadJson),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            build(b"x", b"\x0c{\"type\":\"t\"}", 1, now).map(|_| ()),
            Err(DropReason::BadJson)
        );
    }

    /// Fuzzing follow-up (a probe past libFuzzer's 4 KiB inputs): sonic-rs skips
    /// nested values recursively with no depth limit (upstream cloudwego/sonic-rs#232),
    /// so one deeply nested payload (~20 KB) overflows the bus thread's 2 MiB stack
    /// and aborts the whole gateway. It should be dropped as `bad_json` instead.
    #[test]
    fn deep_nesting_is_dropped_not_a_crash() {
        let depth = 100_000;
        let body = format!(
            r#"{{"type":"t","payload":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || build(b"x", body.as_bytes(), 1, Instant::now()).map(|_| ()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(r, Err(DropReason::BadJson));
    }
}
