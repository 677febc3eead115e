//! One chaos client, on its own thread with blocking sockets (a few hundred of
//! them; this scenario measures correctness, not speed). It implements the
//! client side of SPEC §8: after any drop it reconnects with full-jitter
//! exponential backoff and sends `RESUME {token, sessionId, seq}` with the last
//! `seq` it saw; on `INVALID_SESSION` it starts over with `HELLO` and
//! re-subscribes on the same connection; on `4011` (the node drains) or a node
//! that refuses, it moves to another live node. It logs what happened to it
//! (sessions, drops and their causes, resumes) and every event it received, with
//! the time, for the accounting.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::track::parse_lt;
use crate::engine::ws::{self, Parsed};

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Reset by the fault injector (RST).
    Reset,
    /// The node drained (4011) or refused while draining.
    Drain,
    /// Anything else (a close code, an error, a timeout).
    Other,
}

/// What happened to a client, in order.
#[derive(Debug, Clone, Copy)]
pub enum Mark {
    /// SUBSCRIBED read after HELLO: a new session covers its channels from here.
    NewSession(f64),
    Dropped(f64, Cause),
    /// RESUMED, with the number of events replayed.
    Resumed(u64),
    Invalid(f64),
}

/// A gateway node the clients may use.
pub struct Node {
    pub addr: SocketAddr,
    pub alive: AtomicBool,
}

/// What the controller shares with a client.
pub struct Shared {
    /// A clone of the live socket, for the fault injector.
    pub sock: Mutex<Option<TcpStream>>,
    pub attached: AtomicBool,
    pub reset_pending: AtomicBool,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            sock: Mutex::new(None),
            attached: AtomicBool::new(false),
            reset_pending: AtomicBool::new(false),
        }
    }

    /// Reset the connection (SO_LINGER 0): wake the reader, which closes the
    /// socket, and the kernel sends RST. `false` when not attached.
    pub fn reset(&self) -> bool {
        let Ok(g) = self.sock.lock() else {
            return false;
        };
        let Some(s) = g.as_ref() else { return false };
        if !self.attached.load(Relaxed) {
            return false;
        }
        self.reset_pending.store(true, Relaxed);
        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        let _ = s.shutdown(std::net::Shutdown::Read);
        true
    }
}

/// A client's record of the run.
pub struct Log {
    pub channels: Vec<u32>,
    /// Per channel of `channels`: (k, receipt time), in receipt order.
    pub receipts: Vec<Vec<(u64, f64)>>,
    pub marks: Vec<Mark>,
    /// Whether it was attached when the run stopped.
    pub attached_at_end: bool,
}

pub struct Client {
    pub token: String,
    pub channels: Vec<u32>,
    pub channel_names: Vec<String>,
    pub nodes: Arc<Vec<Node>>,
    pub node: usize,
    pub shared: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
    pub base: Instant,
    pub run_id: u64,
}

enum End {
    Dropped(Cause),
    Stop,
}

struct Session {
    id: String,
    seq: u64,
}

/// A blocking WebSocket connection: frames parsed from `buf`.
struct Ws {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    fn send(&mut self, text: &str) -> io::Result<()> {
        let mut out = Vec::with_capacity(text.len() + 14);
        ws::write_frame(&mut out, ws::OP_TEXT, text.as_bytes());
        self.s.write_all(&out)
    }

