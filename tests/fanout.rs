//! Fan-out under pressure: slow consumers, broadcast to thousands, connection limits.

mod common;
use common::*;
use serde_json::json;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A client whose socket receive buffer is tiny, so the server's queue fills.
fn tiny_window_client(addr: SocketAddr, tok: &str) -> Client {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}/api/v1/ws"), stream).unwrap();
    let mut c = Client {
        ws,
        skip_presence: true,
    };
    c.send(json!({"type": "HELLO", "payload": {"token": tok}}));
    c.expect("HELLO_ACK");
    c
}

#[test]
fn slow_consumer_is_closed_4010_while_its_neighbour_keeps_receiving() {
    let redis = Redis::start();
    let gw = Gateway::start(&[
        "--redis",
        &redis.url(),
        "--send-queue-bytes",
        "524288",
        "--shards",
        "1",
    ]);
    let mut slow = tiny_window_client(gw.addr, &token("slow", &[], &[]));
    slow.subscribe(&["live:flood"]);
    let (mut fast, _) = Client::hello(&gw, &token("fast", &[], &[]));
    fast.subscribe(&["live:flood"]);

    let blob = "x".repeat(16 * 1024);
    let n = 1500;
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            let ev = match fast.next() {
                Got::Msg(v) => v,
                other => panic!("fast neighbour at event {i}: {other:?}"),
            };
            assert_eq!(ev["payload"]["payload"]["i"], i);
        }
        fast
    });
    let mut r = redis.conn().unwrap();
    // Paced so that a reading client keeps up; the one that never reads cannot.
    for chunk in 0..60 {
        std::thread::sleep(Duration::from_millis(10));
        let mut pipe = redis::pipe();
        for j in 0..25 {
            let i = chunk * 25 + j;
            pipe.cmd("PUBLISH")
                .arg("events:live:flood")
                .arg(json!({"type": "blob", "payload": {"i": i, "b": blob}}).to_string())
                .ignore();
        }
        let _: () = pipe.query(&mut r).unwrap();
    }
    let _fast = reader
        .join()
        .expect("the fast neighbour got every event in order");
    assert_eq!(slow.expect_close(), Some(4010));
    assert!(eventually(Duration::from_secs(5), || gw
        .metric("xcord_connections_closed_total{code=\"4010\"}")
        == 1.0));
    assert!(gw.metric("xcord_events_dropped_total{reason=\"slow_consumer\"}") >= 1.0);
}

