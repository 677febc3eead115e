//! The client side of RFC 6455, as small as the load test needs: the upgrade
//! request and the check of its answer (status 101 and `Sec-WebSocket-Accept`),
//! server frames parsed in place from a read buffer (no allocation per frame), and
//! masked client frames appended to an output buffer. With `--compression` the
//! upgrade offers permessage-deflate (RFC 7692) and compressed server messages are
//! inflated with one decompressor per thread, reset per message (the gateway
//! compresses without context takeover, SPEC §3), so a connection holds no
//! compression state.

use base64::Engine as _;

/// Frame opcodes.
pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest frame or message accepted from the server.
pub const MAX_FRAME: usize = 1 << 20;

/// A random `Sec-WebSocket-Key` (16 random bytes, base64).
pub fn new_key() -> String {
    let mut raw = [0u8; 16];
    for b in raw.iter_mut() {
        *b = fastrand::u8(..);
    }
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The `Sec-WebSocket-Accept` the server must answer to `key`.
pub fn accept_for(key: &str) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

/// The extension offered with `--compression`.
const DEFLATE_OFFER: &[u8] =
    b"\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The upgrade request for `path` on `host` (the Host header, with its port);
/// `deflate` offers permessage-deflate.
pub fn upgrade_request(host: &str, path: &str, key: &str, deflate: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    out.extend_from_slice(key.as_bytes());
    if deflate {
        out.extend_from_slice(DEFLATE_OFFER);
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// The outcome of reading the upgrade answer from the head of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The head is not complete yet.
    Partial,
    /// Upgraded; the frames start at this offset; whether the server accepted
    /// permessage-deflate.
    Done(usize, bool),
    /// Refused or malformed, with the reason.
    Refused(String),
}

/// Read the server's answer to the upgrade.
pub fn parse_upgrade(buf: &[u8], key_accept: &str) -> Upgrade {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Upgrade::Refused("upgrade answer head over 16 KiB".into());
        }
        return Upgrade::Partial;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "101" {
        return Upgrade::Refused(format!("WebSocket upgrade: HTTP {}", status.trim()));
    }
    let (mut accept, mut deflate) = (None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let k = k.trim();
        if k.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(v.trim().to_owned());
        } else if k.eq_ignore_ascii_case("sec-websocket-extensions") {
            deflate |= v.split(',').any(|e| {
                e.split(';')
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case("permessage-deflate"))
            });
        }
    }
    match accept {
        Some(a) if a == key_accept => Upgrade::Done(end + 4, deflate),
        Some(_) => Upgrade::Refused("WebSocket upgrade: wrong Sec-WebSocket-Accept".into()),
        None => Upgrade::Refused("WebSocket upgrade: no Sec-WebSocket-Accept".into()),
    }
}

/// One server frame, located in the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate), on its first frame.
    pub compressed: bool,
    pub opcode: u8,
    /// Where the frame (its header) starts in the buffer.
    pub head: usize,
    /// The payload's range in the buffer.
    pub start: usize,
    pub end: usize,
}

/// The result of parsing at the head of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not all of the frame is there; at least this many bytes are needed in all.
    Need(usize),
    Frame(Frame),
    /// A protocol error (masked server frame, oversized frame, reserved bits).
    Error(&'static str),
}

/// Parse the frame that starts at `buf[at..]`; RSV1 is allowed when
/// permessage-deflate was negotiated (`deflate`).
#[inline]
pub fn parse_frame(buf: &[u8], at: usize, deflate: bool) -> Parsed {
    let b = &buf[at..];
    if b.len() < 2 {
        return Parsed::Need(at + 2);
    }
    let (b0, b1) = (b[0], b[1]);
    let reserved = if deflate { 0x30 } else { 0x70 };
    if b0 & reserved != 0 {
        return Parsed::Error("reserved bits set (no extension was negotiated for them)");
    }
    if b1 & 0x80 != 0 {
        return Parsed::Error("masked server frame");
    }
    let (len, hdr) = match b1 & 0x7f {
        126 => {
            if b.len() < 4 {
                return Parsed::Need(at + 4);
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return Parsed::Need(at + 10);
            }
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[2..10]);
            let l = u64::from_be_bytes(x);
            if l > MAX_FRAME as u64 {
                return Parsed::Error("frame over 1 MiB");
            }
            (l as usize, 10)
        }
        l => (l as usize, 2),
    };
    if len > MAX_FRAME {
        return Parsed::Error("frame over 1 MiB");
    }
    let start = at + hdr;
    let end = start + len;
    if buf.len() < end {
        return Parsed::Need(end);
    }
    Parsed::Frame(Frame {
        fin: b0 & 0x80 != 0,
        compressed: b0 & 0x40 != 0,
        opcode: b0 & 0x0f,
        head: at,
        start,
        end,
    })
}

