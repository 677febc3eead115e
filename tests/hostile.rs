//! What a hostile client or a careless backend could do to the gateway (issue 12,
//! SPEC §2, §3, §5, §8): each test here failed before its fix. Real binary, real
//! sockets.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// A masked client frame (RFC 6455 §5.3) with opcode `op`.
fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![0x80 | op];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A WebSocket upgrade on a raw socket (the response is read and dropped).
fn raw_upgrade(gw: &Gateway, extra_headers: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Read server frames from a raw socket until a close frame; its code.
fn read_until_close(s: &mut TcpStream) -> Option<u16> {
    let mut read = |n: usize| -> Option<Vec<u8>> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).ok().map(|_| b)
    };
    loop {
        let h = read(2)?;
        let len = match h[1] & 0x7f {
            126 => u16::from_be_bytes(read(2)?.try_into().ok()?) as usize,
            127 => u64::from_be_bytes(read(8)?.try_into().ok()?) as usize,
            n => n as usize,
        };
        let payload = read(len)?;
        if h[0] & 0x0f == 0x8 {
            return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        }
    }
}

/// Defect 1: the pongs owed to a client's pings count against the send queue.
#[test]
fn a_client_that_pings_and_never_reads_is_a_slow_consumer() {
    let gw = Gateway::start(&["--send-queue-bytes", "64KiB", "--shards", "1"]);
    let (mut s, _) = raw_upgrade(&gw, "");
    // A small receive buffer, not read while pinging: the pongs pile up.
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4096)
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let ping = client_frame(0x9, &[b'p'; 120]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 500)
        .collect();
    // Up to 40 MB of pings (as many pongs owed): far past the 64 KiB send queue
    // and any socket buffer. The gateway stops reading them once it has closed.
    let mut sent = 0usize;
    while sent < 40 << 20 && s.write_all(&burst).is_ok() {
        sent += burst.len();
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        read_until_close(&mut s),
        Some(4010),
        "no 4010 after {sent} bytes of pings"
    );
    drop(s);
    assert!(eventually(Duration::from_secs(10), || gw
        .metric_exact("xcord_connections_closed_total{code=\"4010\"}")
        == 1.0));
}

/// Defect 10: only complete frames reset the heartbeat deadline.
#[test]
fn trickling_the_bytes_of_an_unfinished_frame_does_not_keep_a_connection() {
    let gw = Gateway::start(&["--heartbeat-interval-ms", "300"]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    // A text frame announcing 100 bytes, sent one byte every 100 ms.
    let frame = client_frame(0x1, &[b' '; 100]);
    let start = Instant::now();
    c.set_timeout(Duration::from_millis(100));
    let mut closed = None;
    for b in frame.iter().take(60) {
        if c.ws.get_mut().write_all(&[*b]).is_err() {
            break;
        }
        if let Got::Closed(code) = c.next() {
            closed = Some(code);
            break;
        }
    }
    assert_eq!(
        closed,
        Some(Some(4009)),
        "no 4009 after trickling for {:?} with a 600 ms deadline",
        start.elapsed()
    );
}

/// Defect 8: an event larger than any send queue is dropped once, at the bus.
#[test]
fn an_oversized_event_is_dropped_and_counted_not_a_mass_disconnect() {
    let gw = Gateway::start(&["--send-queue-bytes", "4096"]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    c.subscribe(&["live:show"]);
    assert_eq!(
        gw.publish("live:show", "big", json!({"blob": "x".repeat(6000)})),
        202
    );
    assert_eq!(gw.publish("live:show", "small", json!({"n": 1})), 202);
    let ev = c.expect_event();
    assert_eq!(ev["payload"]["event"], "small");
    assert_eq!(
        gw.metric_exact("xcord_events_dropped_total{reason=\"too_large\"}"),
        1.0
    );
    assert_eq!(
        gw.metric_exact("xcord_connections_closed_total{code=\"4010\"}"),
        0.0
    );
}

/// Defect 7: every X-Forwarded-For line is one list, and an entry that is not an
/// address ends the walk (the peer is taken).
#[test]
fn forwarded_for_lines_are_one_list_and_a_bad_entry_ends_the_walk() {
    let gw = Gateway::start(&[
        "--trusted-proxies",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "1",
    ]);
    let status = |head: &str| head.split_whitespace().nth(1).unwrap_or("").to_owned();
    // A proxy that appends a second header line: the client forged the first.
    let (_a, h) = raw_upgrade(
        &gw,
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n",
    );
    assert_eq!(status(&h), "101");
    let (_b, h) = raw_upgrade(
        &gw,
        "X-Forwarded-For: 7.7.7.7\r\nX-Forwarded-For: 1.2.3.4\r\n",
    );
    assert_eq!(
        status(&h),
        "429",
        "the same client behind a forged first line"
    );
    // `ip:port` is not an address: the peer (127.0.0.1) is the client, whatever
    // was forged before it.
    let (_c, h) = raw_upgrade(&gw, "X-Forwarded-For: 8.8.8.8, 1.2.3.5:5555\r\n");
    assert_eq!(status(&h), "101");
    let (_d, h) = raw_upgrade(&gw, "X-Forwarded-For: 9.9.9.9, 1.2.3.5:5555\r\n");
    assert_eq!(status(&h), "429", "both fall back to the peer");
}

/// Defect 11: a request that is not a valid upgrade names the version (RFC 6455 §4.4).
#[test]
fn upgrade_required_names_the_websocket_version() {
    let gw = Gateway::start(&[]);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("\r\nsec-websocket-version: 13\r\n"),
        "{resp}"
    );
}

/// Segments carrying data that a socket has received (Linux `tcp_info`).
fn data_segments_in(s: &TcpStream) -> u32 {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0);
    assert!(
        len >= 156,
        "kernel tcp_info too short for tcpi_data_segs_in"
    );
    u32::from_ne_bytes([buf[152], buf[153], buf[154], buf[155]])
}

