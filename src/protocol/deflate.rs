//! permessage-deflate (RFC 7692, SPEC §3), with no compression state per connection.
//!
//! The gateway accepts an offer with `server_no_context_takeover` and
//! `client_no_context_takeover` (a server may add the latter even when the client
//! did not offer it, RFC 7692 §7.1.1.1): every message on the wire, either way,
//! is compressed on its own. So an event is compressed **once** per node and the
//! same bytes go to every subscriber that negotiated it (`compress_frame`, called
//! lazily by the first shard that needs it), and a client's compressed message is
//! inflated by the shard's one inflater, reset for each message (`Inflating`).
//! A connection that negotiated it costs a flag, nothing more.
//!
//! Inbound, `Inflating` sits in front of tungstenite's codec (which knows no
//! extensions): compressed data frames are collected, inflated with
//! `--max-message-size` bounding the inflated size (a decompression bomb is 1009),
//! and handed on as one plain frame; everything else passes through untouched.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::codes::{self, CloseCode};

/// What the server answers to an acceptable offer.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The empty block a sync flush ends with; stripped on the wire (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether one of the offers in the `Sec-WebSocket-Extensions` header lines is a
/// permessage-deflate the gateway can accept: known parameters, each at most once,
/// and no `server_max_window_bits` below 15 (one compressed event serves every
/// connection, so the server's window cannot differ per connection).
pub fn accept_offer<'a>(lines: impl IntoIterator<Item = &'a str>) -> bool {
    lines.into_iter().flat_map(|l| l.split(',')).any(acceptable)
}

fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"')),
            ),
            None => (p.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return false;
        }
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok());
        let ok = match name.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            "client_max_window_bits" => {
                value.is_none() || bits(value).is_some_and(|b| (8..=15).contains(&b))
            }
            "server_max_window_bits" => bits(value) == Some(15),
            _ => false,
        };
        if !ok {
            return false;
        }
        seen.push(name);
    }
    true
}

/// A compressor for event frames (one per thread: reset before each message). The
/// fastest level: events are small JSON, compressed once each but on the event
/// path, and a higher level costs far more CPU for few bytes (loadtest/RESULTS.md,
/// "Compression").
pub fn compressor() -> Compress {
    Compress::new(Compression::new(1), false)
}

/// An inflater for client messages (one per shard: reset before each message).
pub fn inflater() -> Decompress {
    Decompress::new(false)
}

/// The compressed frame (FIN, RSV1, text) carrying `text`.
pub fn compress_frame(text: &[u8], c: &mut Compress) -> Vec<u8> {
    c.reset();
    let mut body: Vec<u8> = Vec::with_capacity(text.len() / 2 + 64);
    let mut input = text;
    loop {
        if body.capacity() - body.len() < 64 {
            body.reserve(body.capacity().max(256));
        }
        let before_in = c.total_in();
        let r = c.compress_vec(input, &mut body, FlushCompress::Sync);
        input = &input[usize::try_from(c.total_in() - before_in).unwrap_or(input.len())..];
        if r.is_err() || (input.is_empty() && body.ends_with(&TAIL)) {
            break;
        }
    }
    if body.ends_with(&TAIL) {
        body.truncate(body.len() - TAIL.len());
    }
    let mut frame = Vec::with_capacity(body.len() + 10);
    frame.push(0x80 | 0x40 | 0x1); // FIN, RSV1 (compressed), text
    push_len(&mut frame, body.len(), false);
    frame.extend_from_slice(&body);
    frame
}

