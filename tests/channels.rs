//! SPEC §4 and §5: who may subscribe, segment boundaries, exactly-once, order, the
//! SUBSCRIBED promise — on the embedded bus and on Redis.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

fn published_seen(c: &mut Client, channel: &str) -> serde_json::Value {
    let ev = c.expect_event();
    assert_eq!(ev["payload"]["channel"], channel, "{ev}");
    ev
}

#[test]
fn authorization_table_from_claims() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("alice", &["s1"], &["d1"]));
    let granted = c.subscribe(&[
        "user:alice:notifications",
        "dm:d1",
        "server:s1",
        "server:s1:channel:c9",
        "live:stream7:chat",
        "server:s1:*",
    ]);
    assert_eq!(
        granted["channels"],
        json!([
            "user:alice:notifications",
            "dm:d1",
            "server:s1",
            "server:s1:channel:c9",
            "live:stream7:chat",
            "server:s1:*"
        ])
    );
    // refused: one ERROR per channel, then SUBSCRIBED listing only the granted
    c.send(json!({"type": "SUBSCRIBE", "payload": {"channels": [
        "user:bob", "dm:d2", "server:s2:channel:x", "foo:bar", "server:*", "live:ok"
    ]}}));
    let mut errors = vec![];
    for _ in 0..5 {
        let e = c.expect("ERROR");
        errors.push((
            e["code"].as_str().unwrap().to_string(),
            e["channel"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(
        errors,
        vec![
            ("FORBIDDEN".into(), "user:bob".into()),
            ("FORBIDDEN".into(), "dm:d2".into()),
            ("FORBIDDEN".into(), "server:s2:channel:x".into()),
            ("INVALID_CHANNEL".into(), "foo:bar".into()),
            ("INVALID_CHANNEL".into(), "server:*".into()),
        ]
    );
    assert_eq!(c.expect("SUBSCRIBED")["channels"], json!(["live:ok"]));
    // an all-refused request still gets an (empty) SUBSCRIBED
    c.send(json!({"type": "SUBSCRIBE", "payload": {"channels": ["dm:zzz"]}}));
    assert_eq!(c.expect("ERROR")["code"], "FORBIDDEN");
    assert_eq!(c.expect("SUBSCRIBED")["channels"], json!([]));
}

#[test]
fn authorization_from_redis_sets_read_at_subscribe_time() {
    let redis = Redis::start();
    let gw = Gateway::start(&["--redis", &redis.url()]);
    let (mut c, _) = Client::hello(&gw, &token("carol", &[], &[]));
    c.send(json!({"type": "SUBSCRIBE", "payload": {"channels": ["server:s9", "dm:d9"]}}));
    assert_eq!(c.expect("ERROR")["code"], "FORBIDDEN");
    assert_eq!(c.expect("ERROR")["code"], "FORBIDDEN");
    assert_eq!(c.expect("SUBSCRIBED")["channels"], json!([]));
    // the user joins a server and a DM: no new token, no reconnect
    let mut r = redis.conn().unwrap();
    let _: () = redis::cmd("SADD")
        .arg("user:carol:servers")
        .arg("s9")
        .query(&mut r)
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg("user:carol:dms")
        .arg("d9")
        .query(&mut r)
        .unwrap();
    assert_eq!(
        c.subscribe(&["server:s9:channel:general", "dm:d9"])["channels"],
        json!(["server:s9:channel:general", "dm:d9"])
    );
    redis.publish(
        "server:s9:channel:general",
        "server.message.new",
        json!({"n": 1}),
    );
    published_seen(&mut c, "server:s9:channel:general");
}

#[test]
fn automatic_user_subscription_after_hello() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("dave", &[], &[]));
    assert_eq!(
        gw.publish(
            "user:dave:notifications",
            "notification.new",
            json!({"id": 1})
        ),
        202
    );
    let ev = published_seen(&mut c, "user:dave:notifications");
    assert_eq!(ev["payload"]["event"], "notification.new");
    assert_eq!(ev["payload"]["payload"], json!({"id": 1}));
    assert!(ev["seq"].as_u64().unwrap() >= 1);
    // another user's tree is not delivered
    assert_eq!(
        gw.publish("user:dav:notifications", "notification.new", json!({})),
        202
    );
    assert_eq!(gw.publish("user:dave2", "notification.new", json!({})), 202);
    c.expect_silence(Duration::from_millis(300));
}

#[test]
fn segment_boundaries_not_string_prefixes() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("erin", &["srv_1", "srv_10"], &[]));
    c.subscribe(&["server:srv_1"]);
    assert_eq!(gw.publish("server:srv_10", "x", json!({})), 202);
    assert_eq!(gw.publish("server:srv_10:channel:a", "x", json!({})), 202);
    assert_eq!(gw.publish("server:srv_1:channel:c9", "hit", json!({})), 202);
    let ev = published_seen(&mut c, "server:srv_1:channel:c9");
    assert_eq!(ev["payload"]["event"], "hit");
    assert_eq!(gw.publish("server:srv_1", "hit2", json!({})), 202);
    assert_eq!(
        published_seen(&mut c, "server:srv_1")["payload"]["event"],
        "hit2"
    );
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn overlapping_subscriptions_deliver_once() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("fay", &["s1"], &[]));
    c.subscribe(&[
        "server:s1",
        "server:s1:channel:c",
        "server:s1:*",
        "user:fay:notifications",
    ]);
    for i in 0..20 {
        assert_eq!(gw.publish("server:s1:channel:c", "m", json!({"i": i})), 202);
    }
    assert_eq!(gw.publish("user:fay:notifications", "n", json!({})), 202);
    for i in 0..20 {
        assert_eq!(c.expect_event()["payload"]["payload"]["i"], i);
    }
    assert_eq!(c.expect_event()["payload"]["event"], "n");
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn unsubscribe_stops_delivery_but_keeps_the_user_tree() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = Client::hello(&gw, &token("gus", &[], &[]));
    c.subscribe(&["live:a:chat"]);
    c.send(json!({"type": "UNSUBSCRIBE", "payload": {"channels": ["live:a:chat", "user:gus"]}}));
    assert_eq!(
        c.expect("UNSUBSCRIBED")["channels"],
        json!(["live:a:chat", "user:gus"])
    );
    assert_eq!(gw.publish("live:a:chat", "m", json!({})), 202);
    assert_eq!(gw.publish("user:gus:notifications", "n", json!({})), 202);
    assert_eq!(c.expect_event()["payload"]["event"], "n");
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn max_subscriptions_is_enforced_without_counting_the_user_tree() {
    let gw = Gateway::start(&["--max-subscriptions", "2"]);
    let (mut c, _) = Client::hello(&gw, &token("hal", &[], &[]));
    c.send(json!({"type": "SUBSCRIBE", "payload": {"channels": ["live:a", "live:b", "live:c", "user:hal:x"]}}));
    let e = c.expect("ERROR");
    assert_eq!(e["code"], "TOO_MANY_SUBSCRIPTIONS");
    assert_eq!(e["channel"], "live:c");
    let e = c.expect("ERROR");
    assert_eq!(e["code"], "TOO_MANY_SUBSCRIPTIONS");
    assert_eq!(
        c.expect("SUBSCRIBED")["channels"],
        json!(["live:a", "live:b"])
    );
    // re-subscribing to a held channel is fine; unsubscribing frees a slot
    assert_eq!(c.subscribe(&["live:a"])["channels"], json!(["live:a"]));
    c.send(json!({"type": "UNSUBSCRIBE", "payload": {"channels": ["live:a"]}}));
    c.expect("UNSUBSCRIBED");
    assert_eq!(c.subscribe(&["live:c"])["channels"], json!(["live:c"]));
}

