//! SPEC §8: resume (Discord's model), token refresh and expiry.

mod common;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Drop the connection with a TCP reset (SO_LINGER 0), as a crashed client would.
fn reset(c: Client) {
    let stream = c.ws.get_ref();
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
}

fn resume(gw: &Gateway, tok: &str, session: &str, seq: u64) -> Client {
    let mut c = Client::connect(gw);
    c.send(json!({"type": "RESUME", "payload": {"token": tok, "sessionId": session, "seq": seq}}));
    c
}

/// Which shard holds the only open connection (from the per-shard gauge).
fn shard_of_single_connection(gw: &Gateway) -> Option<usize> {
    let (_, body) = gw.admin_get("/metrics");
    body.lines()
        .filter(|l| l.starts_with("xcord_connections{shard=\""))
        .find(|l| l.ends_with(" 1"))
        .and_then(|l| l.split('"').nth(1))
        .and_then(|s| s.parse().ok())
}

#[test]
fn killed_mid_stream_resumes_with_exactly_the_missed_events_at_1000_per_second() {
    let redis = Redis::start();
    let gw = Gateway::start(&["--redis", &redis.url()]);
    let tok = token("rita", &[], &[]);
    let (mut c, ack) = Client::hello(&gw, &tok);
    let session = ack["sessionId"].as_str().unwrap().to_string();
    c.subscribe(&["live:stream"]);

    // 1000 events/s for 3 s, each numbered.
    let stop = Arc::new(AtomicBool::new(false));
    let url = redis.url();
    let stop2 = stop.clone();
    let publisher = std::thread::spawn(move || {
        let mut r = redis::Client::open(url).unwrap().get_connection().unwrap();
        let start = Instant::now();
        let mut k = 0u64;
        while k < 3000 && !stop2.load(Ordering::Relaxed) {
            let due = start + Duration::from_micros(k * 1000);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let body = json!({"type": "tick", "payload": {"k": k}}).to_string();
            let _: i64 = redis::cmd("PUBLISH")
                .arg("events:live:stream")
                .arg(body)
                .query(&mut r)
                .unwrap();
            k += 1;
        }
        k
    });

    let mut seen: Vec<u64> = vec![];
    let mut last_seq = 0;
    while seen.len() < 500 {
        let ev = c.expect_event();
        seen.push(ev["payload"]["payload"]["k"].as_u64().unwrap());
        last_seq = ev["seq"].as_u64().unwrap();
    }
    reset(c);
    std::thread::sleep(Duration::from_millis(300)); // events flow while the client is away
    let mut c = resume(&gw, &tok, &session, last_seq);
    let mut replayed_seen = 0;
    loop {
        match c.next() {
            Got::Msg(v) if v["type"] == "EVENT" => {
                replayed_seen += 1;
                let seq = v["seq"].as_u64().unwrap();
                assert!(seq > last_seq, "seq went back: {seq} <= {last_seq}");
                last_seq = seq;
                seen.push(v["payload"]["payload"]["k"].as_u64().unwrap());
            }
            Got::Msg(v) if v["type"] == "RESUMED" => {
                assert_eq!(v["payload"]["sessionId"], session.as_str());
                assert_eq!(v["payload"]["replayed"].as_u64().unwrap(), replayed_seen);
                break;
            }
            other => panic!("unexpected during replay: {other:?}"),
        }
    }
    assert!(
        replayed_seen >= 100,
        "only {replayed_seen} replayed for a 300 ms gap at 1000/s"
    );
    let published = publisher.join().unwrap();
    while (seen.len() as u64) < published {
        let ev = c.expect_event();
        let seq = ev["seq"].as_u64().unwrap();
        assert!(seq > last_seq);
        last_seq = seq;
        seen.push(ev["payload"]["payload"]["k"].as_u64().unwrap());
    }
    let expected: Vec<u64> = (0..published).collect();
    assert_eq!(
        seen, expected,
        "every event once, in order, across the seam"
    );
    c.expect_silence(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn resume_lands_on_another_shard() {
    let gw = Gateway::start(&["--shards", "2"]);
    let tok = token("sam", &[], &[]);
    let (mut c, ack) = Client::hello(&gw, &tok);
    let session = ack["sessionId"].as_str().unwrap().to_string();
    c.subscribe(&["live:s"]);
    assert!(eventually(Duration::from_secs(5), || {
        shard_of_single_connection(&gw).is_some()
    }));
    let first = shard_of_single_connection(&gw).unwrap();
    assert_eq!(gw.publish("live:s", "e", json!({"i": 0})), 202);
    let seq = c.expect_event()["seq"].as_u64().unwrap();
    reset(c);
    assert!(eventually(Duration::from_secs(5), || gw
        .metric("xcord_connections{")
        == 0.0));
    for i in 1..=3 {
        assert_eq!(gw.publish("live:s", "e", json!({"i": i})), 202);
    }
    // Reconnect until the kernel's SO_REUSEPORT hash puts us on the other shard.
    let mut attempt = 0;
    let c = loop {
        attempt += 1;
        assert!(attempt < 200, "never landed on the other shard");
        let c = Client::connect(&gw);
        assert!(eventually(Duration::from_secs(5), || {
            shard_of_single_connection(&gw).is_some()
        }));
        if shard_of_single_connection(&gw) != Some(first) {
            break c;
        }
        c.close();
        assert!(eventually(Duration::from_secs(5), || gw
            .metric("xcord_connections{")
            == 0.0));
    };
    let mut c = c;
    c.send(json!({"type": "RESUME", "payload": {"token": tok, "sessionId": session, "seq": seq}}));
    for i in 1..=3 {
        assert_eq!(c.expect_event()["payload"]["payload"]["i"], i);
    }
    assert_eq!(c.expect("RESUMED")["replayed"], 3);
    assert_eq!(gw.publish("live:s", "e", json!({"i": 4})), 202);
    assert_eq!(c.expect_event()["payload"]["payload"]["i"], 4);
}

#[test]
fn after_the_window_invalid_session_then_hello_on_the_same_connection() {
    let gw = Gateway::start(&["--resume-window-seconds", "1"]);
    let tok = token("tia", &[], &[]);
    let (c, ack) = Client::hello(&gw, &tok);
    let session = ack["sessionId"].as_str().unwrap().to_string();
    reset(c);
    std::thread::sleep(Duration::from_millis(2000));
    let mut c = resume(&gw, &tok, &session, 0);
    assert_eq!(c.expect("INVALID_SESSION"), json!({}));
    c.send(json!({"type": "HELLO", "payload": {"token": tok}}));
    assert_eq!(c.expect("HELLO_ACK")["userId"], "tia");
}

#[test]
fn foreign_or_unknown_session_is_invalid() {
    let gw = Gateway::start(&[]);
    let (c, ack) = Client::hello(&gw, &token("uma", &[], &[]));
    let session = ack["sessionId"].as_str().unwrap().to_string();
    reset(c);
    std::thread::sleep(Duration::from_millis(200));
    let mut other = resume(&gw, &token("vic", &[], &[]), &session, 0);
    assert_eq!(other.expect("INVALID_SESSION"), json!({}));
    let mut unknown = resume(&gw, &token("uma", &[], &[]), "no-such-session", 0);
    assert_eq!(unknown.expect("INVALID_SESSION"), json!({}));
    // the real owner still can
    let mut mine = resume(&gw, &token("uma", &[], &[]), &session, 0);
    loop {
        match mine.next() {
            Got::Msg(v) if v["type"] == "RESUMED" => break,
            Got::Msg(v) if v["type"] == "EVENT" => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_bad_token_on_resume_is_4004() {
    let gw = Gateway::start(&[]);
    let mut c = resume(&gw, "garbage", "x", 0);
    assert_eq!(c.expect_close(), Some(4004));
}

#[test]
fn a_clean_close_ends_the_session() {
    let gw = Gateway::start(&[]);
    let tok = token("wes", &[], &[]);
    let (c, ack) = Client::hello(&gw, &tok);
    let session = ack["sessionId"].as_str().unwrap().to_string();
    c.close();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = resume(&gw, &tok, &session, 0);
    assert_eq!(c.expect("INVALID_SESSION"), json!({}));
}

#[test]
fn replay_buffer_overflow_is_invalid_never_partial() {
    let gw = Gateway::start(&["--shards", "1", "--replay-buffer-bytes", "4096"]);
    let tok = token("xan", &[], &[]);
    let (mut c, ack) = Client::hello(&gw, &tok);
    let session = ack["sessionId"].as_str().unwrap().to_string();
    c.subscribe(&["live:o"]);
    assert_eq!(gw.publish("live:o", "e", json!({"i": 0})), 202);
    let seq = c.expect_event()["seq"].as_u64().unwrap();
    reset(c);
    std::thread::sleep(Duration::from_millis(200));
    for i in 1..=60 {
        assert_eq!(
            gw.publish("live:o", "e", json!({"i": i, "pad": "p".repeat(200)})),
            202
        );
    }
    let mut c = resume(&gw, &tok, &session, seq);
    assert_eq!(
        c.expect("INVALID_SESSION"),
        json!({}),
        "no EVENT may come before it"
    );
    c.send(json!({"type": "HELLO", "payload": {"token": tok}}));
    c.expect("HELLO_ACK");
}

#[test]
fn presence_does_not_flap_across_a_resume_and_ends_with_the_window() {
    let gw = Gateway::start(&["--resume-window-seconds", "2"]);
    let (mut obs, _) = Client::hello(&gw, &token("obs", &["s1"], &[]));
    obs.subscribe(&["server:s1"]);
    obs.skip_presence = false;
    let tok = token("yul", &["s1"], &[]);
    let (c, ack) = Client::hello(&gw, &tok);
    let session = ack["sessionId"].as_str().unwrap().to_string();
    let mut statuses = vec![];
    let mut collect = |obs: &mut Client, d: Duration| {
        let deadline = Instant::now() + d;
        obs.set_timeout(Duration::from_millis(100));
        while Instant::now() < deadline {
            if let Got::Msg(v) = obs.next() {
                if v["payload"]["payload"]["userId"] == "yul" {
                    statuses.push(
                        v["payload"]["payload"]["presence"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    );
                }
            }
        }
        statuses.clone()
    };
    assert_eq!(
        collect(&mut obs, Duration::from_millis(500)),
        vec!["online"]
    );
    reset(c);
    std::thread::sleep(Duration::from_millis(500));
    let mut c = resume(&gw, &tok, &session, 0);
    loop {
        match c.next() {
            Got::Msg(v) if v["type"] == "RESUMED" => break,
            Got::Msg(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        collect(&mut obs, Duration::from_millis(2500)),
        vec!["online"],
        "no offline flap across the resume"
    );
    reset(c);
    // not resumed this time: offline once the window ends
    assert_eq!(
        collect(&mut obs, Duration::from_millis(3500)),
        vec!["online", "offline"]
    );
}

#[test]
fn refresh_extends_and_expiry_closes_4004() {
    let gw = Gateway::start(&["--token-grace-seconds", "1"]);
    // expires in 2 s: without REFRESH the connection closes 4004 once exp + grace passes
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let lapsing_token = token_with("zed", &[], &[], 2);
    let exp_ms = xcord_gateway::auth::Verifier::hs256(SECRET.as_bytes(), None, None, 5)
        .verify(&lapsing_token)
        .unwrap()
        .exp
        * 1000;
    let (mut lapsing, _) = Client::hello(&gw, &lapsing_token);
    let (mut refreshed, _) = Client::hello(&gw, &token_with("zed", &[], &[], 2));
    refreshed
        .send(json!({"type": "REFRESH", "payload": {"token": token_with("zed", &[], &[], 3600)}}));
    let exp = refreshed.expect("REFRESHED")["exp"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(exp > now + 3000);
    // In order: the close comes once exp + grace (1 s) has passed, and well
    // before exp + grace + the 5 s leeway, which SPEC §8 says is not added (a
    // deadline for the close halfway to where the leeway would put it, not a
    // measure of speed).
    let deadline_ms = exp_ms + 1000 + 2500;
    let wait = Duration::from_millis(deadline_ms.saturating_sub(unix_ms()));
    assert_eq!(lapsing.expect_close_within(wait), Some(4004));
    assert!(
        unix_ms() >= exp_ms + 1000,
        "closed before exp + grace had passed"
    );
    refreshed.send(json!({"type": "PING", "payload": {}}));
    refreshed.expect("PONG");
}

#[test]
fn refresh_after_expiry_within_grace_works() {
    let gw = Gateway::start(&["--token-grace-seconds", "10"]);
    let (mut c, _) = Client::hello(&gw, &token_with("amy", &[], &[], 1));
    std::thread::sleep(Duration::from_millis(2500)); // past exp, inside the grace
    c.send(json!({"type": "REFRESH", "payload": {"token": token_with("amy", &[], &[], 600)}}));
    c.expect("REFRESHED");
}

#[test]
fn refresh_with_another_users_or_an_expired_token_is_4004() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("bea", &[], &[]));
    c.send(json!({"type": "REFRESH", "payload": {"token": token("cal", &[], &[])}}));
    assert_eq!(c.expect_close(), Some(4004));
    let (mut c, _) = Client::hello(&gw, &token("bea", &[], &[]));
    c.send(json!({"type": "REFRESH", "payload": {"token": token_with("bea", &[], &[], -60)}}));
    assert_eq!(c.expect_close(), Some(4004));
}

/// SPEC §8 replays "the events it would have received": nothing older than the
/// session, nor older than a subscription on that subscription's channel — even
/// when the client, having seen no event, resumes from `seq 0`.
#[test]
fn a_resume_from_zero_replays_nothing_older_than_the_session_or_the_subscription() {
    let gw = Gateway::start(&[]);
    let tok = token("pia", &[], &[]);
    // Another session of the same user sees a notification (seq > 0) first.
    let (mut a, _) = Client::hello(&gw, &tok);
    a.subscribe(&["live:x"]);
    assert_eq!(
        gw.publish("user:pia:notifications", "old.notification", json!({})),
        202
    );
    assert_eq!(gw.publish("live:x", "old.live", json!({})), 202);
    assert_eq!(a.expect_event()["payload"]["event"], "old.notification");
    assert_eq!(a.expect_event()["payload"]["event"], "old.live");

    // A new session of the same user, subscribed to live:x after those events,
    // sees nothing, and its connection is reset.
    let (mut b, ack) = Client::hello(&gw, &tok);
    let session = ack["sessionId"].as_str().unwrap().to_string();
    b.subscribe(&["live:x"]);
    b.expect_silence(Duration::from_millis(200));
    reset(b);
    std::thread::sleep(Duration::from_millis(200));
    // What happens while it is away is replayed; what happened before it, is not.
    assert_eq!(gw.publish("live:x", "while.away", json!({})), 202);
    std::thread::sleep(Duration::from_millis(100));

    let mut c = resume(&gw, &tok, &session, 0);
    assert_eq!(c.expect_event()["payload"]["event"], "while.away");
    let r = c.expect("RESUMED");
    assert_eq!(r["replayed"], 1, "{r}");
    drop(a);
}