#[test]
fn a_reader_that_pauses_gets_the_backlog_complete_and_in_order() {
    // The fan-out writes straight to a socket until the socket pushes back; then the
    // connection's writer task takes over. A client that stops reading while ~200
    // KiB arrive (far more than its 4 KiB window) must, once it reads again, see
    // every event once and in order — the hand-over loses and reorders nothing.
    let redis = Redis::start();
    let gw = Gateway::start(&["--redis", &redis.url(), "--shards", "1"]);
    let mut paused = tiny_window_client(gw.addr, &token("paused", &[], &[]));
    paused.subscribe(&["live:backlog"]);
    let (mut steady, _) = Client::hello(&gw, &token("steady", &[], &[]));
    steady.subscribe(&["live:backlog"]);
    let blob = "y".repeat(700);
    let n = 300;
    let mut r = redis.conn().unwrap();
    for chunk in 0..30 {
        let mut pipe = redis::pipe();
        for j in 0..10 {
            let i = chunk * 10 + j;
            pipe.cmd("PUBLISH")
                .arg("events:live:backlog")
                .arg(json!({"type": "b", "payload": {"i": i, "b": blob}}).to_string())
                .ignore();
        }
        let _: () = pipe.query(&mut r).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..n {
        assert_eq!(steady.expect_event()["payload"]["payload"]["i"], i);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut last_seq = 0;
    for i in 0..n {
        let ev = paused.expect_event();
        assert_eq!(ev["payload"]["payload"]["i"], i, "event {i}: {ev}");
        let seq = ev["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "seq {seq} after {last_seq}");
        last_seq = seq;
    }
    paused.expect_silence(Duration::from_millis(200));
    assert_eq!(
        gw.metric("xcord_connections_closed_total{code=\"4010\"}"),
        0.0
    );
}

#[test]
fn after_a_writer_waited_for_the_socket_a_later_reply_still_goes_out() {
    // ~6 MB for a client that does not read: more than the kernel's send buffer
    // (4 MiB at most here), so the connection's writer task waits for the socket.
    // Once the client has read it all the writer ends; a reply on the now quiet
    // connection must get a new writer (not the ended task's leftover waker).
    let redis = Redis::start();
    let gw = Gateway::start(&[
        "--redis",
        &redis.url(),
        "--shards",
        "1",
        "--send-queue-bytes",
        "33554432",
    ]);
    let mut paused = tiny_window_client(gw.addr, &token("paused", &[], &[]));
    paused.subscribe(&["live:flood"]);
    let blob = "z".repeat(1200);
    let n = 5000;
    let mut r = redis.conn().unwrap();
    for chunk in 0..(n / 100) {
        let mut pipe = redis::pipe();
        for j in 0..100 {
            let i = chunk * 100 + j;
            pipe.cmd("PUBLISH")
                .arg("events:live:flood")
                .arg(json!({"type": "f", "payload": {"i": i, "b": blob}}).to_string())
                .ignore();
        }
        let _: () = pipe.query(&mut r).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..n {
        let ev = paused.expect_event();
        assert_eq!(ev["payload"]["payload"]["i"], i, "event {i}");
    }
    paused.expect_silence(Duration::from_millis(300));
    paused.set_timeout(Duration::from_secs(3));
    paused.send(json!({"type": "PING", "payload": {}}));
    paused.expect("PONG");
    assert_eq!(
        gw.metric("xcord_connections_closed_total{code=\"4010\"}"),
        0.0
    );
}

#[test]
fn broadcast_to_2000_connections_each_receives_every_event_once() {
    let gw = Gateway::start(&[]);
    let n = 2000;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let (mut c, _) = Client::hello(&gw, &token(&format!("b{i}"), &[], &[]));
        c.subscribe(&["live:all"]);
        clients.push(c);
    }
    // Each session's own `user.presence` online event is one delivery.
    assert!(
        eventually(Duration::from_secs(10), || gw
            .metric("xcord_events_delivered_total")
            == n as f64),
        "{}",
        gw.admin_get("/metrics").1
    );
    let events = 5;
    for k in 0..events {
        assert_eq!(gw.publish("live:all", "announce", json!({"k": k})), 202);
    }
    for c in clients.iter_mut() {
        let mut last = 0;
        for k in 0..events {
            let ev = c.expect_event();
            assert_eq!(ev["payload"]["payload"]["k"], k);
            let seq = ev["seq"].as_u64().unwrap();
            assert!(seq > last);
            last = seq;
        }
    }
    for c in clients.iter_mut().take(20) {
        c.expect_silence(Duration::from_millis(20));
    }
    assert!(eventually(Duration::from_secs(5), || gw
        .metric("xcord_events_delivered_total")
        == (n + n * events) as f64));
}

#[test]
fn max_connections_answers_503_and_readyz_follows() {
    let gw = Gateway::start(&["--max-connections", "3"]);
    let mut held: Vec<Client> = (0..3).map(|_| Client::connect(&gw)).collect();
    assert_eq!(Client::try_connect(gw.addr, &[]).err(), Some(503));
    assert_eq!(gw.admin_get("/readyz").0, 503);
    held.pop().unwrap().close();
    assert!(eventually(Duration::from_secs(5), || Client::try_connect(
        gw.addr,
        &[]
    )
    .is_ok()));
}