#[test]
fn a_thousand_rapid_events_arrive_in_order_with_growing_seq() {
    let redis = Redis::start();
    let gw = Gateway::start(&["--redis", &redis.url()]);
    let (mut c, _) = Client::hello(&gw, &token("ivy", &[], &[]));
    c.subscribe(&["live:fast"]);
    let mut r = redis.conn().unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("PUBLISH")
            .arg("events:live:fast")
            .arg(json!({"type": "tick", "payload": {"i": i}}).to_string())
            .ignore();
    }
    let _: () = pipe.query(&mut r).unwrap();
    let mut last_seq = 0;
    for i in 0..1000 {
        let ev = c.expect_event();
        assert_eq!(
            ev["payload"]["payload"]["i"], i,
            "event {i} out of order: {ev}"
        );
        let seq = ev["seq"].as_u64().unwrap();
        assert!(seq > last_seq);
        last_seq = seq;
    }
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn subscribed_is_a_promise_on_every_shard() {
    // Publish right after reading SUBSCRIBED, many times, on both buses: nothing is lost.
    let redis = Redis::start();
    for bus in [vec![], vec!["--redis".to_string(), redis.url()]] {
        let args: Vec<&str> = bus.iter().map(|s| s.as_str()).collect();
        let gw = Gateway::start(&args);
        for i in 0..40 {
            let (mut c, _) = Client::hello(&gw, &token("jay", &[], &[]));
            let ch = format!("live:promise{i}");
            c.subscribe(&[&ch]);
            if bus.is_empty() {
                assert_eq!(gw.publish(&ch, "p", json!({"i": i})), 202);
            } else {
                redis.publish(&ch, "p", json!({"i": i}));
            }
            assert_eq!(c.expect_event()["payload"]["payload"]["i"], i);
        }
    }
}

