//! SPEC §3: the handshake, HELLO, PING, every close code and every ERROR code.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn hello_ack_carries_session_heartbeat_and_user() {
    let gw = Gateway::start(&["--heartbeat-interval-ms", "15000"]);
    let (_c, ack) = Client::hello(&gw, &token("alice", &[], &[]));
    assert_eq!(ack["userId"], "alice");
    assert_eq!(ack["heartbeatInterval"], 15000);
    assert!(ack["sessionId"].as_str().is_some_and(|s| s.len() >= 16));
}

#[test]
fn ping_answers_pong_with_epoch_millis() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    c.send(json!({"type": "PING", "payload": {}}));
    let p = c.expect("PONG");
    let ts = p["timestamp"].as_u64().unwrap();
    assert!(ts >= before && ts < before + 5000, "{ts} vs {before}");
}

#[test]
fn other_paths_404_and_bad_header_401() {
    let gw = Gateway::start(&[]);
    let (status, _) = http(gw.addr, "GET", "/nope", &[], "");
    assert_eq!(status, 404);
    assert_eq!(
        Client::try_connect(gw.addr, &[("Authorization", "Bearer garbage")]).err(),
        Some(401)
    );
    let expired = token_with("alice", &[], &[], -3600);
    assert_eq!(
        Client::try_connect(gw.addr, &[("Authorization", &format!("Bearer {expired}"))]).err(),
        Some(401)
    );
}

#[test]
fn header_token_lets_hello_omit_the_token() {
    let gw = Gateway::start(&[]);
    let t = token("bob", &[], &[]);
    let mut c = Client::try_connect(gw.addr, &[("Authorization", &format!("Bearer {t}"))]).unwrap();
    c.send(json!({"type": "HELLO", "payload": {}}));
    assert_eq!(c.expect("HELLO_ACK")["userId"], "bob");
    // The scheme is case-insensitive (RFC 7235).
    let mut c = Client::try_connect(gw.addr, &[("Authorization", &format!("BEARER {t}"))]).unwrap();
    c.send(json!({"type": "HELLO", "payload": {}}));
    assert_eq!(c.expect("HELLO_ACK")["userId"], "bob");
}

#[test]
fn hello_without_any_token_is_4004() {
    let gw = Gateway::start(&[]);
    let mut c = Client::connect(&gw);
    c.send(json!({"type": "HELLO", "payload": {}}));
    assert_eq!(c.expect_close(), Some(4004));
}

#[test]
fn bad_expired_and_future_tokens_are_4004() {
    let gw = Gateway::start(&[]);
    for t in [
        "not-a-jwt".to_string(),
        token_with("alice", &[], &[], -3600),
        {
            // nbf one hour ahead
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"sub": "a", "exp": now + 7200, "nbf": now + 3600}),
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        },
        {
            // signed with another secret
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"sub": "a", "exp": 9_999_999_999u64}),
                &jsonwebtoken::EncodingKey::from_secret(b"other"),
            )
            .unwrap()
        },
        {
            // no exp
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"sub": "a"}),
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        },
        // alg none
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.".to_string(),
    ] {
        let mut c = Client::connect(&gw);
        c.send(json!({"type": "HELLO", "payload": {"token": t}}));
        assert_eq!(c.expect_close(), Some(4004), "token {t}");
    }
}

