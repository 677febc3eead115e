//! Presence stays true (SPEC §6, issue 12 defects 3 and 6): through a Redis outage
//! and a snapshot restore nobody stays online for good, the sweep gets past users
//! it cannot claim, an unchanged status publishes nothing, and a user who left a
//! server stops being broadcast there. Real redis-server, real gateways.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn status(r: &Redis, user: &str) -> Option<String> {
    let mut c = r.conn().ok()?;
    redis::cmd("HGET")
        .arg(format!("presence:{user}"))
        .arg("status")
        .query(&mut c)
        .ok()?
}

fn sismember(r: &Redis, key: &str, m: &str) -> bool {
    let mut c = r.conn().unwrap();
    redis::cmd("SISMEMBER")
        .arg(key)
        .arg(m)
        .query(&mut c)
        .unwrap()
}

fn becomes(r: &Redis, user: &str, want: &str, within: Duration) -> bool {
    eventually(within, || status(r, user).as_deref() == Some(want))
}

/// Presence events for `user` that reach `c` within `d`.
fn presence_of(c: &mut Client, user: &str, d: Duration) -> Vec<Value> {
    c.skip_presence = false;
    c.set_timeout(Duration::from_millis(100));
    let deadline = std::time::Instant::now() + d;
    let mut out = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Got::Msg(v) = c.next() {
            if v["payload"]["payload"]["userId"] == user {
                out.push(v["payload"].clone());
            }
        }
    }
    c.set_timeout(Duration::from_secs(10));
    out
}

const FAST: [&str; 4] = [
    "--presence-ttl-seconds",
    "2",
    "--presence-sweep-seconds",
    "1",
];

/// Defect 3: a session that ends while Redis cannot be reached.
#[test]
fn a_session_ended_during_an_outage_goes_offline_once_redis_answers() {
    let mut redis = Redis::start();
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend(FAST);
    let _gw = Gateway::start(&args);
    let (c, _) = Client::hello(&_gw, &token("ann", &["s1"], &[]));
    assert!(becomes(&redis, "ann", "online", Duration::from_secs(5)));
    redis.pause();
    c.close(); // a clean close: the session ends, its count cannot be written now
    std::thread::sleep(Duration::from_secs(3)); // the write times out
    redis.resume();
    assert!(
        becomes(&redis, "ann", "offline", Duration::from_secs(15)),
        "ann stayed {:?}",
        status(&redis, "ann")
    );
    assert!(
        eventually(Duration::from_secs(10), || !sismember(
            &redis,
            "server:s1:online",
            "ann"
        )),
        "ann stayed in s1's online set"
    );
}

/// Defect 3: a Redis restored from a snapshot taken while the user was online.
#[test]
fn a_redis_restored_from_an_older_snapshot_leaves_nobody_online() {
    let mut redis = Redis::start_persistent();
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend(FAST);
    let gw = Gateway::start(&args);
    let (c, _) = Client::hello(&gw, &token("ann", &["s1"], &[]));
    assert!(becomes(&redis, "ann", "online", Duration::from_secs(5)));
    redis.save(); // the snapshot has ann online, held by this node
    c.close();
    assert!(becomes(&redis, "ann", "offline", Duration::from_secs(5)));
    redis.restart(); // comes back with the old snapshot
    assert_eq!(status(&redis, "ann").as_deref(), Some("online"), "restored");
    assert!(
        becomes(&redis, "ann", "offline", Duration::from_secs(15)),
        "ann stayed {:?} after the restore",
        status(&redis, "ann")
    );
    assert!(eventually(Duration::from_secs(10), || !sismember(
        &redis,
        "server:s1:online",
        "ann"
    )));
    assert_eq!(gw.metric_exact("xcord_redis_up"), 1.0);
}

