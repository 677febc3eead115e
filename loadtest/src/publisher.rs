//! The open-loop publisher. It runs on its own OS thread; event `i` of a phase has
//! the intended send time `start + i / rate`, fixed before the phase starts, and
//! that time travels in the event — so when the publisher, Redis or the gateway
//! stalls, every event behind the stall is charged for it (no coordinated
//! omission). Events that are due are sent as one Redis pipeline (or, for the
//! admin route, one keep-alive POST after another).
//!
//! Each event: `{"type":"lt.event","payload":{"lt":{"run":R,"seq":S,"ch":C,"k":K,
//! "s":STEP,"t":INTENDED_UNIX_NS},"pad":"…"}}`, padded to `event_bytes`. `seq` is
//! global, `k` counts the events of channel `C`. The test hook (`--drop-event`,
//! `--drop-every`) skips chosen events while still counting them as expected.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::plan::Plan;
use crate::scenario::PublisherKind;
use crate::stats::Counters;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: PublisherKind,
    pub redis_url: Option<String>,
    pub admin_addr: Option<SocketAddr>,
    pub admin_token: Option<String>,
}

/// A minimal HTTP/1.1 keep-alive client for `POST /api/v1/publish`.
struct AdminClient {
    addr: SocketAddr,
    token: String,
    conn: Option<BufReader<TcpStream>>,
}

impl AdminClient {
    fn open(&mut self) -> Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .with_context(|| format!("connect to the admin listener {}", self.addr))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_write_timeout(Some(Duration::from_secs(10)))?;
            self.conn = Some(BufReader::new(s));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| anyhow!("no admin connection"))
    }

    /// POST once; returns the HTTP status.
    fn post_once(&mut self, body: &str) -> Result<(u16, bool)> {
        let req = format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            self.addr,
            self.token,
            body.len(),
            body
        );
        let conn = self.open()?;
        conn.get_mut()
            .write_all(req.as_bytes())
            .context("write the publish request")?;
        let mut line = String::new();
        let n = conn.read_line(&mut line).context("read the status line")?;
        if n == 0 {
            // Closed before answering: the request was not taken.
            return Ok((0, true));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                bail!("connection closed inside the response headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().unwrap_or(0);
                } else if k == "connection" && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut sink = vec![0u8; len];
        conn.read_exact(&mut sink)
            .context("read the response body")?;
        if close {
            self.conn = None;
        }
        Ok((status, false))
    }

    fn post(&mut self, body: &str) -> Result<u16> {
        match self.post_once(body) {
            Ok((_, true)) | Err(_) if self.conn.is_some() => {
                // A stale keep-alive connection: one more try on a fresh one.
                self.conn = None;
                let (status, closed) = self.post_once(body)?;
                if closed {
                    self.conn = None;
                    bail!("the admin listener closed the connection without answering");
                }
                Ok(status)
            }
            Ok((_, true)) => bail!("the admin listener closed the connection without answering"),
            Ok((status, false)) => Ok(status),
            Err(e) => Err(e),
        }
    }
}

enum Sink {
    Redis {
        client: redis::Client,
        conn: Option<redis::Connection>,
    },
    Admin(AdminClient),
}

impl Sink {
    /// Send a batch in order. Returns how many failed and the first error.
    fn send(&mut self, batch: &[(u32, String)], plan: &Plan) -> (u64, Option<String>) {
        match self {
            Sink::Redis { client, conn } => {
                if conn.is_none() {
                    match client.get_connection_with_timeout(Duration::from_secs(5)) {
                        Ok(c) => *conn = Some(c),
                        Err(e) => return (batch.len() as u64, Some(format!("redis: {e}"))),
                    }
                }
                let Some(c) = conn.as_mut() else {
                    return (batch.len() as u64, Some("redis: no connection".into()));
                };
                let mut pipe = redis::pipe();
                for (ch, body) in batch {
                    pipe.cmd("PUBLISH")
                        .arg(format!("events:{}", plan.channel_names[*ch as usize]))
                        .arg(body.as_str())
                        .ignore();
                }
                match pipe.query::<()>(c) {
                    Ok(()) => (0, None),
                    Err(e) => {
                        *conn = None;
                        (batch.len() as u64, Some(format!("redis PUBLISH: {e}")))
                    }
                }
            }
            Sink::Admin(a) => {
                let mut failed = 0;
                let mut first = None;
                for (_, body) in batch {
                    match a.post(body) {
                        Ok(202) => {}
                        Ok(s) => {
                            failed += 1;
                            first.get_or_insert_with(|| format!("admin publish: HTTP {s}"));
                        }
                        Err(e) => {
                            failed += 1;
                            first.get_or_insert_with(|| format!("admin publish: {e:#}"));
                        }
                    }
                }
                (failed, first)
            }
        }
    }
}