fn push_len(out: &mut Vec<u8>, len: usize, masked: bool) {
    let m = if masked { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(m | 126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Inflate one message: `Err(TOO_BIG)` past `max` inflated bytes.
fn inflate(data: &[u8], max: usize, d: &mut Decompress) -> Result<Vec<u8>, CloseCode> {
    d.reset(false);
    let mut out: Vec<u8> = Vec::with_capacity((data.len() * 3).min(max + 1));
    let mut input: Vec<u8> = Vec::with_capacity(data.len() + 4);
    input.extend_from_slice(data);
    input.extend_from_slice(&TAIL);
    let mut at = 0;
    loop {
        if out.len() > max {
            return Err(codes::TOO_BIG);
        }
        if out.capacity() - out.len() < 256 {
            out.reserve((out.capacity()).clamp(256, max + 1 - out.len().min(max)));
        }
        let before = d.total_in();
        let r = d
            .decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
            .map_err(|_| codes::PROTOCOL_ERROR)?;
        at += usize::try_from(d.total_in() - before).unwrap_or(0);
        let stuck = d.total_in() == before && out.capacity() > out.len();
        if at >= input.len() || r == Status::StreamEnd || stuck {
            break;
        }
    }
    if out.len() > max {
        return Err(codes::TOO_BIG);
    }
    Ok(out)
}

/// Where the parser is in the client's byte stream.
#[derive(Default)]
struct Frame {
    hdr: Vec<u8>,
    /// Parsed header: (fin, rsv1, opcode, mask key, payload length).
    head: Option<(bool, bool, u8, [u8; 4], u64)>,
    /// Payload bytes of the current frame seen so far.
    seen: u64,
}

/// The inbound stage for a connection that negotiated permessage-deflate: plain
/// frames pass through byte for byte; a compressed message comes out as one plain
/// frame (masked with a zero key, so the codec's checks still hold).
#[derive(Default)]
pub struct Inflating {
    frame: Frame,
    /// The compressed payload of the message in progress, and its opcode.
    message: Option<(u8, Vec<u8>)>,
}

impl Inflating {
    /// Nothing is held: no partial frame, no compressed message in progress.
    pub fn idle(&self) -> bool {
        self.frame.hdr.is_empty() && self.frame.head.is_none() && self.message.is_none()
    }

    /// Turn `input` into what the codec reads, appended to `out`. `Err`: close
    /// with that code (1009 past `max`, 1002 on a misuse of RSV1).
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        d: &mut Decompress,
    ) -> Result<(), CloseCode> {
        while !input.is_empty() {
            let Some((_, _, op, mask, len)) = self.frame.head else {
                self.frame.hdr.push(input[0]);
                input = &input[1..];
                if self.parse_header(out)? && self.frame.head.is_some_and(|h| h.4 == 0) {
                    self.complete(out, max, d)?;
                }
                continue;
            };
            let n = usize::try_from(len - self.frame.seen)
                .unwrap_or(usize::MAX)
                .min(input.len());
            let (chunk, rest) = input.split_at(n);
            input = rest;
            match &mut self.message {
                Some((_, buf)) if op < 0x8 => {
                    if buf.len() + chunk.len() > max {
                        return Err(codes::TOO_BIG);
                    }
                    let at = self.frame.seen;
                    buf.extend(
                        chunk.iter().enumerate().map(|(i, b)| {
                            b ^ mask[usize::try_from((at + i as u64) % 4).unwrap_or(0)]
                        }),
                    );
                }
                _ => out.extend_from_slice(chunk),
            }
            self.frame.seen += n as u64;
            if self.frame.seen == len {
                self.complete(out, max, d)?;
            }
        }
        Ok(())
    }

    /// The current frame is complete; a compressed message that it ends is
    /// inflated and handed on as one plain frame.
    fn complete(
        &mut self,
        out: &mut Vec<u8>,
        max: usize,
        d: &mut Decompress,
    ) -> Result<(), CloseCode> {
        let Some((fin, _, op, _, _)) = self.frame.head else {
            return Ok(());
        };
        self.frame = Frame::default();
        if op < 0x8 && fin {
            if let Some((op, data)) = self.message.take() {
                let plain = inflate(&data, max, d)?;
                out.push(0x80 | op);
                push_len(out, plain.len(), true);
                out.extend_from_slice(&[0, 0, 0, 0]);
                out.extend_from_slice(&plain);
            }
        }
        Ok(())
    }

    /// Once the header's bytes are all in (`Ok(true)`), decide what to do with the
    /// frame.
    fn parse_header(&mut self, out: &mut Vec<u8>) -> Result<bool, CloseCode> {
        let h = &self.frame.hdr;
        let Some((hl, len)) = super::frame::frame_len(h) else {
            return Ok(false);
        };
        if h.len() < hl {
            return Ok(false);
        }
        let (fin, rsv1, op) = (h[0] & 0x80 != 0, h[0] & 0x40 != 0, h[0] & 0x0f);
        let mask = if h[1] & 0x80 != 0 {
            [h[hl - 4], h[hl - 3], h[hl - 2], h[hl - 1]]
        } else {
            [0; 4]
        };
        let compressed_start = rsv1 && (op == 0x1 || op == 0x2);
        let continuation = op == 0x0 && self.message.is_some();
        if rsv1 && !compressed_start {
            // RSV1 only marks the first frame of a data message.
            return Err(codes::PROTOCOL_ERROR);
        }
        if compressed_start {
            if self.message.is_some() {
                return Err(codes::PROTOCOL_ERROR);
            }
            self.message = Some((op, Vec::new()));
        }
        if !compressed_start && !continuation {
            out.extend_from_slice(h); // a plain frame: header as it came
        }
        self.frame.head = Some((fin, rsv1, op, mask, len));
        self.frame.hdr.clear();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_message(text: &[u8], compressed: bool, split: usize) -> Vec<u8> {
        let payload = if compressed {
            // A client compresses as it likes: the best level makes the smallest bomb.
            let f = compress_frame(text, &mut Compress::new(Compression::best(), false));
            let (hl, _) = super::super::frame::frame_len(&f).unwrap();
            f[hl..].to_vec()
        } else {
            text.to_vec()
        };
        let mask = [9u8, 8, 7, 6];
        let parts: Vec<&[u8]> = if split > 0 && split < payload.len() {
            vec![&payload[..split], &payload[split..]]
        } else {
            vec![&payload[..]]
        };
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let fin = i + 1 == parts.len();
            let op = if i == 0 { 0x1 } else { 0x0 };
            let rsv1 = compressed && i == 0;
            out.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | op);
            push_len(&mut out, p.len(), true);
            out.extend_from_slice(&mask);
            out.extend(p.iter().enumerate().map(|(j, b)| b ^ mask[j % 4]));
        }
        out
    }

    /// What tungstenite's codec reads out of `stream`.
    fn messages(stream: &[u8]) -> Vec<String> {
        let mut ctx =
            tungstenite::protocol::WebSocketContext::new(tungstenite::protocol::Role::Server, None);
        struct Io<'a>(&'a [u8]);
        impl std::io::Read for Io<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                let n = b.len().min(self.0.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        impl std::io::Write for Io<'_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut io = Io(stream);
        let mut out = Vec::new();
        while let Ok(m) = ctx.read(&mut io) {
            if let tungstenite::Message::Text(t) = m {
                out.push(t.to_string());
            }
        }
        out
    }

    #[test]
    fn offers_are_read_as_rfc_7692_says() {
        assert!(accept_offer(["permessage-deflate; client_max_window_bits"]));
        assert!(accept_offer([
            "x-webkit-deflate-frame",
            "permessage-deflate"
        ]));
        assert!(accept_offer([
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
        assert!(!accept_offer([
            "permessage-deflate; server_max_window_bits=10"
        ]));
        assert!(!accept_offer(["permessage-deflate; bogus"]));
        assert!(!accept_offer([
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ]));
        assert!(!accept_offer(Vec::<&str>::new()));
    }

    #[test]
    fn a_compressed_event_inflates_to_its_text() {
        let text = br#"{"type":"EVENT","seq":1,"payload":{"event":"m","channel":"live:x","payload":{"t":"hello hello hello hello"}}}"#;
        let f = compress_frame(text, &mut compressor());
        assert_eq!(f[0], 0xC1, "FIN, RSV1, text");
        let (hl, len) = super::super::frame::frame_len(&f).unwrap();
        assert_eq!(len as usize, f.len() - hl);
        let plain = inflate(&f[hl..], 1 << 20, &mut inflater()).unwrap();
        assert_eq!(plain, text);
    }

    #[test]
    fn compressed_client_messages_reach_the_codec_plain_in_any_split() {
        let a = br#"{"type":"PING","payload":{}}"#;
        let b = br#"{"type":"SUBSCRIBE","payload":{"channels":["live:aaaaaaaaaaaaaaaaaaaaaa"]}}"#;
        let mut stream = client_message(a, false, 0);
        stream.extend(client_message(b, true, 0));
        stream.extend(client_message(b, true, 7)); // fragmented compressed message
        stream.extend(client_message(a, false, 0));
        for cut in 0..stream.len() {
            let mut st = Inflating::default();
            let mut d = inflater();
            let mut out = Vec::new();
            st.feed(&stream[..cut], &mut out, 4096, &mut d).unwrap();
            st.feed(&stream[cut..], &mut out, 4096, &mut d).unwrap();
            assert!(st.idle());
            let got = messages(&out);
            assert_eq!(got.len(), 4, "cut {cut}");
            assert_eq!(got[1].as_bytes(), b);
            assert_eq!(got[2].as_bytes(), b);
        }
    }

    #[test]
    fn a_decompression_bomb_is_too_big() {
        let bomb = vec![b' '; 1 << 20];
        let stream = client_message(&bomb, true, 0);
        assert!(stream.len() < 4096, "small on the wire: {}", stream.len());
        let mut out = Vec::new();
        let r = Inflating::default().feed(&stream, &mut out, 4096, &mut inflater());
        assert_eq!(r, Err(codes::TOO_BIG));
    }

    #[test]
    fn rsv1_on_a_control_frame_is_a_protocol_error() {
        let mut f = client_message(b"x", false, 0);
        f[0] = 0x80 | 0x40 | 0x9; // a "compressed" ping
        let r = Inflating::default().feed(&f, &mut Vec::new(), 4096, &mut inflater());
        assert_eq!(r, Err(codes::PROTOCOL_ERROR));
    }
}
