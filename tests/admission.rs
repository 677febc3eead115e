//! SPEC §8 "who gets in": per-IP limits, trusted proxies (X-Forwarded-For, PROXY
//! v1/v2), and floods of half-open and slow handshakes.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Whether a read error means the peer closed the connection (reset or aborted);
/// a read timeout is not a close.
fn is_close(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// Whether a read error is the read timeout expiring.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A raw upgrade request, optionally behind `prefix` bytes (a PROXY header); returns
/// the HTTP status, or None when the server closed (EOF or reset) without
/// answering. A server that neither answers nor closes within 5 s fails the test:
/// a hang is not a close.
fn raw_upgrade(addr: SocketAddr, prefix: &[u8], extra_headers: &str) -> (Option<u16>, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = prefix.to_vec();
    req.extend_from_slice(
        format!(
            "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        )
        .as_bytes(),
    );
    let _ = s.write_all(&req);
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Err(e) if is_close(&e) => break,
            Err(e) if is_timeout(&e) => panic!(
                "the server neither answered nor closed within 5 s (got {:?})",
                String::from_utf8_lossy(&got)
            ),
            Err(e) => panic!("read failed: {e}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let status = String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok());
    (status, s)
}

fn proxy_v2(src: [u8; 4]) -> Vec<u8> {
    let mut v = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v.extend_from_slice(&[0x21, 0x11, 0, 12]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&[127, 0, 0, 1, 0x15, 0xb3, 0x1f, 0x90]);
    v
}

#[test]
fn per_ip_limit_answers_429_before_the_upgrade() {
    let gw = Gateway::start(&["--max-connections-per-ip", "2"]);
    let a = Client::connect(&gw);
    let _b = Client::connect(&gw);
    assert_eq!(Client::try_connect(gw.addr, &[]).err(), Some(429));
    a.close();
    assert!(eventually(Duration::from_secs(5), || Client::try_connect(
        gw.addr,
        &[]
    )
    .is_ok()));
}

#[test]
fn forwarded_for_counts_only_from_trusted_proxies() {
    let gw = Gateway::start(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.0/8,10.0.0.0/8",
    ]);
    let _a = Client::try_connect(gw.addr, &[("X-Forwarded-For", "203.0.113.5, 10.1.1.1")]).unwrap();
    assert_eq!(
        Client::try_connect(gw.addr, &[("X-Forwarded-For", "203.0.113.5")]).err(),
        Some(429)
    );
    let _b = Client::try_connect(gw.addr, &[("X-Forwarded-For", "203.0.113.6")]).unwrap();
    // no header: the trusted peer itself is the client
    let _c = Client::try_connect(gw.addr, &[]).unwrap();
    assert_eq!(Client::try_connect(gw.addr, &[]).err(), Some(429));

    // an untrusted peer's X-Forwarded-For is ignored: every request is 127.0.0.1
    let strict = Gateway::start(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "10.9.9.9/32",
    ]);
    let _x = Client::try_connect(strict.addr, &[("X-Forwarded-For", "203.0.113.7")]).unwrap();
    assert_eq!(
        Client::try_connect(strict.addr, &[("X-Forwarded-For", "203.0.113.8")]).err(),
        Some(429)
    );
}

#[test]
fn proxy_protocol_v1_and_v2_from_a_trusted_balancer() {
    let gw = Gateway::start(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.1",
    ]);
    let (s1, _k1) = raw_upgrade(gw.addr, b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 8080\r\n", "");
    assert_eq!(s1, Some(101));
    let (s2, _k2) = raw_upgrade(gw.addr, b"PROXY TCP4 192.0.2.1 127.0.0.1 5556 8080\r\n", "");
    assert_eq!(s2, Some(429), "same client address behind the balancer");
    let (s3, _k3) = raw_upgrade(gw.addr, &proxy_v2([192, 0, 2, 2]), "");
    assert_eq!(s3, Some(101));
    let (s4, _k4) = raw_upgrade(gw.addr, &proxy_v2([192, 0, 2, 2]), "");
    assert_eq!(s4, Some(429));
    let (s5, _k5) = raw_upgrade(gw.addr, b"PROXY GARBAGE\r\n", "");
    assert_eq!(s5, None, "a malformed PROXY header closes the connection");
}

#[test]
fn proxy_header_from_an_untrusted_peer_closes() {
    let gw = Gateway::start(&[]);
    let (s, _k) = raw_upgrade(gw.addr, b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 8080\r\n", "");
    assert_eq!(s, None);
    let (s, _k) = raw_upgrade(gw.addr, &proxy_v2([192, 0, 2, 9]), "");
    assert_eq!(s, None);
    // a normal client is fine
    let (s, _k) = raw_upgrade(gw.addr, b"", "");
    assert_eq!(s, Some(101));
}

#[test]
fn a_legitimate_client_gets_in_during_a_slowloris_flood() {
    let gw = Gateway::start(&["--hello-timeout-ms", "3000", "--shards", "1"]);
    let mut flood = Vec::new();
    // half-open: connected, silent
    for _ in 0..1500 {
        flood.push(TcpStream::connect(gw.addr).unwrap());
    }
    // slow handshakes: a request line and then nothing
    for _ in 0..1500 {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        let _ = s.write_all(b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\n");
        flood.push(s);
    }
    let flooded = Instant::now();
    let (mut c, ack) = Client::hello(&gw, &token("legit", &[], &[]));
    assert_eq!(ack["userId"], "legit");
    c.send(json!({"type": "PING", "payload": {}}));
    c.expect("PONG");
    // In order: the legitimate client got in while the flood was still pending
    // (its youngest sockets are neither shed nor past their deadline yet), not
    // after the flood's deadline cleared the way.
    for s in flood.iter_mut().rev().take(10) {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Err(e) if is_timeout(&e) => {}
            other => panic!("the flood was already closed when the client got in: {other:?}"),
        }
    }
    // The flood is shed: every sampled socket is closed (EOF or reset, a read
    // timeout is not a close) by the 3 s HELLO deadline plus a generous margin,
    // which is still short of the 10 s cap a gateway ignoring the flag would use.
    let deadline = flooded + Duration::from_secs(3 + 5);
    for (i, s) in flood.iter_mut().enumerate().step_by(100) {
        let mut b = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match s.read(&mut b) {
                Ok(0) => break,
                Err(e) if is_close(&e) => break,
                Ok(_) => continue, // whatever it says, it must then close
                Err(e) if is_timeout(&e) => {
                    panic!("flood socket {i} still open 8 s after the flood began")
                }
                Err(e) => panic!("flood socket {i}: {e}"),
            }
        }
    }
    // and the shard still serves
    let (_c2, _) = Client::hello(&gw, &token("legit2", &[], &[]));
}

#[test]
fn beyond_the_pending_handshake_cap_the_oldest_is_shed() {
    let gw = Gateway::start(&["--shards", "1", "--hello-timeout-ms", "10000"]);
    let mut first = TcpStream::connect(gw.addr).unwrap();
    std::thread::sleep(Duration::from_millis(700)); // old enough to be shed, not a burst
    let mut rest = Vec::new();
    for _ in 0..2100 {
        rest.push(TcpStream::connect(gw.addr).unwrap());
    }
    // the first one was shed long before its 10 s deadline
    first
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut b = [0u8; 1];
    let r = first.read(&mut b);
    assert!(
        matches!(r, Ok(0)) || matches!(&r, Err(e) if is_close(e)),
        "not closed within 3 s: {r:?}"
    );
    let (_c, _) = Client::hello(&gw, &token("ok", &[], &[]));
}