/// What one publishing phase did.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    pub rate: f64,
    /// Events the schedule held (published + deliberately dropped).
    pub scheduled: u64,
    pub published: u64,
    pub dropped: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Deliveries owed for the scheduled events (dropped ones included).
    pub expected: u64,
    /// Of which owed for deliberately dropped events.
    pub dropped_expected: u64,
    /// Of which owed for events whose publish failed.
    pub failed_expected: u64,
    pub started: Instant,
    pub ended: Instant,
    /// How far behind its schedule the publisher fell at worst.
    pub max_lag: Duration,
}

pub struct Publisher {
    sink: Sink,
    kind: PublisherKind,
    plan: Arc<Plan>,
    clock: Clock,
    run_id: u64,
    event_bytes: usize,
    rng: fastrand::Rng,
    next_k: Vec<u64>,
    next_seq: u64,
    drop_events: BTreeSet<u64>,
    drop_every: u64,
    counters: Arc<Counters>,
}

/// Most events sent in one pipeline.
const MAX_BATCH: usize = 512;

impl Publisher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &Target,
        plan: Arc<Plan>,
        clock: Clock,
        run_id: u64,
        event_bytes: usize,
        seed: u64,
        drop_events: BTreeSet<u64>,
        drop_every: u64,
        counters: Arc<Counters>,
    ) -> Result<Publisher> {
        let sink = match target.kind {
            PublisherKind::Redis => {
                let url = target
                    .redis_url
                    .as_deref()
                    .ok_or_else(|| anyhow!("--publisher redis needs --redis URL"))?;
                let client = redis::Client::open(url).context("bad --redis URL")?;
                let mut conn = client
                    .get_connection_with_timeout(Duration::from_secs(5))
                    .with_context(|| format!("cannot connect to Redis at {url}"))?;
                let _: String = redis::cmd("PING").query(&mut conn).context("Redis PING")?;
                Sink::Redis {
                    client,
                    conn: Some(conn),
                }
            }
            PublisherKind::Admin => {
                let addr = target
                    .admin_addr
                    .ok_or_else(|| anyhow!("--publisher admin needs --admin ADDR"))?;
                let token = target
                    .admin_token
                    .clone()
                    .ok_or_else(|| anyhow!("--publisher admin needs --admin-token"))?;
                Sink::Admin(AdminClient {
                    addr,
                    token,
                    conn: None,
                })
            }
        };
        let n = plan.channel_names.len();
        Ok(Publisher {
            sink,
            kind: target.kind,
            plan,
            clock,
            run_id,
            event_bytes,
            rng: fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15),
            next_k: vec![0; n],
            next_seq: 0,
            drop_events,
            drop_every,
            counters,
        })
    }

    fn body(&self, seq: u64, ch: u32, k: u64, step: u32, t: u64) -> String {
        let lt = format!(
            r#"{{"lt":{{"run":{},"seq":{seq},"ch":{ch},"k":{k},"s":{step},"t":{t}}}"#,
            self.run_id
        );
        let (head, tail) = match self.kind {
            PublisherKind::Redis => (r#"{"type":"lt.event","payload":"#.to_owned(), "}"),
            PublisherKind::Admin => (
                format!(
                    r#"{{"channel":"{}","event":"lt.event","payload":"#,
                    self.plan.channel_names[ch as usize]
                ),
                "}",
            ),
        };
        let bare = head.len() + lt.len() + 1 + tail.len();
        let with_pad = bare + r#","pad":"""#.len();
        let mut out = String::with_capacity(self.event_bytes.max(bare));
        out.push_str(&head);
        out.push_str(&lt);
        if self.event_bytes > with_pad {
            out.push_str(r#","pad":""#);
            out.extend(std::iter::repeat_n('x', self.event_bytes - with_pad));
            out.push('"');
        }
        out.push('}');
        out.push_str(tail);
        out
    }

    fn is_dropped(&self, seq: u64) -> bool {
        self.drop_events.contains(&seq) || (self.drop_every > 0 && (seq + 1) % self.drop_every == 0)
    }

    /// Publish `round(rate * duration)` events of `step` at `rate`, open loop.
    /// `subscribers[ch]` is how many ready connections cover channel `ch`.
    pub fn run_phase(
        &mut self,
        step: u32,
        rate: f64,
        duration: Duration,
        subscribers: &[u32],
        abort: &AtomicBool,
    ) -> PhaseReport {
        let n = (rate * duration.as_secs_f64()).round().max(0.0) as u64;
        let start = Instant::now() + Duration::from_millis(5);
        let mut r = PhaseReport {
            rate,
            scheduled: 0,
            published: 0,
            dropped: 0,
            errors: 0,
            first_error: None,
            expected: 0,
            dropped_expected: 0,
            failed_expected: 0,
            started: start,
            ended: start,
            max_lag: Duration::ZERO,
        };
        let intended = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
        let mut i = 0u64;
        let mut batch: Vec<(u32, String)> = Vec::with_capacity(MAX_BATCH);
        let mut batch_owed: Vec<u64> = Vec::with_capacity(MAX_BATCH);
        while i < n {
            if abort.load(Relaxed) {
                break;
            }
            let now = Instant::now();
            let due = intended(i);
            if due > now {
                std::thread::sleep(due - now);
                continue;
            }
            r.max_lag = r.max_lag.max(now - due);
            batch.clear();
            batch_owed.clear();
            while i < n && batch.len() < MAX_BATCH {
                let t_i = intended(i);
                if t_i > now {
                    break;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                let ch = self.plan.chooser.pick(seq, &mut self.rng);
                let k = self.next_k[ch as usize];
                self.next_k[ch as usize] += 1;
                let owed = subscribers.get(ch as usize).copied().unwrap_or(0) as u64;
                r.scheduled += 1;
                r.expected += owed;
                self.counters.expected.fetch_add(owed, Relaxed);
                if self.is_dropped(seq) {
                    r.dropped += 1;
                    r.dropped_expected += owed;
                } else {
                    batch.push((ch, self.body(seq, ch, k, step, self.clock.unix_ns(t_i))));
                    batch_owed.push(owed);
                }
                i += 1;
            }
            if !batch.is_empty() {
                let (failed, err) = self.sink.send(&batch, &self.plan);
                if failed > 0 {
                    r.errors += failed;
                    // A failed pipeline loses all of it; admin failures are per event
                    // but we cannot tell which here, so charge the batch's mean.
                    let owed: u64 = batch_owed.iter().sum();
                    r.failed_expected += owed * failed / batch.len() as u64;
                    if r.first_error.is_none() {
                        r.first_error = err;
                    }
                }
                let ok = batch.len() as u64 - failed;
                r.published += ok;
                self.counters.published.fetch_add(ok, Relaxed);
            }
        }
        r.ended = Instant::now();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn publisher(kind: PublisherKind, bytes: usize) -> Publisher {
        let plan = Arc::new(Plan::build(&Scenario::default(), 1));
        let n = plan.channel_names.len();
        Publisher {
            sink: Sink::Admin(AdminClient {
                addr: "127.0.0.1:9".parse().expect("addr"),
                token: "t".into(),
                conn: None,
            }),
            kind,
            plan,
            clock: Clock::new(),
            run_id: 42,
            event_bytes: bytes,
            rng: fastrand::Rng::with_seed(1),
            next_k: vec![0; n],
            next_seq: 0,
            drop_events: [3].into_iter().collect(),
            drop_every: 10,
            counters: Arc::new(Counters::new()),
        }
    }

    #[test]
    fn bodies_are_padded_json_with_lt() {
        for kind in [PublisherKind::Redis, PublisherKind::Admin] {
            let p = publisher(kind, 300);
            let b = p.body(5, 2, 1, 0, 1_700_000_000_000_000_000);
            assert_eq!(b.len(), 300, "{b}");
            let v: serde_json::Value = serde_json::from_str(&b).expect("json");
            let lt = &v["payload"]["lt"];
            assert_eq!(lt["run"], 42);
            assert_eq!(lt["ch"], 2);
            let frame = format!(
                r#"{{"type":"EVENT","seq":1,"payload":{{"event":"lt.event","channel":"x","payload":{}}}}}"#,
                serde_json::to_string(&v["payload"]).expect("ser")
            );
            let got = crate::conn::parse_lt(&frame).expect("parse");
            assert_eq!((got.seq, got.k), (5, 1));
        }
        // Smaller than the bare event: no padding at all.
        let p = publisher(PublisherKind::Redis, 10);
        assert!(!p.body(0, 0, 0, 0, 1).contains("pad"));
    }

    #[test]
    fn drop_hook() {
        let p = publisher(PublisherKind::Redis, 10);
        let dropped: Vec<u64> = (0..30).filter(|s| p.is_dropped(*s)).collect();
        assert_eq!(dropped, vec![3, 9, 19, 29]);
    }
}