    /// The next complete frame (opcode, payload); `Err(WouldBlock/TimedOut)` on a
    /// read timeout.
    fn next(&mut self) -> io::Result<(u8, Vec<u8>)> {
        loop {
            match ws::parse_frame(&self.buf, 0, false) {
                Parsed::Frame(f) => {
                    let p = self.buf[f.start..f.end].to_vec();
                    self.buf.drain(..f.end);
                    if f.opcode == ws::OP_PING {
                        let mut out = Vec::new();
                        ws::write_frame(&mut out, ws::OP_PONG, &p);
                        self.s.write_all(&out)?;
                        continue;
                    }
                    return Ok((f.opcode, p));
                }
                Parsed::Error(e) => return Err(io::Error::other(e)),
                Parsed::Need(_) => {}
            }
            let mut tmp = [0u8; 16 * 1024];
            let n = self.s.read(&mut tmp)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Client {
    fn now(&self) -> f64 {
        self.base.elapsed().as_secs_f64()
    }

    /// The client's life until the run stops.
    pub fn run(mut self) -> Log {
        let mut log = Log {
            channels: self.channels.clone(),
            receipts: vec![Vec::new(); self.channels.len()],
            marks: Vec::new(),
            attached_at_end: false,
        };
        let mut session: Option<Session> = None;
        let mut failures = 0u32;
        while !self.stop.load(Relaxed) {
            if !self.nodes[self.node].alive.load(Relaxed) {
                self.move_node();
            }
            let end = self.connection(&mut session, &mut log, &mut failures);
            self.shared.attached.store(false, Relaxed);
            if let Ok(mut g) = self.shared.sock.lock() {
                *g = None;
            }
            match end {
                End::Stop => {
                    log.attached_at_end = true;
                    break;
                }
                End::Dropped(cause) => {
                    if log
                        .marks
                        .last()
                        .is_some_and(|m| !matches!(m, Mark::Dropped(..)))
                    {
                        log.marks.push(Mark::Dropped(self.now(), cause));
                    }
                    if cause == Cause::Drain {
                        self.move_node();
                    }
                    failures += 1;
                    // Full jitter: uniform in [0, min(cap, base·2^n)].
                    let cap = Duration::from_millis(50)
                        .saturating_mul(1 << failures.min(6))
                        .min(Duration::from_secs(2));
                    std::thread::sleep(cap.mul_f64(fastrand::f64()));
                }
            }
        }
        log
    }

    fn move_node(&mut self) {
        let n = self.nodes.len();
        for i in 1..=n {
            let k = (self.node + i) % n;
            if self.nodes[k].alive.load(Relaxed) {
                self.node = k;
                return;
            }
        }
    }

    /// One connection: connect, RESUME or HELLO, then live until it ends.
    fn connection(
        &mut self,
        session: &mut Option<Session>,
        log: &mut Log,
        failures: &mut u32,
    ) -> End {
        let node = &self.nodes[self.node];
        let s = match TcpStream::connect_timeout(&node.addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(_) if !node.alive.load(Relaxed) => return End::Dropped(Cause::Drain),
            Err(_) => return End::Dropped(Cause::Other),
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if let Ok(mut g) = self.shared.sock.lock() {
            *g = s.try_clone().ok();
        }
        self.shared.reset_pending.store(false, Relaxed);
        let mut w = Ws { s, buf: Vec::new() };
        if upgrade(&mut w, &node.addr).is_err() {
            return self.cause_of(None);
        }
        let attached = match session.take() {
            Some(sess) => {
                *session = Some(Session {
                    id: sess.id.clone(),
                    seq: sess.seq,
                });
                self.resume(&mut w, &sess, session, log)
            }
            None => Ok(false),
        };
        let attached = match attached {
            Ok(true) => true,
            Ok(false) => match self.hello(&mut w, session, log) {
                Ok(()) => true,
                Err(code) => return self.cause_of(code),
            },
            Err(code) => return self.cause_of(code),
        };
        if attached {
            *failures = 0;
            self.shared.attached.store(true, Relaxed);
        }
        self.live(&mut w, session, log)
    }

    /// What ended a connection: the reset we injected, a drain, or anything else.
    fn cause_of(&self, close: Option<u16>) -> End {
        if std::env::var_os("XCORD_CHAOS_DEBUG").is_some() {
            eprintln!(
                "client {:?}: connection ended, close {close:?} at {:.2}",
                self.channels,
                self.now()
            );
        }
        if self.shared.reset_pending.swap(false, Relaxed) {
            return End::Dropped(Cause::Reset);
        }
        if close == Some(4011) || !self.nodes[self.node].alive.load(Relaxed) {
            return End::Dropped(Cause::Drain);
        }
        End::Dropped(Cause::Other)
    }

    /// RESUME: `Ok(true)` resumed, `Ok(false)` INVALID_SESSION (HELLO follows),
    /// `Err(close code)` when the connection ends.
    fn resume(
        &self,
        w: &mut Ws,
        sess: &Session,
        session: &mut Option<Session>,
        log: &mut Log,
    ) -> Result<bool, Option<u16>> {
        let m = serde_json::json!({"type": "RESUME", "payload": {
            "token": self.token, "sessionId": sess.id, "seq": sess.seq}});
        w.send(&m.to_string()).map_err(|_| None)?;
        loop {
            let v = self.read_control(w, session, log)?;
            match v.get("type").and_then(|t| t.as_str()) {
                Some("RESUMED") => {
                    let n = v["payload"]["replayed"].as_u64().unwrap_or(0);
                    log.marks.push(Mark::Resumed(n));
                    return Ok(true);
                }
                Some("INVALID_SESSION") => {
                    log.marks.push(Mark::Invalid(self.now()));
                    *session = None;
                    return Ok(false);
                }
                _ => {}
            }
        }
    }

    /// HELLO, then SUBSCRIBE to every channel; the new session covers them from
    /// the SUBSCRIBED on.
    fn hello(
        &self,
        w: &mut Ws,
        session: &mut Option<Session>,
        log: &mut Log,
    ) -> Result<(), Option<u16>> {
        let m = serde_json::json!({"type": "HELLO", "payload": {"token": self.token}});
        w.send(&m.to_string()).map_err(|_| None)?;
        let id = loop {
            let v = self.read_control(w, session, log)?;
            if v["type"] == "HELLO_ACK" {
                break v["payload"]["sessionId"].as_str().unwrap_or("").to_owned();
            }
        };
        *session = Some(Session { id, seq: 0 });
        let m =
            serde_json::json!({"type": "SUBSCRIBE", "payload": {"channels": self.channel_names}});
        w.send(&m.to_string()).map_err(|_| None)?;
        loop {
            let v = self.read_control(w, session, log)?;
            if v["type"] == "SUBSCRIBED" {
                log.marks.push(Mark::NewSession(self.now()));
                return Ok(());
            }
        }
    }

    /// Read until a frame other than an EVENT arrives (events are accounted on
    /// the way); `Err(close code)` when the connection ends.
    fn read_control(
        &self,
        w: &mut Ws,
        session: &mut Option<Session>,
        log: &mut Log,
    ) -> Result<serde_json::Value, Option<u16>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.stop.load(Relaxed) || Instant::now() > deadline {
                return Err(None);
            }
            match w.next() {
                Ok((ws::OP_TEXT, p)) => {
                    if p.starts_with(br#"{"type":"EVENT""#) {
                        self.on_event(&p, session, log);
                        continue;
                    }
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p) {
                        return Ok(v);
                    }
                }
                Ok((ws::OP_CLOSE, p)) => return Err(ws::close_code(&p)),
                Ok(_) => {}
                Err(e) if timed_out(&e) => {}
                Err(_) => return Err(None),
            }
        }
    }

    /// Attached: account events, PING now and then, until the connection ends
    /// or the run stops.
    fn live(&self, w: &mut Ws, session: &mut Option<Session>, log: &mut Log) -> End {
        let mut last_ping = Instant::now();
        loop {
            if self.stop.load(Relaxed) {
                let mut out = Vec::new();
                ws::write_frame(&mut out, ws::OP_CLOSE, &1000u16.to_be_bytes());
                let _ = w.s.write_all(&out);
                return End::Stop;
            }
            if last_ping.elapsed() > Duration::from_secs(5) {
                last_ping = Instant::now();
                if w.send(r#"{"type":"PING","payload":{}}"#).is_err() {
                    return self.cause_of(None);
                }
            }
            match w.next() {
                Ok((ws::OP_TEXT, p)) => {
                    if p.starts_with(br#"{"type":"EVENT""#) {
                        self.on_event(&p, session, log);
                    }
                }
                Ok((ws::OP_CLOSE, p)) => return self.cause_of(ws::close_code(&p)),
                Ok(_) => {}
                Err(e) if timed_out(&e) => {}
                Err(_) => return self.cause_of(None),
            }
        }
    }

    fn on_event(&self, p: &[u8], session: &mut Option<Session>, log: &mut Log) {
        const P: &[u8] = br#"{"type":"EVENT","seq":"#;
        if let Some(rest) = p.strip_prefix(P) {
            let digits: Vec<u8> = rest
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .copied()
                .collect();
            if let Some(seq) = std::str::from_utf8(&digits)
                .ok()
                .and_then(|s| s.parse().ok())
            {
                if let Some(s) = session.as_mut() {
                    s.seq = s.seq.max(seq);
                }
            }
        }
        let Some(lt) = parse_lt(p) else { return };
        if lt.run != self.run_id {
            return;
        }
        if let Ok(i) = self.channels.binary_search(&lt.ch) {
            log.receipts[i].push((lt.k, self.now()));
        }
    }
}

/// The WebSocket upgrade on a blocking socket.
fn upgrade(w: &mut Ws, addr: &SocketAddr) -> io::Result<()> {
    let key = ws::new_key();
    let mut req = Vec::new();
    ws::upgrade_request(&addr.to_string(), "/api/v1/ws", &key, false, &mut req);
    w.s.write_all(&req)?;
    let accept = ws::accept_for(&key);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ws::parse_upgrade(&w.buf, &accept) {
            ws::Upgrade::Done(off, _) => {
                w.buf.drain(..off);
                return Ok(());
            }
            ws::Upgrade::Refused(r) => return Err(io::Error::other(r)),
            ws::Upgrade::Partial => {}
        }
        if Instant::now() > deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut tmp = [0u8; 4096];
        match w.s.read(&mut tmp) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => w.buf.extend_from_slice(&tmp[..n]),
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e),
        }
    }
}
