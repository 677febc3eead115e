//! permessage-deflate (SPEC §3, RFC 7692): negotiated when offered, the same
//! compressed bytes for every subscriber that negotiated it and plain frames for
//! the others, compressed client commands, and a decompression bomb closed 1009.
//! A raw client here speaks the extension itself (tungstenite has none); the
//! official client's browser test speaks it through Chromium.

mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

struct Raw {
    s: TcpStream,
    /// The extension the server answered with, if any.
    extension: Option<String>,
}

fn upgrade(gw: &Gateway, offer: Option<&str>) -> Raw {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ext = offer
        .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let extension = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("sec-websocket-extensions:")
        })
        .map(|l| l.split_once(':').unwrap().1.trim().to_owned());
    Raw { s, extension }
}

fn deflate(text: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(data.len() * 8 + 1024);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

impl Raw {
    /// Send a text message, compressed (RSV1) or not.
    fn send(&mut self, text: &[u8], compressed: bool) {
        let payload = if compressed {
            deflate(text)
        } else {
            text.to_vec()
        };
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x80 | if compressed { 0x40 } else { 0 } | 0x1];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    /// The next frame: (rsv1, opcode, payload).
    fn frame(&mut self) -> (bool, u8, Vec<u8>) {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p).unwrap();
        (h[0] & 0x40 != 0, h[0] & 0x0f, p)
    }

    /// The next message as JSON, inflated when it came compressed; and whether it did.
    fn json(&mut self) -> (Value, bool) {
        loop {
            let (rsv1, op, p) = self.frame();
            if op == 0x8 {
                panic!("closed: {:?}", p.get(..2));
            }
            let text = if rsv1 { inflate(&p) } else { p };
            let v: Value = serde_json::from_slice(&text).unwrap();
            if v["payload"]["event"] == "user.presence" {
                continue;
            }
            return (v, rsv1);
        }
    }

    fn close_code(&mut self) -> Option<u16> {
        loop {
            let (_, op, p) = self.frame();
            if op == 0x8 {
                return p.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            }
        }
    }

    fn hello(&mut self, compressed: bool) {
        let m = json!({"type": "HELLO", "payload": {"token": token("ann", &[], &[])}});
        self.send(m.to_string().as_bytes(), compressed);
        assert_eq!(self.json().0["type"], "HELLO_ACK");
    }
}

#[test]
fn negotiated_when_offered_and_not_when_off() {
    let gw = Gateway::start(&[]);
    let c = upgrade(&gw, Some("permessage-deflate; client_max_window_bits"));
    let ext = c.extension.expect("accepted");
    assert!(ext.starts_with("permessage-deflate"), "{ext}");
    assert!(
        ext.contains("server_no_context_takeover") && ext.contains("client_no_context_takeover")
    );
    assert!(upgrade(&gw, None).extension.is_none());
    assert!(
        upgrade(&gw, Some("permessage-deflate; server_max_window_bits=9"))
            .extension
            .is_none(),
        "a smaller server window cannot be honoured by a shared compressed frame"
    );
    let off = Gateway::start(&["--compression", "off"]);
    assert!(upgrade(&off, Some("permessage-deflate"))
        .extension
        .is_none());
}

#[test]
fn compressed_and_plain_subscribers_receive_identical_events() {
    let gw = Gateway::start(&[]);
    let mut z = upgrade(&gw, Some("permessage-deflate"));
    let mut p = upgrade(&gw, None);
    z.hello(true); // a compressed command
    p.hello(false);
    let sub = json!({"type": "SUBSCRIBE", "payload": {"channels": ["live:show"]}}).to_string();
    z.send(sub.as_bytes(), true);
    assert_eq!(z.json().0["type"], "SUBSCRIBED");
    p.send(sub.as_bytes(), false);
    assert_eq!(p.json().0["type"], "SUBSCRIBED");
    for i in 0..20 {
        let text = "chat message ".repeat(10);
        assert_eq!(
            gw.publish("live:show:chat", "m", json!({"i": i, "text": text})),
            202
        );
    }
    for i in 0..20 {
        let (zv, zc) = z.json();
        let (pv, pc) = p.json();
        assert!(zc, "event {i} compressed for the deflate subscriber");
        assert!(!pc, "event {i} plain for the other");
        assert_eq!(zv, pv, "the same event");
        assert_eq!(zv["payload"]["payload"]["i"], i);
    }
}

#[test]
fn a_decompression_bomb_is_closed_1009() {
    let gw = Gateway::start(&["--max-message-size", "4096"]);
    let mut z = upgrade(&gw, Some("permessage-deflate"));
    z.hello(true);
    // 1 MiB of spaces deflates to about a kilobyte.
    let bomb = format!(
        r#"{{"type":"SUBSCRIBE","payload":{{"channels":["live:x"],"pad":"{}"}}}}"#,
        " ".repeat(1 << 20)
    );
    z.send(bomb.as_bytes(), true);
    assert_eq!(z.close_code(), Some(1009));
    // A neighbour is not disturbed.
    let (mut c, _) = Client::hello(&gw, &token("bob", &[], &[]));
    c.subscribe(&["live:y"]);
}