/// Defect 3: more than a sweep's batch of users a live node holds sit at the head of
/// the sweep's index; a user whose node died behind them is still claimed.
#[test]
fn the_sweep_gets_past_users_it_cannot_claim() {
    let redis = Redis::start();
    let url = redis.url();
    // 1,500 users held by a live node (one that keeps their counts but, lost in an
    // outage, no longer refreshes them) — more than one sweep reads at a time.
    {
        let mut c = redis.conn().unwrap();
        let mut p = redis::pipe();
        p.cmd("ZADD")
            .arg("xcord:nodes")
            .arg(u64::MAX / 2)
            .arg("elsewhere")
            .ignore();
        for i in 0..1500 {
            let u = format!("held{i}");
            p.cmd("HSET")
                .arg(format!("presence:{u}"))
                .arg("status")
                .arg("online")
                .ignore();
            p.cmd("HSET")
                .arg(format!("xcord:{{presence:{u}}}:sessions"))
                .arg("elsewhere")
                .arg(1)
                .ignore();
            p.cmd("ZADD")
                .arg("xcord:presence:expiry")
                .arg(1)
                .arg(&u)
                .ignore();
        }
        p.query::<()>(&mut c).unwrap();
    }
    // A real user on a node that dies.
    let mut args = vec!["--redis", url.as_str()];
    args.extend(FAST);
    let mut a = Gateway::start(&args);
    let (_c, _) = Client::hello(&a, &token("zed", &[], &[]));
    assert!(becomes(&redis, "zed", "online", Duration::from_secs(5)));
    a.kill9();
    let _b = Gateway::start(&args);
    assert!(
        becomes(&redis, "zed", "offline", Duration::from_secs(20)),
        "zed was never reached behind the held users"
    );
    assert_eq!(
        status(&redis, "held0").as_deref(),
        Some("online"),
        "still held"
    );
}

/// Defect 6: an unchanged status publishes nothing (in-process bus and Redis).
#[test]
fn a_set_presence_that_changes_nothing_publishes_nothing() {
    let redis = Redis::start();
    let url = redis.url();
    for extra in [vec![], vec!["--redis", url.as_str()]] {
        let gw = Gateway::start(&extra);
        let (mut w, _) = Client::hello(&gw, &token("wes", &["s1"], &[]));
        w.subscribe(&["server:s1"]);
        let (mut a, _) = Client::hello(&gw, &token("ann", &["s1"], &[]));
        let first = presence_of(&mut w, "ann", Duration::from_millis(800));
        assert_eq!(first.len(), 1, "ann online once: {first:?}");
        a.send(json!({"type": "SET_PRESENCE", "payload": {"status": "online"}}));
        assert!(presence_of(&mut w, "ann", Duration::from_millis(800)).is_empty());
        a.send(json!({"type": "SET_PRESENCE", "payload": {"status": "idle"}}));
        let idle = presence_of(&mut w, "ann", Duration::from_millis(800));
        assert_eq!(idle.len(), 1, "{idle:?}");
        assert_eq!(idle[0]["payload"]["presence"], "idle");
        a.send(json!({"type": "SET_PRESENCE", "payload": {"status": "idle"}}));
        assert!(
            presence_of(&mut w, "ann", Duration::from_millis(800)).is_empty(),
            "idle again is no change ({extra:?})"
        );
    }
}

/// Defect 6: a user who left a server stops being broadcast there and leaves its
/// online set at the next change.
#[test]
fn a_user_who_left_a_server_is_not_broadcast_there_any_more() {
    let redis = Redis::start();
    let url = redis.url();
    {
        let mut c = redis.conn().unwrap();
        let _: i64 = redis::cmd("SADD")
            .arg("user:ann:servers")
            .arg("s2")
            .query(&mut c)
            .unwrap();
    }
    let gw = Gateway::start(&["--redis", &url]);
    let (mut w1, _) = Client::hello(&gw, &token("wes", &["s1"], &[]));
    w1.subscribe(&["server:s1"]);
    let (mut w2, _) = Client::hello(&gw, &token("vic", &["s2"], &[]));
    w2.subscribe(&["server:s2"]);
    let (mut a, _) = Client::hello(&gw, &token("ann", &["s1"], &[]));
    assert_eq!(
        presence_of(&mut w2, "ann", Duration::from_millis(800)).len(),
        1
    );
    assert!(sismember(&redis, "server:s2:online", "ann"));
    {
        let mut c = redis.conn().unwrap();
        let _: i64 = redis::cmd("SREM")
            .arg("user:ann:servers")
            .arg("s2")
            .query(&mut c)
            .unwrap();
    }
    let _ = presence_of(&mut w1, "ann", Duration::from_millis(300));
    a.send(json!({"type": "SET_PRESENCE", "payload": {"status": "dnd"}}));
    let on_s1 = presence_of(&mut w1, "ann", Duration::from_millis(800));
    assert_eq!(on_s1.len(), 1, "still a member of s1: {on_s1:?}");
    assert!(
        presence_of(&mut w2, "ann", Duration::from_millis(800)).is_empty(),
        "ann left s2: nothing more there"
    );
    assert!(!sismember(&redis, "server:s2:online", "ann"));
    assert!(sismember(&redis, "server:s1:online", "ann"));
}