/// Defect 11: the ERRORs of one SUBSCRIBE go out with its SUBSCRIBED in one write
/// (each used to cost a send() of its own).
#[test]
fn the_replies_to_one_subscribe_leave_in_one_write() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    let refused: Vec<String> = (0..20).map(|i| format!("nope:{i}")).collect();
    let mut channels: Vec<&str> = refused.iter().map(String::as_str).collect();
    channels.push("live:ok");
    // Settle: nothing else in flight towards the client.
    c.expect_silence(Duration::from_millis(300));
    let before = data_segments_in(c.ws.get_ref());
    c.send(json!({"type": "SUBSCRIBE", "payload": {"channels": channels}}));
    for _ in 0..20 {
        assert_eq!(c.expect("ERROR")["code"], "INVALID_CHANNEL");
    }
    assert_eq!(c.expect("SUBSCRIBED")["channels"], json!(["live:ok"]));
    let segments = data_segments_in(c.ws.get_ref()) - before;
    assert!(
        segments <= 2,
        "21 replies arrived in {segments} segments: one write each?"
    );
}

/// Defect 9: numbers that would overflow later are refused at start, one line.
#[test]
fn durations_that_would_overflow_are_refused_at_start() {
    let huge = u64::MAX.to_string();
    for flag in [
        "--heartbeat-interval-ms",
        "--hello-timeout-ms",
        "--resume-window-seconds",
        "--token-grace-seconds",
        "--drain-seconds",
        "--presence-ttl-seconds",
        "--presence-sweep-seconds",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xcord-gateway"))
            .args(["--jwt-secret", "s", "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0", flag, &huge])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{flag}: one line, got {err}");
        assert!(lines[0].starts_with("error:"), "{flag}: {err}");
        assert!(lines[0].contains(flag), "{flag}: names the flag: {err}");
        assert!(!err.contains("panicked"), "{flag}: {err}");
    }
}

/// Defect 9: secrets from the environment never show in `--help`.
#[test]
fn secrets_in_the_environment_never_show_in_help() {
    for args in [vec!["--help"], vec!["token", "--help"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xcord-gateway"))
            .args(&args)
            .env("XCORD_JWT_SECRET", "s3cr3t-jwt-value")
            .env("XCORD_ADMIN_TOKEN", "s3cr3t-admin-value")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("XCORD_JWT_SECRET"), "{args:?}: {text}");
        assert!(
            !text.contains("s3cr3t"),
            "{args:?} printed a secret: {text}"
        );
    }
}

/// Defect 11: a RESUME whose connection drops before the answer arrives keeps the
/// session parked (it used to end it).
#[test]
fn a_resume_cut_short_keeps_the_session_resumable() {
    let gw = Gateway::start(&[]);
    let tok = token("rita", &[], &[]);
    let (c, ack) = Client::hello(&gw, &tok);
    let session = ack["sessionId"].as_str().unwrap().to_string();
    let reset = |s: &TcpStream| {
        socket2::SockRef::from(s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    };
    reset(c.ws.get_ref());
    drop(c);
    let gone = |gw: &Gateway| {
        eventually(Duration::from_secs(10), || {
            gw.metric_exact("xcord_connections{") == 0.0
        })
    };
    assert!(gone(&gw));
    let resume =
        json!({"type": "RESUME", "payload": {"token": tok, "sessionId": session, "seq": 0}})
            .to_string();
    for _ in 0..5 {
        let (mut s, _) = raw_upgrade(&gw, "");
        s.write_all(&client_frame(0x1, resume.as_bytes())).unwrap();
        reset(&s);
        drop(s); // gone before the answer
        assert!(gone(&gw));
    }
    let mut c = Client::connect(&gw);
    c.send(serde_json::from_str(&resume).unwrap());
    assert_eq!(c.expect("RESUMED")["sessionId"], session.as_str());
}
