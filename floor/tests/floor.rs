//! The floor against a real Redis, through real sockets: the handshake, the exact
//! event bytes, the prefix rule, order and exactly-once delivery, and a stalled
//! reader that must not hold anyone else up.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::Message;
use xcord_common::claims::{sign_hs256, Claims};

#[test]
fn hello_ack_then_ping_and_bad_tokens_close_4004() {
    let f = Floor::start(&["--heartbeat-interval-ms", "1234"]);
    let mut ws = connect(&f.url());
    send(&mut ws, "HELLO", json!({"token": token("alice")}));
    let ack = next_json(&mut ws);
    assert_eq!(ack["type"], "HELLO_ACK", "{ack}");
    assert_eq!(ack["payload"]["userId"], "alice");
    assert_eq!(ack["payload"]["heartbeatInterval"], 1234);
    let sid = ack["payload"]["sessionId"].as_str().unwrap();
    assert!(
        sid.len() == 32 && sid.bytes().all(|b| b.is_ascii_hexdigit()),
        "{sid}"
    );
    send(&mut ws, "PING", json!({}));
    let pong = next_json(&mut ws);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ts = pong["payload"]["timestamp"].as_u64().unwrap();
    assert!(ts.abs_diff(now) < 5_000, "{pong}");
    send(&mut ws, "HELLO", json!({"token": token("alice")}));
    assert_eq!(close_code(&mut ws), Some(4005), "a second HELLO");

    let now_s = now / 1000;
    let mut expired = Claims::new("bob", &[], &[], 60);
    expired.exp = now_s - 3600;
    let mut not_yet = Claims::new("bob", &[], &[], 7200);
    not_yet.nbf = Some(now_s + 3600);
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "bob"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bad = [
        json!({"token": sign_hs256(b"another secret", &Claims::new("bob", &[], &[], 60)).unwrap()}),
        json!({"token": sign_hs256(SECRET.as_bytes(), &expired).unwrap()}),
        json!({"token": sign_hs256(SECRET.as_bytes(), &not_yet).unwrap()}),
        json!({"token": no_exp}),
        json!({"token": "not.a.token"}),
        json!({}),
    ];
    for payload in bad {
        let mut ws = connect(&f.url());
        send(&mut ws, "HELLO", payload.clone());
        assert_eq!(close_code(&mut ws), Some(4004), "{payload}");
    }
    let mut ws = connect(&f.url());
    send(&mut ws, "PING", json!({}));
    assert_eq!(close_code(&mut ws), Some(4003), "a command before HELLO");
    let mut ws = connect(&f.url());
    ws.send(Message::text("{not json")).unwrap();
    assert_eq!(close_code(&mut ws), Some(4002));
}