#[test]
fn token_with_audience_is_accepted_when_none_configured() {
    let gw = Gateway::start(&[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "a", "exp": now + 600, "aud": "web", "iss": "someone"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (_c, ack) = Client::hello(&gw, &t);
    assert_eq!(ack["userId"], "a");
}

#[test]
fn issuer_and_audience_checked_when_configured() {
    let gw = Gateway::start(&["--jwt-issuer", "xcord", "--jwt-audience", "web"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |c: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let good = sign(json!({"sub": "a", "exp": now + 600, "aud": "web", "iss": "xcord"}));
    let (_c, _) = Client::hello(&gw, &good);
    for bad in [
        sign(json!({"sub": "a", "exp": now + 600, "aud": "app", "iss": "xcord"})),
        sign(json!({"sub": "a", "exp": now + 600, "iss": "xcord"})),
        sign(json!({"sub": "a", "exp": now + 600, "aud": "web", "iss": "other"})),
    ] {
        let mut c = Client::connect(&gw);
        c.send(json!({"type": "HELLO", "payload": {"token": bad}}));
        assert_eq!(c.expect_close(), Some(4004));
    }
}

#[test]
fn command_before_hello_is_4003() {
    let gw = Gateway::start(&[]);
    for first in [
        json!({"type": "PING", "payload": {}}),
        json!({"type": "SUBSCRIBE", "payload": {"channels": ["live:x"]}}),
    ] {
        let mut c = Client::connect(&gw);
        c.send(first);
        assert_eq!(c.expect_close(), Some(4003));
    }
}

#[test]
fn second_hello_is_4005() {
    let gw = Gateway::start(&[]);
    let t = token("alice", &[], &[]);
    let (mut c, _) = Client::hello(&gw, &t);
    c.send(json!({"type": "HELLO", "payload": {"token": t}}));
    assert_eq!(c.expect_close(), Some(4005));
}

#[test]
fn not_json_and_binary_are_4002() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    c.send_text("{this is not json");
    assert_eq!(c.expect_close(), Some(4002));
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    c.ws.send(tungstenite::Message::binary(vec![1u8, 2, 3]))
        .unwrap();
    assert_eq!(c.expect_close(), Some(4002));
    // before HELLO too
    let mut c = Client::connect(&gw);
    c.send_text("nope");
    assert_eq!(c.expect_close(), Some(4002));
}

#[test]
fn oversized_frame_is_1009() {
    let gw = Gateway::start(&["--max-message-size", "1024"]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    let big = format!(
        r#"{{"type":"PING","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(2000)
    );
    c.send_text(&big);
    assert_eq!(c.expect_close(), Some(1009));
}

#[test]
fn bad_payload_and_unknown_type_keep_the_connection() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    c.send(json!({"type": "SUBSCRIBE", "payload": {"chans": []}}));
    let e = c.expect("ERROR");
    assert_eq!(e["code"], "BAD_PAYLOAD");
    assert!(e["message"].is_string());
    c.send(json!({"type": "FLY", "payload": {}}));
    assert_eq!(c.expect("ERROR")["code"], "UNKNOWN_TYPE");
    c.send(json!({"type": "SET_PRESENCE", "payload": {"status": "sleeping"}}));
    assert_eq!(c.expect("ERROR")["code"], "BAD_PAYLOAD");
    c.send(json!({"payload": {}}));
    assert_eq!(c.expect("ERROR")["code"], "BAD_PAYLOAD");
    c.send(json!({"type": "PING", "payload": {}}));
    c.expect("PONG");
}

#[test]
fn malformed_subscribe_gets_bad_payload_alone() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    c.send(json!({"type": "SUBSCRIBE", "payload": {"channels": "live:x"}}));
    assert_eq!(c.expect("ERROR")["code"], "BAD_PAYLOAD");
    c.send(json!({"type": "PING", "payload": {}}));
    c.expect("PONG"); // no SUBSCRIBED came in between
}

#[test]
fn hello_timeout_is_4009() {
    let gw = Gateway::start(&["--hello-timeout-ms", "300"]);
    let mut c = Client::connect(&gw);
    // A deadline only the configured 300 ms can meet: the 10 s default cannot.
    assert_eq!(c.expect_close_within(Duration::from_secs(3)), Some(4009));
}

#[test]
fn heartbeat_timeout_is_4009_and_any_frame_keeps_alive() {
    let gw = Gateway::start(&["--heartbeat-interval-ms", "200"]);
    let (mut quiet, _) = Client::hello(&gw, &token("quiet", &[], &[]));
    let (mut chatty, _) = Client::hello(&gw, &token("chatty", &[], &[]));
    let (mut pinger, _) = Client::hello(&gw, &token("pinger", &[], &[]));
    chatty.set_timeout(Duration::from_millis(50));
    pinger.set_timeout(Duration::from_millis(50));
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        chatty.send(json!({"type": "PING", "payload": {}}));
        // a WebSocket control frame counts too
        pinger
            .ws
            .send(tungstenite::Message::Ping(vec![1u8].into()))
            .unwrap();
        let _ = chatty.next();
        let _ = pinger.next();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(quiet.expect_close(), Some(4009));
    chatty.set_timeout(Duration::from_secs(5));
    chatty.send(json!({"type": "PING", "payload": {}}));
    loop {
        match chatty.next() {
            Got::Msg(v) if v["type"] == "PONG" => break,
            Got::Msg(_) => continue,
            other => panic!("chatty connection should be alive: {other:?}"),
        }
    }
    pinger.set_timeout(Duration::from_secs(5));
    pinger.send(json!({"type": "PING", "payload": {}}));
    loop {
        match pinger.next() {
            Got::Msg(v) if v["type"] == "PONG" => break,
            Got::Msg(_) => continue,
            other => panic!("pinger connection should be alive: {other:?}"),
        }
    }
}

#[test]
fn rate_limit_errors_then_closes_4008() {
    let gw = Gateway::start(&["--rate-limit", "5/60s"]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    for _ in 0..5 {
        c.send(json!({"type": "UNSUBSCRIBE", "payload": {"channels": ["live:x"]}}));
        c.expect("UNSUBSCRIBED");
    }
    // PING is not counted
    c.send(json!({"type": "PING", "payload": {}}));
    c.expect("PONG");
    for _ in 5..9 {
        c.send(json!({"type": "UNSUBSCRIBE", "payload": {"channels": ["live:x"]}}));
        assert_eq!(c.expect("ERROR")["code"], "RATE_LIMITED");
    }
    // the 10th command in the window is twice the limit
    c.send(json!({"type": "UNSUBSCRIBE", "payload": {"channels": ["live:x"]}}));
    assert_eq!(c.expect_close(), Some(4008));
}

#[test]
fn rate_limit_window_resets() {
    let gw = Gateway::start(&["--rate-limit", "2/1s"]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    for _ in 0..2 {
        c.send(json!({"type": "UNSUBSCRIBE", "payload": {"channels": ["live:x"]}}));
        c.expect("UNSUBSCRIBED");
    }
    c.send(json!({"type": "UNSUBSCRIBE", "payload": {"channels": ["live:x"]}}));
    assert_eq!(c.expect("ERROR")["code"], "RATE_LIMITED");
    std::thread::sleep(Duration::from_millis(1100));
    c.send(json!({"type": "UNSUBSCRIBE", "payload": {"channels": ["live:x"]}}));
    c.expect("UNSUBSCRIBED");
}

#[test]
fn client_close_is_recorded_with_its_code() {
    let gw = Gateway::start(&[]);
    let (c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    c.close();
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_exact("xcord_connections_closed_total{code=\"1000\"}")
        >= 1.0));
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_exact("xcord_connections{")
        == 0.0));
}

#[test]
fn deeply_nested_frame_is_4002_and_the_node_lives_on() {
    let gw = Gateway::start(&["--max-message-size", "256KiB"]);
    let (mut other, _) = Client::hello(&gw, &token("bystander", &[], &[]));
    let (mut c, _) = Client::hello(&gw, &token("nester", &[], &[]));
    let deep = format!(
        r#"{{"type":"SUBSCRIBE","payload":{{"channels":{}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    c.send_text(&deep);
    assert_eq!(c.expect_close(), Some(4002));
    other.send(json!({"type": "PING", "payload": {}}));
    other.expect("PONG");
}

/// A masked client frame (RFC 6455 §5.2), for writing a message in pieces.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The gateway keeps no frame codec for an idle connection and makes one per
/// read: a frame split over many TCP writes, a fragmented message whose parts
/// arrive apart with a control frame between them, and a WebSocket ping must all
/// still come out whole.
#[test]
fn frames_split_across_reads_and_fragmented_messages_arrive_whole() {
    use std::io::Write;
    use tungstenite::Message;
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &[], &[]));
    let ping = br#"{"type":"PING","payload":{}}"#;

    // One frame, one byte per write, each read by the gateway on its own.
    let whole = client_frame(0x1, true, ping);
    for b in &whole {
        c.ws.get_mut().write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    c.expect("PONG");

    // A fragmented text message: first part, a WebSocket ping, the rest.
    let (a, b) = ping.split_at(10);
    c.ws.get_mut()
        .write_all(&client_frame(0x1, false, a))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.ws.get_mut()
        .write_all(&client_frame(0x9, true, b"mid"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.ws.get_mut()
        .write_all(&client_frame(0x0, true, b))
        .unwrap();
    let mut saw_pong = false;
    loop {
        match c.ws.read().expect("read") {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"mid");
                saw_pong = true;
            }
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "PONG" {
                    break;
                }
            }
            _ => {}
        }
    }
    assert!(
        saw_pong,
        "the ping between fragments was answered before the message"
    );

    // A ping alone, idle before and after.
    std::thread::sleep(Duration::from_millis(50));
    c.ws.get_mut()
        .write_all(&client_frame(0x9, true, b"solo"))
        .unwrap();
    loop {
        if let Message::Pong(p) = c.ws.read().expect("read") {
            assert_eq!(&p[..], b"solo");
            break;
        }
    }
    c.send(json!({"type": "PING", "payload": {}}));
    c.expect("PONG");
}
