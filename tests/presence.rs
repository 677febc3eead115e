//! SPEC §6 and §7's last bullet: presence, typing, several nodes on one Redis, and
//! surviving a Redis restart. Real redis-server, real gateway processes.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Read events until one named `event` arrives (others are skipped); returns its payload.
fn wait_event(c: &mut Client, event: &str, within: Duration) -> Value {
    wait_event_by(c, event, None, within)
}

/// The next `event` whose payload's userId is `user`.
fn wait_presence(c: &mut Client, user: &str, within: Duration) -> Value {
    wait_event_by(c, "server.member.presence", Some(user), within)
}

fn wait_event_by(c: &mut Client, event: &str, user: Option<&str>, within: Duration) -> Value {
    c.skip_presence = false;
    let deadline = std::time::Instant::now() + within;
    c.set_timeout(Duration::from_millis(200));
    let mut seen = vec![];
    while std::time::Instant::now() < deadline {
        if let Got::Msg(v) = c.next() {
            seen.push(v.to_string());
            if v["type"] == "EVENT"
                && v["payload"]["event"] == event
                && user.is_none_or(|u| v["payload"]["payload"]["userId"] == u)
            {
                c.set_timeout(Duration::from_secs(10));
                c.skip_presence = true;
                return v["payload"]["payload"].clone();
            }
        }
    }
    panic!("no {event} within {within:?}; saw {seen:?}");
}

