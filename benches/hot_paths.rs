//! Micro-benchmarks of the hot pieces (issue: "prove the speed"):
//!
//! * `trie/lookup_100k`: one channel lookup in a trie holding 100 000 subscriptions;
//! * `event/sonic_rs` vs `event/serde_json`: parse a ~200-byte bus event and encode
//!   its EVENT frame — the choice of sonic-rs is justified (or not) here;
//! * `fanout/10k_local`: one shard's fan-out of one event to 10 000 local
//!   subscribers, through the real `fanout::deliver_into` (trie walk, copy into
//!   each outbound buffer, dirty list; the socket writes are not included).
//!
//! * `fanout/10k_local_deflate`: the same with every subscriber having negotiated
//!   permessage-deflate: one compression per event (a fresh event each iteration)
//!   and the compressed frame copied 10,000 times — against `10k_local`, what
//!   compression costs the fan-out;
//! * `compression/event`: compressing one event frame (and, printed once, the bytes
//!   on the wire with and without compression for the chat-like body).
//!
//! Run: `cargo bench --bench hot_paths`. Figures go in loadtest/RESULTS.md as ratios.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slab::Slab;
use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;
use xcord_gateway::bus::event::{self, Event};
use xcord_gateway::channels::Trie;
use xcord_gateway::protocol::frame;
use xcord_gateway::shard::conn::Conn;
use xcord_gateway::shard::fanout;

const BODY: &[u8] = br#"{"type":"server.message.new","payload":{"serverId":"s42","channelId":"c7","message":{"id":"m_0192","author":"u_881","content":"hello there, this is a chat message","ts":1795678000}}}"#;

fn trie(c: &mut Criterion) {
    let mut t: Trie<u32> = Trie::new();
    // 10 000 users × (server + 9 channels) = 100 000 subscriptions over 1 000 servers.
    let mut n = 0u32;
    for user in 0..10_000u32 {
        let s = user % 1000;
        t.insert(&format!("server:s{s}"), user);
        n += 1;
        for ch in 0..9 {
            t.insert(&format!("server:s{s}:channel:c{}", (user + ch) % 50), user);
            n += 1;
        }
    }
    assert!(t.len() as u32 <= n);
    let mut g = c.benchmark_group("trie");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup_100k", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = i.wrapping_add(7919);
            let ch = format!("server:s{}:channel:c{}", i % 1000, i % 50);
            let mut hits = 0u32;
            t.for_each_covering(black_box(&ch), |_| hits += 1);
            black_box(hits)
        })
    });
    g.finish();
}

#[derive(serde::Deserialize)]
struct SerdeIncoming<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
}

/// The same work as `event::build`, with serde_json.
fn build_serde(channel: &str, body: &[u8], seq: u64) -> Option<Vec<u8>> {
    let inc: SerdeIncoming = serde_json::from_slice(body).ok()?;
    let mut text = Vec::with_capacity(64 + body.len());
    text.extend_from_slice(br#"{"type":"EVENT","seq":"#);
    text.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    text.extend_from_slice(br#","payload":{"event":"#);
    serde_json::to_writer(&mut text, &*inc.ty).ok()?;
    text.extend_from_slice(br#","channel":"#);
    serde_json::to_writer(&mut text, channel).ok()?;
    text.extend_from_slice(br#","payload":"#);
    text.extend_from_slice(inc.payload.map(|p| p.get()).unwrap_or("null").as_bytes());
    text.extend_from_slice(b"}}");
    Some(frame::text_frame(&text))
}

fn parse_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Bytes(BODY.len() as u64));
    let now = Instant::now();
    g.bench_function("sonic_rs", |b| {
        b.iter(|| black_box(event::build(b"server:s42:channel:c7", black_box(BODY), 1, now).ok()))
    });
    g.bench_function("serde_json", |b| {
        b.iter(|| black_box(build_serde("server:s42:channel:c7", black_box(BODY), 1)))
    });
    g.finish();
}

fn fanout_local(c: &mut Criterion) {
    fanout_bench(c, "10k_local", false);
    fanout_bench(c, "10k_local_deflate", true);
}

fn fanout_bench(c: &mut Criterion, name: &str, deflate: bool) {
    let n = 10_000u32;
    let mut conns: Slab<Rc<Conn>> = Slab::new();
    let mut t: Trie<u32> = Trie::new();
    for i in 0..n {
        let conn = Conn::new(i as u64, "127.0.0.1".parse().unwrap(), None, deflate);
        let key = conns.insert(conn.clone()) as u32;
        conn.key.set(key);
        t.insert("live:big", key);
    }
    let ev = event::build(b"live:big", BODY, 1, Instant::now()).unwrap();
    let mut seq = 1u64;
    let mut dirty = Vec::with_capacity(n as usize);
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            seq += 1;
            let e = Event::new(seq, ev.channel.clone(), ev.frame.clone(), ev.received);
            let o = fanout::deliver_into(&t, &conns, black_box(&e), 1 << 20, &mut dirty);
            dirty.clear();
            assert_eq!(o.delivered, n as u64);
            // What the writers would do: take the bytes out.
            for (_, c) in conns.iter() {
                c.out.buf.borrow_mut().clear();
                c.out.pending_since.set(None);
                c.out.dirty.set(false);
            }
        })
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let ev = event::build(b"server:s42:channel:c7", BODY, 123_456, Instant::now()).unwrap();
    let text = frame::payload(&ev.frame).to_vec();
    let mut z = xcord_gateway::protocol::deflate::compressor();
    let compressed = xcord_gateway::protocol::deflate::compress_frame(&text, &mut z);
    eprintln!(
        "compression: event frame {} B plain, {} B compressed ({:.0}%)",
        ev.frame.len(),
        compressed.len(),
        100.0 * compressed.len() as f64 / ev.frame.len() as f64
    );
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Elements(1));
    g.bench_function("event", |b| {
        b.iter(|| {
            black_box(xcord_gateway::protocol::deflate::compress_frame(
                black_box(&text),
                &mut z,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, trie, parse_encode, fanout_local, compression);
criterion_main!(benches);
