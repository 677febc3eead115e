//! Interest-based routing and Redis Cluster (SPEC §9), against a real Redis
//! Cluster started here from `redis-server --cluster-enabled yes` and
//! `redis-cli --cluster create` on loopback ports below 22000 (a node's bus port is
//! its port + 10000), and real gateway processes.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xcord_gateway::bus::sub::slots::slot;

/// A Redis Cluster of `masters` masters and `replicas` replicas per master.
struct Cluster {
    nodes: Vec<(Child, u16)>,
    dir: PathBuf,
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian's redis-tools, installed with redis-server)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Cluster {
    fn start(masters: usize, replicas: usize) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "xcord-cluster-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = free_port();
            let d = dir.join(port.to_string());
            std::fs::create_dir_all(&d).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args([
                    "--cluster-node-timeout",
                    "1500",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            nodes.push((child, port));
        }
        let c = Cluster { nodes, dir };
        for (_, p) in &c.nodes {
            assert!(
                eventually(Duration::from_secs(10), || cli(*p, &["PING"]) == "PONG"),
                "node {p} did not start"
            );
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for (_, p) in &c.nodes {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            eventually(Duration::from_secs(20), || c.nodes.iter().all(|(_, p)| {
                cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            })),
            "the cluster did not settle"
        );
        // A replica is eligible for failover only once it is in sync with its master.
        assert!(
            eventually(Duration::from_secs(20), || c.nodes.iter().all(|(_, p)| {
                let info = cli(*p, &["INFO", "replication"]);
                !info.contains("role:slave") || info.contains("master_link_status:up")
            })),
            "replicas did not sync"
        );
        c
    }

    fn seeds(&self) -> String {
        self.nodes
            .iter()
            .take(2)
            .map(|(_, p)| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master port serving `key`'s slot, as a live node sees the cluster.
    fn owner(&self, key: &str) -> u16 {
        let slot = slot(key.as_bytes());
        self.owner_of_slot(slot)
            .unwrap_or_else(|| panic!("no live master owns slot {slot}"))
    }

    fn owner_of_slot(&self, slot: u16) -> Option<u16> {
        for (_, p) in &self.nodes {
            // `id host:port@bus flags master ping pong epoch state slot-ranges…`
            for line in cli(*p, &["CLUSTER", "NODES"]).lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                let port: Option<u16> = f[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok());
                for range in &f[8..] {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(a), Ok(b), Some(port)) = (a.parse::<u16>(), b.parse::<u16>(), port) {
                        if a <= slot && slot <= b {
                            return Some(port);
                        }
                    }
                }
            }
        }
        None
    }

    fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, p)| cli(*p, &["ROLE"]).starts_with("master"))
            .map(|(_, p)| *p)
            .collect()
    }

    /// SPUBLISH xcord:{root} on its master; the number of nodes that got it.
    fn spublish(&self, channel: &str, event: &str, payload: Value) -> i64 {
        let root: Vec<&str> = channel.splitn(3, ':').take(2).collect();
        let key = format!("xcord:{{{}}}", root.join(":"));
        let body = json!({"channel": channel, "type": event, "payload": payload}).to_string();
        cli(self.owner(&key), &["SPUBLISH", &key, &body])
            .parse()
            .unwrap_or(-1)
    }

    fn kill(&mut self, port: u16) {
        if let Some((c, _)) = self.nodes.iter_mut().find(|(_, p)| *p == port) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (c, _) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn roots_node(c: &Cluster, extra: &[&str]) -> Gateway {
    let seeds = c.seeds();
    let mut args = vec!["--redis-cluster", seeds.as_str(), "--routing", "roots"];
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

fn shardnumsub(c: &Cluster, key: &str) -> i64 {
    let out = cli(c.owner(key), &["PUBSUB", "SHARDNUMSUB", key]);
    out.lines()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// Delivery by root with leaf filtering, interest counts, the promises on cold
/// roots, two nodes exactly once and in order, presence, readiness.
#[test]
fn roots_on_a_cluster_deliver_exactly_what_each_node_wants() {
    let c = Cluster::start(3, 0);
    let a = roots_node(&c, &[]);
    let b = roots_node(&c, &[]);
    assert_eq!(a.admin_get("/readyz").0, 200);

    // Leaf filtering: the root carries the whole tree; each subscriber gets its part.
    let (mut ann, _) = Client::hello(&a, &token("ann", &["s1"], &[]));
    ann.subscribe(&["server:s1:channel:c1"]);
    assert!(c.spublish("server:s1:channel:c2", "m", json!({"n": 0})) >= 1);
    assert!(c.spublish("server:s10:channel:c1", "m", json!({"n": -1})) <= 0);
    assert_eq!(c.spublish("server:s1:channel:c1", "m", json!({"n": 1})), 1);
    let ev = ann.expect_event();
    assert_eq!(ev["payload"]["channel"], "server:s1:channel:c1");
    assert_eq!(ev["payload"]["payload"]["n"], 1);

    // Interest: one subscriber per node per held root; none for unheld roots; no
    // pattern subscription anywhere.
    let (mut bob, _) = Client::hello(&b, &token("bob", &["s1"], &[]));
    bob.subscribe(&["server:s1"]);
    assert_eq!(shardnumsub(&c, "xcord:{server:s1}"), 2);
    assert_eq!(shardnumsub(&c, "xcord:{user:ann}"), 1);
    assert_eq!(shardnumsub(&c, "xcord:{server:nobody}"), 0);
    for p in c.master_ports() {
        assert_eq!(cli(p, &["PUBSUB", "NUMPAT"]), "0");
    }
    assert!(a.metric_exact("xcord_bus_subscriptions") >= 2.0);

    // The SUBSCRIBED promise on cold roots: the first publish right after the
    // reply arrives, round after round.
    for i in 0..25 {
        let ch = format!("live:cold{i}:chat");
        ann.subscribe(&[&ch]);
        assert_eq!(c.spublish(&ch, "m", json!({"i": i})), 1, "round {i}");
        assert_eq!(ann.expect_event()["payload"]["payload"]["i"], i);
    }
    // The HELLO_ACK promise on the user's own cold root.
    for i in 0..10 {
        let user = format!("u{i}");
        let (mut u, _) = Client::hello(&a, &token(&user, &[], &[]));
        let ch = format!("user:{user}:notifications");
        assert_eq!(c.spublish(&ch, "n", json!({"i": i})), 1, "hello round {i}");
        assert_eq!(u.expect_event()["payload"]["channel"], ch.as_str());
    }

    // Two nodes, one publish each: every subscriber exactly once, in order.
    for k in 0..200 {
        c.spublish("server:s1:channel:c1", "seq", json!({"k": k}));
    }
    for cl in [&mut ann, &mut bob] {
        for k in 0..200 {
            let ev = cl.expect_event();
            assert_eq!(ev["payload"]["payload"]["k"], k);
        }
        cl.expect_silence(Duration::from_millis(300));
    }

    // Presence on the cluster: the §6 keys, and the broadcast by root.
    let mut r =
        redis::cluster::ClusterClient::new(vec![format!("redis://127.0.0.1:{}", c.nodes[0].1)])
            .unwrap()
            .get_connection()
            .unwrap();
    let status: Option<String> = redis::cmd("HGET")
        .arg("presence:ann")
        .arg("status")
        .query(&mut r)
        .unwrap();
    assert_eq!(status.as_deref(), Some("online"));
    let online: bool = redis::cmd("SISMEMBER")
        .arg("server:s1:online")
        .arg("ann")
        .query(&mut r)
        .unwrap();
    assert!(online);
    bob.skip_presence = false;
    ann.close();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut offline = false;
    while Instant::now() < deadline && !offline {
        if let Got::Msg(v) = bob.next() {
            offline = v["payload"]["event"] == "server.member.presence"
                && v["payload"]["payload"]["userId"] == "ann"
                && v["payload"]["payload"]["presence"] == "offline";
        }
    }
    assert!(offline, "bob on node B saw ann go offline on node A");
    // Through the admin route, by root.
    assert_eq!(
        a.publish("server:s1:channel:c9", "admin.m", json!({"x": 1})),
        202
    );
    bob.skip_presence = true;
    assert_eq!(bob.expect_event()["payload"]["event"], "admin.m");
}

/// A slot moved with CLUSTER SETSLOT while a client listens: its root is
/// re-subscribed on the new owner and the client keeps receiving.
#[test]
fn a_migrated_slot_is_followed() {
    let c = Cluster::start(3, 0);
    let gw = roots_node(&c, &[]);
    let (mut cl, _) = Client::hello(&gw, &token("ann", &[], &[]));
    cl.subscribe(&["live:show"]);
    let key = "xcord:{live:show}";
    let slot = slot(key.as_bytes());
    let from = c.owner(key);
    let to = c.master_ports().into_iter().find(|p| *p != from).unwrap();
    let from_id = cli(from, &["CLUSTER", "MYID"]);
    let to_id = cli(to, &["CLUSTER", "MYID"]);
    let s = slot.to_string();
    cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
    cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
    for p in c.master_ports() {
        cli(p, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
    }
    assert!(eventually(Duration::from_secs(10), || c.owner(key) == to));
    // Re-subscribed on the new owner within 5 s of the move.
    assert!(
        eventually(Duration::from_secs(5), || shardnumsub(&c, key) == 1),
        "not re-subscribed on the new owner"
    );
    assert_eq!(c.spublish("live:show", "after", json!({})), 1);
    assert_eq!(cl.expect_event()["payload"]["event"], "after");
    assert!(gw.metric_exact("xcord_bus_resubscribes_total") >= 1.0);
    assert_eq!(
        gw.metric_exact("xcord_connections_closed_total{code=\"other\"}"),
        0.0
    );
}

/// A master killed and its replica promoted: the roots follow, clients stay.
#[test]
fn a_failover_is_followed() {
    let mut c = Cluster::start(3, 1);
    let gw = roots_node(&c, &[]);
    let (mut cl, _) = Client::hello(&gw, &token("ann", &[], &[]));
    cl.subscribe(&["live:show"]);
    let key = "xcord:{live:show}";
    let old = c.owner(key);
    c.kill(old);
    // The replica takes over (node timeout 1.5 s).
    assert!(
        eventually(Duration::from_secs(30), || {
            let ports: Vec<u16> = c
                .nodes
                .iter()
                .map(|(_, p)| *p)
                .filter(|p| *p != old)
                .collect();
            ports
                .iter()
                .any(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && c.owner_of_slot(slot(key.as_bytes()))
                    .is_some_and(|o| o != old)
        }),
        "no failover"
    );
    assert!(
        eventually(Duration::from_secs(10), || shardnumsub(&c, key) == 1),
        "not re-subscribed on the promoted replica"
    );
    assert_eq!(c.spublish("live:show", "after", json!({})), 1);
    assert_eq!(cl.expect_event()["payload"]["event"], "after");
    assert!(gw.metric_exact("xcord_bus_resubscribes_total") >= 1.0);
    assert_eq!(
        gw.metric_exact("xcord_connections{"),
        1.0,
        "the client stayed"
    );
    assert_eq!(gw.admin_get("/readyz").0, 200);
}

/// `--routing pattern` on a cluster: classic PUBLISH events:… reaches the node.
#[test]
fn pattern_routing_on_a_cluster() {
    let c = Cluster::start(3, 0);
    let seeds = c.seeds();
    let gw = Gateway::start(&["--redis-cluster", &seeds]);
    let (mut cl, _) = Client::hello(&gw, &token("ann", &[], &[]));
    cl.subscribe(&["live:show"]);
    let body = json!({"type": "p", "payload": {}}).to_string();
    // Any node: cluster pub/sub broadcasts classic PUBLISH to every node (its reply
    // counts only that node's subscribers, so the client's reading is the proof).
    cl.set_timeout(Duration::from_millis(200));
    for port in c.master_ports() {
        cli(port, &["PUBLISH", "events:live:show", &body]);
        match cl.next() {
            Got::Msg(v) => assert_eq!(v["payload"]["event"], "p"),
            other => panic!("a PUBLISH on node {port} did not arrive: {other:?}"),
        }
    }
}

/// Roots on a standalone Redis 7, and UNAVAILABLE while Redis cannot confirm.
#[test]
fn roots_on_one_redis_and_unavailable_when_it_cannot_confirm() {
    let mut redis = Redis::start();
    let url = redis.url();
    let gw = Gateway::start(&["--redis", &url, "--routing", "roots"]);
    let (mut cl, _) = Client::hello(&gw, &token("ann", &[], &[]));
    cl.subscribe(&["live:a"]);
    let mut r = redis.conn().unwrap();
    let n: i64 = redis::cmd("SPUBLISH")
        .arg("xcord:{live:a}")
        .arg(json!({"channel": "live:a:chat", "type": "m", "payload": 1}).to_string())
        .query(&mut r)
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(cl.expect_event()["payload"]["channel"], "live:a:chat");
    let patterns: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut r).unwrap();
    assert_eq!(patterns, 0);
    // Redis stops answering: a new root cannot be confirmed in 3 s.
    redis.pause();
    cl.send(json!({"type": "SUBSCRIBE", "payload": {"channels": ["live:b", "live:a:x"]}}));
    let err = cl.expect("ERROR");
    assert_eq!(err["code"], "UNAVAILABLE");
    assert_eq!(err["channel"], "live:b");
    assert_eq!(
        cl.expect("SUBSCRIBED")["channels"],
        json!(["live:a:x"]),
        "a held root answers"
    );
    redis.resume();
}

#[test]
fn bad_routing_flags_are_refused_at_start() {
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--jwt-secret",
        "s",
    ];
    for extra in [
        vec!["--routing", "roots"],
        vec!["--routing", "sideways", "--redis", "redis://127.0.0.1:1/"],
        vec![
            "--redis",
            "redis://127.0.0.1:1/",
            "--redis-cluster",
            "redis://127.0.0.1:2",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_xcord-gateway"))
            .args(base)
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert_eq!(err.lines().filter(|l| !l.is_empty()).count(), 1, "{err}");
        assert!(err.starts_with("error:"), "{err}");
    }
}

/// Two nodes whose clients hold disjoint halves of the roots: each node's bus
/// receives exactly the events of its own half (interest-based routing), where a
/// pattern node would receive them all.
#[test]
fn each_node_receives_only_the_roots_its_clients_hold() {
    let c = Cluster::start(3, 0);
    let a = roots_node(&c, &[]);
    let b = roots_node(&c, &[]);
    let (mut ca, _) = Client::hello(&a, &token("ann", &[], &[]));
    let (mut cb, _) = Client::hello(&b, &token("bob", &[], &[]));
    let half: Vec<String> = (0..10).map(|i| format!("live:r{i}")).collect();
    let other: Vec<String> = (10..20).map(|i| format!("live:r{i}")).collect();
    ca.subscribe(&half.iter().map(String::as_str).collect::<Vec<_>>());
    cb.subscribe(&other.iter().map(String::as_str).collect::<Vec<_>>());
    // Let the sessions' own presence events (user:{sub}) pass before counting.
    std::thread::sleep(Duration::from_millis(500));
    let (ra, rb) = (
        a.metric_exact("xcord_events_received_total"),
        b.metric_exact("xcord_events_received_total"),
    );
    for round in 0..5 {
        for ch in half.iter().chain(&other) {
            assert_eq!(c.spublish(ch, "m", json!({"round": round})), 1, "{ch}");
        }
    }
    for _ in 0..50 {
        ca.expect_event();
        cb.expect_event();
    }
    assert!(eventually(Duration::from_secs(5), || {
        a.metric_exact("xcord_events_received_total") - ra == 50.0
            && b.metric_exact("xcord_events_received_total") - rb == 50.0
    }));
    ca.expect_silence(Duration::from_millis(300));
    cb.expect_silence(Duration::from_millis(300));
}
