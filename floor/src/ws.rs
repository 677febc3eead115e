//! The WebSocket wire: the HTTP/1.1 upgrade on `GET /api/v1/ws` (RFC 6455 §4),
//! client frames parsed and unmasked in place (§5), and the unmasked server frames
//! we write.

/// Largest HTTP request head we read before refusing it.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest client message (the gateway's default `--max-message-size`).
pub const MAX_MESSAGE: usize = 4096;

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PONG: u8 = 0xA;

/// What an HTTP request head asks for.
#[derive(Debug, PartialEq)]
pub enum Head {
    /// Not complete yet.
    Partial,
    /// A valid upgrade, its 101 response appended to `out`: the bytes of the head.
    Upgrade(usize),
    /// Refused: the whole HTTP response to send before closing.
    Refuse(&'static [u8]),
}

const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const UPGRADE_REQUIRED: &[u8] = b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

fn has_token(v: &[u8], token: &str) -> bool {
    std::str::from_utf8(v).is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Parse the request head at the start of `buf`; a valid upgrade's 101 response
/// is appended to `out`.
pub fn parse_upgrade(buf: &[u8], out: &mut Vec<u8>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Head::Refuse(TOO_LARGE)
        }
        Err(_) => return Head::Refuse(BAD_REQUEST),
    };
    let path = req.path.unwrap_or("");
    if path.split('?').next() != Some("/api/v1/ws") {
        return Head::Refuse(NOT_FOUND);
    }
    let (mut upgrade, mut connection, mut version, mut key) = (false, false, false, None);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = has_token(h.value, "websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection = has_token(h.value, "upgrade");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
            version = h.value == b"13";
        } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(h.value);
        }
    }
    let key = match key {
        Some(k) if req.method == Some("GET") && upgrade && connection && version => k,
        _ => return Head::Refuse(UPGRADE_REQUIRED),
    };
    let accept = tungstenite::handshake::derive_accept_key(key);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Head::Upgrade(len)
}

/// One client frame, its payload unmasked in place.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary,
    Close(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
}

/// The result of looking at the bytes at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Parsed<'a> {
    /// More bytes needed.
    Need,
    /// One frame of `len` bytes.
    Frame(Frame<'a>, usize),
    /// A protocol violation: close with this code.
    Fail(u16),
}

/// Parse (and unmask) the client frame at the start of `buf`.
///
/// Deliberately not supported: fragmented messages (1002), extensions (1002).
pub fn parse_frame(buf: &mut [u8]) -> Parsed<'_> {
    if buf.len() < 2 {
        return Parsed::Need;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let (fin, rsv, opcode) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f);
    if rsv != 0 || b1 & 0x80 == 0 || !fin {
        // Extensions, an unmasked client frame (RFC 6455 §5.1), or a fragment.
        return Parsed::Fail(1002);
    }
    let (head, len) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (8, u64::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (14, u64::from_be_bytes(b))
        }
        126 | 127 => return Parsed::Need,
        n => (6, u64::from(n)),
    };
    let control = opcode & 0x8 != 0;
    if control && len > 125 {
        return Parsed::Fail(1002);
    }
    if len > MAX_MESSAGE as u64 {
        return Parsed::Fail(1009);
    }
    let len = len as usize;
    if buf.len() < head + len {
        return Parsed::Need;
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[head - 4..head]);
    let payload = &mut buf[head..head + len];
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    let payload = &buf[head..head + len];
    let frame = match opcode {
        0x1 => Frame::Text(payload),
        0x2 => Frame::Binary,
        0x8 => Frame::Close(payload),
        0x9 => Frame::Ping(payload),
        0xA => Frame::Pong,
        _ => return Parsed::Fail(1002),
    };
    Parsed::Frame(frame, head + len)
}

/// Write the header of an unmasked final frame carrying `len` bytes into the end
/// of `out` (10 bytes); returns how many bytes of it are the header.
pub fn header_into(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
    let b0 = 0x80 | opcode;
    if len < 126 {
        out[8] = b0;
        out[9] = len as u8;
        2
    } else if len <= 0xffff {
        out[6] = b0;
        out[7] = 126;
        out[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[0] = b0;
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Append one unmasked frame to `out`.
pub fn push_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mut h = [0u8; 10];
    let n = header_into(opcode, payload.len(), &mut h);
    out.extend_from_slice(&h[10 - n..]);
    out.extend_from_slice(payload);
}

/// Append a close frame with `code` to `out`.
pub fn push_close(code: u16, out: &mut Vec<u8>) {
    push_frame(OP_CLOSE, &code.to_be_bytes(), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        v
    }

    #[test]
    fn parses_masked_frames_in_place() {
        let text = vec![b'x'; 300];
        for (op, p) in [(0x1, &b"hello"[..]), (0x9, b"p"), (0x1, &text)] {
            let mut f = masked(op, p);
            let total = f.len();
            for cut in 0..total {
                assert_eq!(parse_frame(&mut f.clone()[..cut]), Parsed::Need);
            }
            match parse_frame(&mut f) {
                Parsed::Frame(Frame::Text(t), n) => assert_eq!((t, n), (p, total)),
                Parsed::Frame(Frame::Ping(t), n) => assert_eq!((t, n), (p, total)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn refuses_what_the_floor_does_not_do() {
        let mut unmasked = vec![0x81, 1, b'a'];
        assert_eq!(parse_frame(&mut unmasked), Parsed::Fail(1002));
        let mut fragment = masked(0x1, b"a");
        fragment[0] &= 0x7f;
        assert_eq!(parse_frame(&mut fragment), Parsed::Fail(1002));
        let mut big = masked(0x1, &vec![b'a'; MAX_MESSAGE + 1]);
        assert_eq!(parse_frame(&mut big), Parsed::Fail(1009));
    }

    #[test]
    fn server_headers() {
        for len in [0, 125, 126, 65535, 65536] {
            let mut v = Vec::new();
            push_frame(OP_TEXT, &vec![b'a'; len], &mut v);
            let head = v.len() - len;
            assert_eq!(
                head,
                if len < 126 {
                    2
                } else if len < 65536 {
                    4
                } else {
                    10
                }
            );
            assert_eq!(v[0], 0x81);
        }
    }

    #[test]
    fn upgrade() {
        let req = b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let mut out = Vec::new();
        match parse_upgrade(req, &mut out) {
            Head::Upgrade(len) => {
                assert_eq!(len, req.len());
                let r = String::from_utf8(out).unwrap();
                assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
            }
            other => panic!("{other:?}"),
        }
        let mut out = Vec::new();
        assert_eq!(parse_upgrade(&req[..20], &mut out), Head::Partial);
        assert_eq!(
            parse_upgrade(b"GET /x HTTP/1.1\r\n\r\n", &mut out),
            Head::Refuse(NOT_FOUND)
        );
        assert_eq!(
            parse_upgrade(b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\n\r\n", &mut out),
            Head::Refuse(UPGRADE_REQUIRED)
        );
        assert!(out.is_empty());
    }
}