#[test]
fn bad_events_are_dropped_and_counted_without_disturbing_the_next() {
    let redis = Redis::start();
    let gw = Gateway::start(&["--redis", &redis.url()]);
    let (mut c, _) = Client::hello(&gw, &token("kim", &[], &[]));
    c.subscribe(&["live:x"]);
    redis.publish_raw("live:x", "{not json");
    redis.publish_raw("live:x", r#"{"payload":{"no":"type"}}"#);
    redis.publish_raw("live:x", r#"{"type":42}"#);
    redis.publish_raw("live:x", r#"["a", {}]"#);
    // deep enough to overflow a parser's stack: dropped, and the gateway lives on
    redis.publish_raw(
        "live:x",
        &format!(
            r#"{{"type":"t","payload":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    );
    redis.publish("live:x", "good", json!({"ok": true}));
    let ev = c.expect_event();
    assert_eq!(ev["payload"]["event"], "good");
    assert_eq!(ev["payload"]["payload"], json!({"ok": true}));
    assert!(eventually(Duration::from_secs(5), || gw
        .metric("xcord_events_dropped_total{reason=\"bad_json\"}")
        == 3.0
        && gw.metric("xcord_events_dropped_total{reason=\"no_type\"}")
            == 2.0));
    assert!(gw.metric("xcord_events_received_total") >= 5.0);
}

#[test]
fn the_same_event_has_the_same_bytes_for_every_subscriber() {
    let gw = Gateway::start(&[]);
    let mut clients: Vec<Client> = (0..6)
        .map(|i| Client::hello(&gw, &token(&format!("u{i}"), &[], &[])).0)
        .collect();
    for c in clients.iter_mut() {
        c.subscribe(&["live:same"]);
    }
    assert_eq!(
        gw.publish("live:same", "e", json!({"k": [1, 2, {"z": null}]})),
        202
    );
    let mut texts = vec![];
    for c in clients.iter_mut() {
        // The raw text, skipping the session's own presence event if it is late.
        loop {
            match c.ws.read().unwrap() {
                tungstenite::Message::Text(t)
                    if t.as_str().contains(r#""event":"user.presence""#) =>
                {
                    continue
                }
                tungstenite::Message::Text(t) => {
                    texts.push(t.to_string());
                    break;
                }
                m => panic!("{m:?}"),
            }
        }
    }
    assert!(texts.windows(2).all(|w| w[0] == w[1]), "{texts:?}");
    let v: serde_json::Value = serde_json::from_str(&texts[0]).unwrap();
    assert_eq!(v["type"], "EVENT");
    assert_eq!(v["payload"]["payload"], json!({"k": [1, 2, {"z": null}]}));
}
