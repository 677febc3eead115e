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

/// Every body any node publishes on the bus channels `events:{channel}` from the
/// moment this returns: a watcher that sees each node's broadcasts, however many
/// nodes make them. The listener ends when Redis stops.
fn bus_tap(r: &Redis, channels: &[&str]) -> std::sync::mpsc::Receiver<Value> {
    let mut con = r.conn().unwrap();
    let names: Vec<String> = channels.iter().map(|c| format!("events:{c}")).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ps = con.as_pubsub();
        for n in &names {
            ps.subscribe(n).unwrap(); // returns once Redis confirmed it
        }
        let _ = ready_tx.send(());
        while let Ok(m) = ps.get_message() {
            let body: Value = serde_json::from_slice(m.get_payload_bytes()).unwrap_or(Value::Null);
            if tx.send(body).is_err() {
                return;
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the bus tap subscribed");
    rx
}

/// How many bodies seen by a [`bus_tap`] are the `event` saying `user` went `presence`.
fn count_presence(seen: &[Value], event: &str, user: &str, presence: &str) -> usize {
    seen.iter()
        .filter(|b| {
            b["type"] == event
                && b["payload"]["userId"] == user
                && b["payload"]["presence"] == presence
        })
        .count()
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
    // The online sets follow the status (another slot on a cluster): soon after.
    assert!(eventually(Duration::from_secs(5), || !sismember(
        &redis,
        "server:s1:online",
        "u"
    )));
    assert!(eventually(Duration::from_secs(5), || !exists(
        &redis,
        "presence:u:alive"
    )));
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

/// A node on `redis` with a `ttl_secs` presence TTL, sweeping every `sweep_secs`.
fn presence_node(redis: &Redis, ttl_secs: u64, sweep_secs: u64) -> Gateway {
    Gateway::start(&[
        "--redis",
        &redis.url(),
        "--presence-ttl-seconds",
        &ttl_secs.to_string(),
        "--presence-sweep-seconds",
        &sweep_secs.to_string(),
    ])
}

#[test]
fn a_killed_node_leaves_no_ghost_and_exactly_one_live_node_claims_it() {
    let redis = Redis::start();
    // Node A holds the user; B and C both sweep every second: two live sweepers,
    // so a claim that is not atomic across nodes would broadcast twice. The TTL
    // is long next to the sweep and to whole-second timestamps, so "offline
    // within TTL + sweep interval" tells a timely claim from one a full TTL late.
    const TTL: u64 = 6;
    const SWEEP: u64 = 1;
    let mut a = presence_node(&redis, TTL, SWEEP);
    let b = presence_node(&redis, TTL, SWEEP);
    let c = presence_node(&redis, TTL, SWEEP);
    let (mut obs_b, _) = Client::hello(&b, &token("obs_b", &["s1"], &[]));
    obs_b.subscribe(&["server:s1"]);
    let (mut obs_c, _) = Client::hello(&c, &token("obs_c", &["s1"], &[]));
    obs_c.subscribe(&["server:s1"]);
    let (_ghost, _) = Client::hello(&a, &token("ghost", &["s1"], &[]));
    for obs in [&mut obs_b, &mut obs_c] {
        assert_eq!(
            wait_presence(obs, "ghost", Duration::from_secs(5))["presence"],
            "online"
        );
    }
    // alive keys are refreshed while the node lives: after more than a TTL of B
    // and C sweeping, the user is still online
    assert_eq!(
        presence_events(&mut obs_b, "ghost", Duration::from_secs(TTL + 1)),
        Vec::<String>::new()
    );
    assert_eq!(
        presence_events(&mut obs_c, "ghost", Duration::from_millis(300)),
        Vec::<String>::new()
    );
    let tap = bus_tap(&redis, &["server:s1", "user:ghost:presence"]);
    a.kill9();
    // offline within TTL + sweep interval of the death (SPEC §6), plus a 2 s
    // margin, seen on both live nodes
    let within = Duration::from_secs(TTL + SWEEP + 2);
    for obs in [&mut obs_b, &mut obs_c] {
        assert_eq!(
            wait_presence(obs, "ghost", within),
            json!({"serverId": "s1", "userId": "ghost", "presence": "offline"})
        );
    }
    assert_eq!(
        hget(&redis, "presence:ghost", "status").as_deref(),
        Some("offline")
    );
    // The online sets follow the status (another slot on a cluster): soon after.
    assert!(eventually(Duration::from_secs(5), || !sismember(
        &redis,
        "server:s1:online",
        "ghost"
    )));
    // Exactly one claim: B and C keep sweeping (three more rounds each) and
    // neither broadcasts again, on either node or on the bus.
    assert_eq!(
        presence_events(&mut obs_b, "ghost", Duration::from_secs(3)),
        Vec::<String>::new()
    );
    assert_eq!(
        presence_events(&mut obs_c, "ghost", Duration::from_millis(300)),
        Vec::<String>::new()
    );
    let seen: Vec<Value> = tap.try_iter().collect();
    assert_eq!(
        count_presence(&seen, "server.member.presence", "ghost", "offline"),
        1,
        "{seen:?}"
    );
    assert_eq!(
        count_presence(&seen, "user.presence", "ghost", "offline"),
        1,
        "{seen:?}"
    );
}

#[test]
fn a_starting_node_sweeps_at_once() {
    let redis = Redis::start();
    let mut a = presence_node(&redis, 2, 1);
    let (_u, _) = Client::hello(&a, &token("old", &["s1"], &[]));
    assert!(eventually(Duration::from_secs(5), || hget(
        &redis,
        "presence:old",
        "status"
    )
    .as_deref()
        == Some("online")
        && sismember(&redis, "server:s1:online", "old")));
    // The only node dies while the user is online: its alive key lapses, and with
    // no node alive nobody can sweep.
    a.kill9();
    assert!(eventually(Duration::from_secs(10), || !exists(
        &redis,
        "presence:old:alive"
    )));
    // a second more, for any record of the dead node's life kept in whole seconds
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        hget(&redis, "presence:old", "status").as_deref(),
        Some("online"),
        "with no node alive nobody can claim"
    );
    // A new node whose periodic sweep is a minute away: only its sweep at start
    // can take the user offline within the wait below.
    let tap = bus_tap(&redis, &["server:s1", "user:old:presence"]);
    let _b = presence_node(&redis, 2, 60);
    assert!(eventually(Duration::from_secs(10), || hget(
        &redis,
        "presence:old",
        "status"
    )
    .as_deref()
        == Some("offline")));
    // The online sets follow the status (another slot on a cluster): soon after.
    assert!(eventually(Duration::from_secs(5), || !sismember(
        &redis,
        "server:s1:online",
        "old"
    )));
    // and the change was broadcast, once
    let mut seen = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count_presence(&seen, "user.presence", "old", "offline") == 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tap.recv_timeout(left) {
            Ok(v) => seen.push(v),
            Err(_) => panic!("no user.presence offline on the bus; saw {seen:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    seen.extend(tap.try_iter());
    assert_eq!(
        count_presence(&seen, "server.member.presence", "old", "offline"),
        1,
        "{seen:?}"
    );
    assert_eq!(
        count_presence(&seen, "user.presence", "old", "offline"),
        1,
        "{seen:?}"
    );
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
    // Not repeated within 10 s: it ends by itself. The feature is the delay, so
    // the stop must not come early: nothing during the first half of those 10 s
    // (a generous margin), then the stop within a generous bound.
    assert_eq!(
        typing_events(&mut b, Duration::from_secs(5)),
        Vec::<bool>::new(),
        "typing stopped early"
    );
    let p = wait_event(&mut b, "server.typing", Duration::from_secs(10));
    assert_eq!(p["isTyping"], false);
}

/// The `isTyping` of every `server.typing` event seen within `d`.
fn typing_events(c: &mut Client, d: Duration) -> Vec<bool> {
    let deadline = std::time::Instant::now() + d;
    let mut out = vec![];
    c.set_timeout(Duration::from_millis(100));
    while std::time::Instant::now() < deadline {
        if let Got::Msg(v) = c.next() {
            if v["payload"]["event"] == "server.typing" {
                out.push(v["payload"]["payload"]["isTyping"].as_bool().unwrap());
            }
        }
    }
    c.set_timeout(Duration::from_secs(10));
    out
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
    // Events published while Redis is down are refused and counted, not lost
    // silently: the admin route's (503) and the node's own (a typing event).
    let failed = "xcord_events_dropped_total{reason=\"publish_failed\"}";
    let before = gw.metric_exact(failed);
    assert_eq!(gw.publish("server:s1", "lost", json!({})), 503);
    assert!(gw.metric_exact(failed) >= before + 1.0);
    let before = gw.metric_exact(failed);
    u.send(json!({"type": "TYPING_START", "payload": {"channelId": "server:s1:channel:c1"}}));
    assert!(
        eventually(Duration::from_secs(5), || gw.metric_exact(failed)
            >= before + 1.0),
        "a typing event the bus could not take was not counted"
    );
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
