//! Publishing by root (issue 14, SPEC §9): `--routing roots` publishes
//! `SPUBLISH xcord:{ROOT} {"channel","type","payload"}` with ROOT the channel's
//! first two segments, on a standalone Redis and, with `--redis-cluster`,
//! through the cluster-aware client on a real three-master Redis Cluster. A
//! `--publish-only` process publishes once the (simulated) shard has arrived
//! at the barrier; a sharded subscriber reads every message on its root.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A RESP value, as much of it as these tests read.
#[derive(Debug)]
enum Resp {
    /// A status or an integer.
    Other,
    Error(String),
    Bulk(Option<String>),
    Array(Vec<Resp>),
}

fn read_resp(r: &mut BufReader<TcpStream>) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1.min(line.len()));
    Ok(match kind {
        "+" | ":" => Resp::Other,
        "-" => Resp::Error(rest.into()),
        "$" => {
            let n: i64 = rest.parse().unwrap_or(-1);
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                std::io::Read::read_exact(r, &mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(String::from_utf8_lossy(&buf).into()))
            }
        }
        "*" | ">" => {
            let n: usize = rest.parse().unwrap_or(0);
            Resp::Array((0..n).map(|_| read_resp(r)).collect::<Result<_, _>>()?)
        }
        _ => Resp::Error(format!("unexpected {line:?}")),
    })
}

fn command(s: &mut TcpStream, args: &[&str]) {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes()).expect("write a Redis command");
}

/// SSUBSCRIBE `channel` on the node of `ports` that owns its slot; the reader.
fn ssubscribe(ports: &[u16], channel: &str) -> BufReader<TcpStream> {
    for p in ports {
        let mut s = TcpStream::connect(("127.0.0.1", *p)).expect("connect to Redis");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        command(&mut s, &["SSUBSCRIBE", channel]);
        let mut r = BufReader::new(s);
        match read_resp(&mut r).expect("SSUBSCRIBE answer") {
            Resp::Array(_) => return r,
            Resp::Error(e) if e.starts_with("MOVED") => continue,
            other => panic!("SSUBSCRIBE {channel}: {other:?}"),
        }
    }
    panic!("no node owns {channel}")
}

/// Read `n` sharded messages: (Redis channel, body).
fn messages(r: &mut BufReader<TcpStream>, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let Resp::Array(v) = read_resp(r).expect("a message") else {
            continue;
        };
        if let [Resp::Bulk(Some(kind)), Resp::Bulk(Some(ch)), Resp::Bulk(Some(body))] = &v[..] {
            if kind == "smessage" {
                out.push((ch.clone(), serde_json::from_str(body).expect("JSON body")));
            }
        }
    }
    out
}

fn publish_only(run_id: &str, redis_flags: &[String]) -> Child {
    let mut a: Vec<String> = [
        "--publish-only",
        "--shard",
        "0/1",
        "--run-id",
        run_id,
        "--routing",
        "roots",
        "--scenario",
        "fanout",
        "--connections",
        "20",
        "--channels",
        "2",
        "--rate",
        "20",
        "--duration-s",
        "1",
        "--drain-grace-s",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(redis_flags.iter().cloned());
    Command::new(env!("CARGO_BIN_EXE_xcord-loadtest"))
        .args(&a)
        .stdin(Stdio::null())
        .spawn()
        .expect("run xcord-loadtest")
}

/// Every message is on its root, carries its channel, type and lt payload.
fn check(msgs: &[(String, Value)], root: &str) {
    assert_eq!(msgs.len(), 10);
    for (ch, body) in msgs {
        assert_eq!(ch, &format!("xcord:{{{root}}}"));
        let channel = body["channel"].as_str().expect("channel");
        assert!(channel.starts_with(&format!("{root}:")), "{channel}");
        assert_eq!(body["type"], "lt.event");
        assert!(body["payload"]["lt"]["k"].is_u64());
    }
    let ks: Vec<u64> = msgs
        .iter()
        .filter_map(|(_, b)| b["payload"]["lt"]["k"].as_u64())
        .collect();
    assert_eq!(ks, (0..10).collect::<Vec<_>>(), "in order, each once");
}

#[test]
fn roots_publish_spublish_on_a_standalone_redis() {
    let _g = serial();
    let redis = Redis::start();
    let mut subs: Vec<_> = ["server:lt0", "server:lt1"]
        .iter()
        .map(|r| ssubscribe(&[redis.port], &format!("xcord:{{{r}}}")))
        .collect();
    let mut c = TcpStream::connect(("127.0.0.1", redis.port)).expect("connect");
    command(&mut c, &["INCR", "xcord-lt:{901}:ready"]); // the one shard arrived
    let mut child = publish_only("901", &["--redis".into(), redis.url()]);
    assert!(child.wait().expect("wait").success());
    for (sub, root) in subs.iter_mut().zip(["server:lt0", "server:lt1"]) {
        check(&messages(sub, 10), root);
    }
}

struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_cluster() -> Cluster {
    let dir = scratch("cluster");
    let mut cl = Cluster {
        nodes: Vec::new(),
        ports: Vec::new(),
    };
    while cl.ports.len() < 3 {
        let port = free_low_port();
        if cl.ports.contains(&port) {
            continue;
        }
        let log = std::fs::File::create(dir.join(format!("redis-{port}.log"))).expect("log");
        let mut child = Command::new("redis-server")
            .current_dir(&dir)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
            ])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut up = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break; // exited (port taken meanwhile?): try another port
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if up {
            cl.nodes.push(child);
            cl.ports.push(port);
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let addrs: Vec<String> = cl.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let st = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli --cluster create");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = cl.ports.iter().all(|p| {
            Command::new("redis-cli")
                .args(["-p", &p.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
        if ok {
            return cl;
        }
        assert!(Instant::now() < deadline, "the cluster did not settle");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn roots_publish_through_a_redis_cluster() {
    let _g = serial();
    let cl = start_cluster();
    let mut subs: Vec<_> = ["server:lt0", "server:lt1"]
        .iter()
        .map(|r| ssubscribe(&cl.ports, &format!("xcord:{{{r}}}")))
        .collect();
    // The barrier lives on the cluster too: the one shard arrives.
    let st = Command::new("redis-cli")
        .args([
            "-c",
            "-p",
            &cl.ports[0].to_string(),
            "INCR",
            "xcord-lt:{902}:ready",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli INCR");
    assert!(st.success());
    let seeds: Vec<String> = cl
        .ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let mut child = publish_only("902", &["--redis-cluster".into(), seeds.join(",")]);
    assert!(child.wait().expect("wait").success());
    for (sub, root) in subs.iter_mut().zip(["server:lt0", "server:lt1"]) {
        check(&messages(sub, 10), root);
    }
}