#[test]
fn upgrade_refusals_and_admin_routes() {
    let r = Redis::start();
    let f = Floor::start(&["--redis", &r.url()]);
    let get = |path: &str, extra: &str| {
        http(
            f.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"),
        )
        .0
    };
    assert_eq!(get("/elsewhere", ""), 404);
    assert_eq!(get("/api/v1/ws", ""), 426);
    let admin_get = |path: &str| {
        http(
            f.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(admin_get("/readyz").0, 200);
    assert_eq!(admin_get("/healthz").0, 200);
    assert_eq!(admin_get("/nope").0, 404);
    let body = r#"{"channel":"live:x","event":"t","payload":{}}"#;
    assert_eq!(f.publish_as("wrong", body).0, 401);
    assert_eq!(f.publish_as(ADMIN, body).0, 202);
    let (status, text) = f.publish_as(ADMIN, r#"{"channel":"not valid","event":"t"}"#);
    assert_eq!(status, 400, "{text}");
    assert_eq!(f.publish_as(ADMIN, "{").0, 400);
}

/// The JSON text of a server frame.
fn frame_json(frame: &[u8]) -> Value {
    let head = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&frame[head..]).unwrap()
}

#[test]
fn event_frames_are_the_gateways_bytes() {
    let r = Redis::start();
    let f = Floor::start(&["--redis", &r.url()]);
    let mut c = Raw::connect(f.addr);
    c.send_text(&json!({"type": "HELLO", "payload": {"token": token("u1")}}).to_string());
    assert_eq!(frame_json(&c.frame())["type"], "HELLO_ACK");
    c.send_text(r#"{"type":"SUBSCRIBE","payload":{"channels":["server:s1:channel:c"]}}"#);
    assert_eq!(
        c.frame(),
        text_frame(r#"{"type":"SUBSCRIBED","payload":{"channels":["server:s1:channel:c"]}}"#)
    );
    let expect = |seq: u64, payload: &str| {
        text_frame(&format!(
            r#"{{"type":"EVENT","seq":{seq},"payload":{{"event":"t","channel":"server:s1:channel:c","payload":{payload}}}}}"#
        ))
    };
    r.publish_raw("server:s1:channel:c", r#"{"type":"t","payload":{"k":1}}"#);
    let e1 = c.frame();
    let s1 = frame_json(&e1)["seq"].as_u64().unwrap();
    assert_eq!(e1, expect(s1, r#"{"k":1}"#));

    assert_eq!(f.publish("server:s1:channel:c", "t", r#"{"k":1}"#), 202);
    let e2 = c.frame();
    let s2 = frame_json(&e2)["seq"].as_u64().unwrap();
    assert!(s2 > s1);
    assert_eq!(e2, expect(s2, r#"{"k":1}"#));

    // 16- and 64-bit lengths, and the payload copied as the backend wrote it.
    for n in [200, 70_000] {
        let payload = format!(r#"{{"pad":"{}","n":1.50}}"#, "x".repeat(n));
        r.publish_raw(
            "server:s1:channel:c",
            &format!(r#"{{"type":"t","payload":{payload}}}"#),
        );
        let e = c.frame();
        let s = frame_json(&e)["seq"].as_u64().unwrap();
        assert_eq!(e, expect(s, &payload));
    }
}

/// Read events until one on `live:end`; the channels of those before it.
fn channels_until_end(ws: &mut Ws) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let v = next_json(ws);
        assert_eq!(v["type"], "EVENT", "{v}");
        let ch = v["payload"]["channel"].as_str().unwrap().to_owned();
        if ch == "live:end" {
            return seen;
        }
        seen.push(ch);
    }
}

#[test]
fn a_subscription_covers_its_segment_prefixes_only() {
    let r = Redis::start();
    let f = Floor::start(&["--redis", &r.url()]);
    let url = f.url();
    let mut a = session(&url, "a", &["server:s1", "live:end"]);
    let mut b = session(&url, "b", &["server:s10", "live:end"]);
    // Overlapping subscriptions still deliver each event once.
    let mut c = session(
        &url,
        "c",
        &["server:s1", "server:s1:channel:c", "live:end:*"],
    );
    for ch in [
        "server:s1:channel:c",
        "server:s10:channel:c",
        "server:s1",
        "server:s",
        "server:s1x",
        "live:end",
    ] {
        r.publish_raw(ch, r#"{"type":"t","payload":{}}"#);
    }
    assert_eq!(
        channels_until_end(&mut a),
        ["server:s1:channel:c", "server:s1"]
    );
    assert_eq!(channels_until_end(&mut b), ["server:s10:channel:c"]);
    assert_eq!(
        channels_until_end(&mut c),
        ["server:s1:channel:c", "server:s1"]
    );
}

#[test]
fn a_thousand_events_in_order_exactly_once() {
    let r = Redis::start();
    let f = Floor::start(&["--redis", &r.url()]);
    let mut all = session(&f.url(), "all", &["server:s1", "live:end"]);
    let mut some = session(&f.url(), "some", &["server:s1:channel:c0", "live:end"]);
    let events: Vec<(String, String)> = (0..1000)
        .map(|i| {
            (
                format!("server:s1:channel:c{}", i % 3),
                format!(r#"{{"type":"n","payload":{{"i":{i}}}}}"#),
            )
        })
        .chain([("live:end".into(), r#"{"type":"end"}"#.into())])
        .collect();
    r.publish_many(&events);
    for (ws, want) in [
        (&mut all, (0..1000).collect::<Vec<u64>>()),
        (&mut some, (0..1000).filter(|i| i % 3 == 0).collect()),
    ] {
        let mut got = Vec::new();
        let mut last_seq = 0;
        loop {
            let v = next_json(ws);
            let seq = v["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "seq {seq} after {last_seq}");
            last_seq = seq;
            if v["payload"]["channel"] == "live:end" {
                break;
            }
            got.push(v["payload"]["payload"]["i"].as_u64().unwrap());
        }
        assert_eq!(got, want);
    }
}

#[test]
fn a_stalled_reader_does_not_block_the_others() {
    let r = Redis::start();
    let f = Floor::start(&["--redis", &r.url()]);
    let mut stalled = session(&f.url(), "stalled", &["live:x"]);
    let mut reader = session(&f.url(), "reader", &["live:x"]);
    const N: usize = 2000;
    let pad = "p".repeat(8 * 1024);
    let url = r.url();
    // Paced, from another thread, so the reader reads while Redis publishes.
    let publisher = std::thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        for chunk in 0..N / 100 {
            let mut pipe = redis::pipe();
            for i in chunk * 100..(chunk + 1) * 100 {
                let body = format!(r#"{{"type":"n","payload":{{"i":{i},"pad":"{pad}"}}}}"#);
                pipe.cmd("PUBLISH").arg("events:live:x").arg(body).ignore();
            }
            pipe.query::<()>(&mut c).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let t0 = Instant::now();
    for i in 0..N {
        let v = next_json(&mut reader);
        assert_eq!(v["payload"]["payload"]["i"].as_u64(), Some(i as u64));
    }
    publisher.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(30));
    // 16 MiB were owed to the stalled reader: far past its socket buffers and the
    // 1 MiB bound, so it was cut off, and sees less than everything.
    let mut got = 0;
    while let Ok(m) = stalled.read() {
        if m.is_text() {
            got += 1;
        }
    }
    assert!(got < N, "the stalled reader got all {got} events");
    // The floor is fine.
    let mut again = session(&f.url(), "again", &["live:x"]);
    r.publish_raw("live:x", r#"{"type":"t"}"#);
    assert_eq!(next_json(&mut again)["payload"]["event"], "t");
}

#[test]
fn bad_flags_exit_2_with_one_line_and_help_documents_every_flag() {
    let bin = env!("CARGO_BIN_EXE_xcord-floor");
    for args in [
        &["--nope"][..],
        &["--listen", "x", "--jwt-secret", "s"],
        &["--listen", "127.0.0.1:0"],
        &["--jwt-secret", "s", "--redis", "http://h"],
    ] {
        let out = Command::new(bin)
            .args(args)
            .env_remove("XCORD_JWT_SECRET")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--admin-listen",
        "--redis",
        "--jwt-secret",
        "--jwt-leeway-seconds",
        "--admin-token",
        "--heartbeat-interval-ms",
        "ratio to the floor",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