/// Append one masked client frame (FIN set) to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = fastrand::u32(..).to_ne_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Inflate one compressed message (RFC 7692 §7.2.2: the sender removed the
/// final empty block's `00 00 ff ff`) into `out`, at most `MAX_FRAME` bytes; the
/// decompressor is reset first (no context takeover).
pub fn inflate(
    z: &mut flate2::Decompress,
    msg: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), &'static str> {
    z.reset(false);
    out.clear();
    for part in [msg, &[0, 0, 0xff, 0xff][..]] {
        let mut input = part;
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(16 * 1024);
            }
            let (in0, out0) = (z.total_in(), z.total_out());
            let status = z
                .decompress_vec(input, out, flate2::FlushDecompress::Sync)
                .map_err(|_| "a compressed message does not inflate")?;
            input = &input[(z.total_in() - in0) as usize..];
            if out.len() > MAX_FRAME {
                return Err("an inflated message over 1 MiB");
            }
            let stuck = z.total_in() == in0 && z.total_out() == out0;
            if status == flate2::Status::StreamEnd || stuck {
                break;
            }
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
    }
    Ok(())
}

/// A close frame's payload: the code and the UTF-8 reason.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            v.push(payload.len() as u8);
        } else if payload.len() <= 0xffff {
            v.push(126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn accept_key_of_rfc6455() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(new_key().len(), 24);
    }

    #[test]
    fn upgrade_answer() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let acc = accept_for(key);
        let mut ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {acc}\r\n\r\n"
        )
        .into_bytes();
        let n = ok.len();
        ok.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_upgrade(&ok, &acc), Upgrade::Done(n, false));
        assert_eq!(parse_upgrade(&ok[..20], &acc), Upgrade::Partial);
        let bad = "HTTP/1.1 429 Too Many Requests\r\n\r\n";
        assert!(
            matches!(parse_upgrade(bad.as_bytes(), &acc), Upgrade::Refused(r) if r.contains("429"))
        );
        let wrong = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(matches!(
            parse_upgrade(wrong.as_bytes(), &acc),
            Upgrade::Refused(_)
        ));
    }

    #[test]
    fn frames_in_place_all_lengths_and_splits() {
        for len in [0usize, 5, 125, 126, 300, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = b"xx".to_vec();
            buf.extend(server_frame(OP_TEXT, true, &payload));
            let Parsed::Frame(f) = parse_frame(&buf, 2, false) else {
                panic!("len {len}: no frame");
            };
            assert_eq!(&buf[f.start..f.end], &payload[..]);
            assert!(f.fin);
            assert_eq!(f.opcode, OP_TEXT);
            // Every strict prefix asks for more, never yields a frame.
            for cut in [3, buf.len() - 1] {
                if cut < buf.len() {
                    assert!(
                        matches!(parse_frame(&buf[..cut], 2, false), Parsed::Need(n) if n > cut)
                    );
                }
            }
        }
        let masked = [0x81u8, 0x80, 0, 0, 0, 0];
        assert!(matches!(parse_frame(&masked, 0, false), Parsed::Error(_)));
    }

    #[test]
    fn compressed_messages_only_when_negotiated_and_inflated() {
        let text = br#"{"type":"EVENT","payload":{"body":"hello hello hello hello"}}"#;
        // What the server sends: raw deflate, sync-flushed, the 00 00 ff ff removed.
        let mut z = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut c = Vec::with_capacity(256);
        z.compress_vec(text, &mut c, flate2::FlushCompress::Sync)
            .expect("deflate");
        assert!(c.ends_with(&[0, 0, 0xff, 0xff]));
        c.truncate(c.len() - 4);
        let mut frame = server_frame(OP_TEXT, true, &c);
        frame[0] |= 0x40;
        assert!(matches!(parse_frame(&frame, 0, false), Parsed::Error(_)));
        let Parsed::Frame(f) = parse_frame(&frame, 0, true) else {
            panic!("no frame");
        };
        assert!(f.compressed && f.fin && f.head == 0);
        let mut d = flate2::Decompress::new(false);
        let mut out = Vec::new();
        for _ in 0..2 {
            // The same decompressor serves every message: reset each time.
            inflate(&mut d, &frame[f.start..f.end], &mut out).expect("inflates");
            assert_eq!(out, text);
        }
        assert!(inflate(&mut d, &[0xff; 40], &mut out).is_err());
        // The upgrade answer says whether the server took the offer.
        let acc = accept_for("k");
        let ok = format!(
            "HTTP/1.1 101 OK\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\nSec-WebSocket-Accept: {acc}\r\n\r\n"
        );
        assert_eq!(
            parse_upgrade(ok.as_bytes(), &acc),
            Upgrade::Done(ok.len(), true)
        );
        let mut req = Vec::new();
        upgrade_request("h:1", "/api/v1/ws", "k", true, &mut req);
        assert!(String::from_utf8_lossy(&req).contains("permessage-deflate"));
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        write_frame(&mut out, OP_TEXT, b"hello");
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 5);
        let mask = &out[2..6];
        let un: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(un, b"hello");
        let mut big = Vec::new();
        write_frame(&mut big, OP_TEXT, &[b'a'; 300]);
        assert_eq!(big[1], 0x80 | 126);
        assert_eq!(big.len(), 2 + 2 + 4 + 300);
        assert_eq!(close_code(&[0x03, 0xe8]), Some(1000));
    }
}