/// Presence events about `user` seen within `d` (other events skipped).
fn presence_events(c: &mut Client, user: &str, d: Duration) -> Vec<String> {
    c.skip_presence = false;
    let deadline = std::time::Instant::now() + d;
    let mut out = vec![];
    c.set_timeout(Duration::from_millis(100));
    while std::time::Instant::now() < deadline {
        if let Got::Msg(v) = c.next() {
            if v["payload"]["event"] == "server.member.presence"
                && v["payload"]["payload"]["userId"] == user
            {
                out.push(
                    v["payload"]["payload"]["presence"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    c.set_timeout(Duration::from_secs(10));
    c.skip_presence = true;
    out
}

fn hget(r: &Redis, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(&mut r.conn().unwrap())
        .unwrap()
}

fn sismember(r: &Redis, key: &str, m: &str) -> bool {
    redis::cmd("SISMEMBER")
        .arg(key)
        .arg(m)
        .query(&mut r.conn().unwrap())
        .unwrap()
}

fn exists(r: &Redis, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query(&mut r.conn().unwrap())
        .unwrap()
}

#[test]
fn online_at_first_session_anywhere_offline_at_the_last() {
    let redis = Redis::start();
    let a = Gateway::start(&["--redis", &redis.url()]);
    let b = Gateway::start(&["--redis", &redis.url()]);
    let (mut obs, _) = Client::hello(&a, &token("obs", &["s1"], &[]));
    obs.subscribe(&["server:s1"]);

    let (mut u_a, _) = Client::hello(&a, &token("u", &["s1"], &[]));
    assert_eq!(
        wait_presence(&mut obs, "u", Duration::from_secs(5)),
        json!({"serverId": "s1", "userId": "u", "presence": "online"})
    );
    assert_eq!(
        wait_event(&mut u_a, "user.presence", Duration::from_secs(5)),
        json!({"userId": "u", "presence": "online"})
    );
    assert_eq!(
        hget(&redis, "presence:u", "status").as_deref(),
        Some("online")
    );
    assert!(hget(&redis, "presence:u", "last_seen").is_some());
    assert!(exists(&redis, "presence:u:alive"));
    assert!(sismember(&redis, "server:s1:online", "u"));

    let (u_b, _) = Client::hello(&b, &token("u", &["s1"], &[]));
    u_a.close();
    // a second session on another node keeps the user online: no event at all
    assert_eq!(
        presence_events(&mut obs, "u", Duration::from_millis(800)),
        Vec::<String>::new()
    );
    assert_eq!(
        hget(&redis, "presence:u", "status").as_deref(),
        Some("online")
    );
    u_b.close();
    assert_eq!(
        wait_presence(&mut obs, "u", Duration::from_secs(5))["presence"],
        "offline"
    );
    assert_eq!(
        hget(&redis, "presence:u", "status").as_deref(),
        Some("offline")
    );
    assert!(!sismember(&redis, "server:s1:online", "u"));
    assert!(!exists(&redis, "presence:u:alive"));
}

#[test]
fn servers_from_the_redis_set_count_too() {
    let redis = Redis::start();
    let _: () = redis::cmd("SADD")
        .arg("user:v:servers")
        .arg("s7")
        .query(&mut redis.conn().unwrap())
        .unwrap();
    let gw = Gateway::start(&["--redis", &redis.url()]);
    let (mut obs, _) = Client::hello(&gw, &token("obs", &["s7"], &[]));
    obs.subscribe(&["server:s7"]);
    let (_v, _) = Client::hello(&gw, &token("v", &[], &[]));
    assert_eq!(
        wait_presence(&mut obs, "v", Duration::from_secs(5))["userId"],
        "v"
    );
    assert!(sismember(&redis, "server:s7:online", "v"));
}

#[test]
fn set_presence_reaches_a_subscriber_on_another_node() {
    let redis = Redis::start();
    let a = Gateway::start(&["--redis", &redis.url()]);
    let b = Gateway::start(&["--redis", &redis.url()]);
    let (mut obs, _) = Client::hello(&b, &token("obs", &["s1"], &[]));
    obs.subscribe(&["server:s1"]);
    let (mut u, _) = Client::hello(&a, &token("u", &["s1"], &[]));
    assert_eq!(
        wait_presence(&mut obs, "u", Duration::from_secs(5))["presence"],
        "online"
    );
    u.send(json!({"type": "SET_PRESENCE", "payload": {"status": "dnd"}}));
    assert_eq!(
        wait_presence(&mut obs, "u", Duration::from_secs(5))["presence"],
        "dnd"
    );
    assert_eq!(
        wait_event(&mut u, "user.presence", Duration::from_secs(5))["presence"],
        "online"
    );
    assert_eq!(
        wait_event(&mut u, "user.presence", Duration::from_secs(5))["presence"],
        "dnd"
    );
    assert_eq!(hget(&redis, "presence:u", "status").as_deref(), Some("dnd"));
}

#[test]
fn presence_on_the_embedded_bus() {
    let gw = Gateway::start(&[]);
    let (mut obs, _) = Client::hello(&gw, &token("obs", &["s1"], &[]));
    obs.subscribe(&["server:s1"]);
    let (u1, _) = Client::hello(&gw, &token("u", &["s1"], &[]));
    let (mut u2, _) = Client::hello(&gw, &token("u", &["s1"], &[]));
    u2.send(json!({"type": "SET_PRESENCE", "payload": {"status": "idle"}}));
    u1.close();
    u2.close();
    assert_eq!(
        presence_events(&mut obs, "u", Duration::from_millis(1500)),
        vec!["online", "idle", "offline"]
    );
}

#[test]
fn a_killed_node_leaves_no_ghost() {
    let redis = Redis::start();
    let fast = [
        "--presence-ttl-seconds",
        "2",
        "--presence-sweep-seconds",
        "1",
    ];
    let url = redis.url();
    let mut args_a = vec!["--redis", url.as_str()];
    args_a.extend(fast);
    let mut args_b = vec!["--redis", url.as_str()];
    args_b.extend(fast);
    let a = Gateway::start(&args_a);
    let mut b = Gateway::start(&args_b);
    let (mut obs, _) = Client::hello(&a, &token("obs", &["s1"], &[]));
    obs.subscribe(&["server:s1"]);
    let (_ghost, _) = Client::hello(&b, &token("ghost", &["s1"], &[]));
    assert_eq!(
        wait_presence(&mut obs, "ghost", Duration::from_secs(5))["presence"],
        "online"
    );
    // alive keys are refreshed while the node lives: after 3 TTLs the user is still online
    assert_eq!(
        presence_events(&mut obs, "ghost", Duration::from_secs(5)),
        Vec::<String>::new()
    );
    b.kill9();
    let t = std::time::Instant::now();
    let p = wait_presence(&mut obs, "ghost", Duration::from_secs(8));
    assert_eq!(
        p,
        json!({"serverId": "s1", "userId": "ghost", "presence": "offline"})
    );
    assert!(
        t.elapsed() <= Duration::from_secs(2 + 1 + 2),
        "offline took {:?}",
        t.elapsed()
    );
    assert_eq!(
        hget(&redis, "presence:ghost", "status").as_deref(),
        Some("offline")
    );
    assert!(!sismember(&redis, "server:s1:online", "ghost"));
    // exactly one broadcast
    assert_eq!(
        presence_events(&mut obs, "ghost", Duration::from_secs(2)),
        Vec::<String>::new()
    );
}

#[test]
fn a_starting_node_sweeps_at_once() {
    let redis = Redis::start();
    // A ghost left by a node that no longer exists.
    let mut r = redis.conn().unwrap();
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("presence:old")
        .arg("status")
        .arg("online")
        .arg("last_seen")
        .arg(1)
        .ignore()
        .cmd("HSET")
        .arg("presence:old:sessions")
        .arg("deadnode")
        .arg(1)
        .ignore()
        .cmd("SADD")
        .arg("presence:old:servers")
        .arg("s1")
        .ignore()
        .cmd("SADD")
        .arg("server:s1:online")
        .arg("old")
        .ignore()
        .cmd("ZADD")
        .arg("xcord:presence:expiry")
        .arg(1)
        .arg("old")
        .ignore()
        .query(&mut r)
        .unwrap();
    let _gw = Gateway::start(&["--redis", &redis.url(), "--presence-sweep-seconds", "60"]);
    assert!(eventually(Duration::from_secs(5), || hget(
        &redis,
        "presence:old",
        "status"
    )
    .as_deref()
        == Some("offline")));
    assert!(!sismember(&redis, "server:s1:online", "old"));
}

#[test]
fn typing_both_kinds_forbidden_invalid_and_auto_stop() {
    let gw = Gateway::start(&[]);
    let (mut a, _) = Client::hello(&gw, &token("ann", &["s1"], &["d1"]));
    let (mut b, _) = Client::hello(&gw, &token("bob", &["s1"], &["d1"]));
    b.subscribe(&["dm:d1", "server:s1:channel:c1"]);
    a.send(json!({"type": "TYPING_START", "payload": {"channelId": "dm:d1"}}));
    assert_eq!(
        wait_event(&mut b, "dm.typing", Duration::from_secs(5)),
        json!({"conversationId": "d1", "userId": "ann", "isTyping": true})
    );
    a.send(json!({"type": "TYPING_STOP", "payload": {"channelId": "dm:d1"}}));
    assert_eq!(
        wait_event(&mut b, "dm.typing", Duration::from_secs(5))["isTyping"],
        false
    );
    a.send(json!({"type": "TYPING_START", "payload": {"channelId": "server:s1:channel:c1"}}));
    assert_eq!(
        wait_event(&mut b, "server.typing", Duration::from_secs(5)),
        json!({"serverId": "s1", "channelId": "c1", "userId": "ann", "isTyping": true})
    );
    a.send(json!({"type": "TYPING_START", "payload": {"channelId": "dm:d2"}}));
    assert_eq!(a.expect("ERROR")["code"], "FORBIDDEN");
    a.send(json!({"type": "TYPING_START", "payload": {"channelId": "server:s2:channel:c"}}));
    assert_eq!(a.expect("ERROR")["code"], "FORBIDDEN");
    a.send(json!({"type": "TYPING_START", "payload": {"channelId": "live:x:chat"}}));
    assert_eq!(a.expect("ERROR")["code"], "INVALID_CHANNEL");
    // not repeated within 10 s: it ends by itself
    let t = std::time::Instant::now();
    let p = wait_event(&mut b, "server.typing", Duration::from_secs(13));
    assert_eq!(p["isTyping"], false);
    assert!(
        t.elapsed() >= Duration::from_secs(8),
        "stopped too early: {:?}",
        t.elapsed()
    );
}

#[test]
fn typing_ends_with_the_session() {
    let gw = Gateway::start(&[]);
    let (mut a, _) = Client::hello(&gw, &token("ann", &[], &["d1"]));
    let (mut b, _) = Client::hello(&gw, &token("bob", &[], &["d1"]));
    b.subscribe(&["dm:d1"]);
    a.send(json!({"type": "TYPING_START", "payload": {"channelId": "dm:d1"}}));
    assert_eq!(
        wait_event(&mut b, "dm.typing", Duration::from_secs(5))["isTyping"],
        true
    );
    a.close();
    assert_eq!(
        wait_event(&mut b, "dm.typing", Duration::from_secs(5))["isTyping"],
        false
    );
}

#[test]
fn typing_is_rate_limited() {
    let gw = Gateway::start(&["--rate-limit", "3/60s"]);
    let (mut a, _) = Client::hello(&gw, &token("ann", &[], &["d1"]));
    for _ in 0..3 {
        a.send(json!({"type": "TYPING_START", "payload": {"channelId": "dm:d1"}}));
    }
    a.send(json!({"type": "TYPING_START", "payload": {"channelId": "dm:d1"}}));
    // a's own deliveries don't include dm:d1 (not subscribed): the next frame is the ERROR
    assert_eq!(a.expect("ERROR")["code"], "RATE_LIMITED");
}

#[test]
fn three_nodes_one_publish_each_subscriber_once() {
    let redis = Redis::start();
    let nodes: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&["--redis", &redis.url()]))
        .collect();
    let mut clients = vec![];
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..3 {
            let (mut c, _) = Client::hello(n, &token(&format!("x{i}{j}"), &[], &[]));
            c.subscribe(&["live:everywhere", "live:everywhere:chat"]);
            clients.push(c);
        }
    }
    for k in 0..10 {
        redis.publish("live:everywhere:chat", "m", json!({"k": k}));
    }
    for c in clients.iter_mut() {
        for k in 0..10 {
            assert_eq!(c.expect_event()["payload"]["payload"]["k"], k);
        }
        c.expect_silence(Duration::from_millis(50));
    }
}

#[test]
fn redis_restart_keeps_connections_and_restores_presence() {
    let mut redis = Redis::start();
    let port = redis.port;
    let gw = Gateway::start(&["--redis", &redis.url(), "--presence-ttl-seconds", "3"]);
    let (mut u, _) = Client::hello(&gw, &token("w", &["s1"], &[]));
    u.subscribe(&["live:after"]);
    assert!(eventually(Duration::from_secs(5), || hget(
        &redis,
        "presence:w",
        "status"
    )
    .as_deref()
        == Some("online")));
    redis.stop();
    std::thread::sleep(Duration::from_secs(2));
    u.send(json!({"type": "PING", "payload": {}}));
    // events published by the node while Redis is down are counted, not lost silently
    let redis = Redis::start_on(port); // comes back empty
    assert!(eventually(Duration::from_secs(15), || gw
        .admin_get("/readyz")
        .0
        == 200));
    assert!(eventually(Duration::from_secs(10), || hget(
        &redis,
        "presence:w",
        "status"
    )
    .as_deref()
        == Some("online")
        && exists(&redis, "presence:w:alive")
        && sismember(&redis, "server:s1:online", "w")));
    redis.publish("live:after", "back", json!({}));
    assert_eq!(
        wait_event(&mut u, "back", Duration::from_secs(5)),
        json!({})
    );
}
