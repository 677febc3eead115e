//! One connection's protocol, as the worker drives it: TCP connected → upgrade
//! request → `101` → HELLO → HELLO_ACK → SUBSCRIBE in frames the gateway accepts
//! (each answered by SUBSCRIBED; any refusal fails the attempt) → live. Bytes are
//! read into the worker's scratch buffer after what the last read left of a
//! partial frame, and every complete frame is handled in place; events are
//! accounted in any state.

use std::io;
use std::time::{Duration, Instant};

use super::track::{Sink, Tracker};
use super::transport::Transport;
use super::worker::Worker;
use super::ws::{self, Parsed, Upgrade};
use crate::stats::Local;

/// Largest SUBSCRIBE frame we send (the gateway's default --max-message-size is 4096).
const MAX_SUBSCRIBE_BYTES: usize = 3000;
/// The least room a read gets in the scratch buffer.
const MIN_READ: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Waiting for its pacing slot or its backoff.
    Waiting,
    /// Waiting for an attempt slot (connect concurrency).
    Queued,
    Connecting,
    Upgrading,
    Hello,
    Subscribing,
    Live,
    Closing,
    /// Failed, lost or stopped: waits for the next round.
    Done,
}

impl State {
    pub(super) fn in_attempt(self) -> bool {
        matches!(
            self,
            State::Connecting | State::Upgrading | State::Hello | State::Subscribing
        )
    }

    fn waiting_for(self) -> &'static str {
        match self {
            State::Upgrading => "the upgrade",
            State::Hello => "HELLO_ACK",
            State::Subscribing => "SUBSCRIBED",
            _ => "the connection",
        }
    }
}

pub(super) struct Conn {
    /// The connection's index in the plan.
    pub id: usize,
    pub state: State,
    /// Bumped whenever a deadline of this connection becomes void.
    pub gen: u32,
    pub attempts: u32,
    /// Holds one of the thread's attempt slots.
    pub in_flight: bool,
    /// Connect again once closed (a reconnect round).
    pub restart: bool,
    pub sock: Option<Transport>,
    /// Bytes of a partial frame (or upgrade answer) left by the last read.
    pub leftover: Vec<u8>,
    /// Bytes the partial frame needs in all.
    need: usize,
    /// Bytes the kernel has not taken yet (plain sockets).
    pub pending: Vec<u8>,
    /// A fragmented message being put together (and whether it is compressed).
    pub frag: Option<Vec<u8>>,
    frag_compressed: bool,
    /// permessage-deflate was negotiated on this connection.
    deflate: bool,
    tracker: Tracker,
    token: Option<String>,
    /// The expected `Sec-WebSocket-Accept` while upgrading.
    accept: String,
    pub t0: Instant,
    pub handshake: Duration,
    pub t_sub: Instant,
    /// heartbeatInterval of HELLO_ACK.
    pub hb: Duration,
    /// Next subscription to send, and the size of the chunk in flight.
    sub_pos: usize,
    chunk: usize,
    errors: Vec<String>,
}

impl Conn {
    pub(super) fn new(id: usize, tracked: &[u32]) -> Conn {
        let now = Instant::now();
        Conn {
            id,
            state: State::Done,
            gen: 0,
            attempts: 0,
            in_flight: false,
            restart: false,
            sock: None,
            leftover: Vec::new(),
            need: 0,
            pending: Vec::new(),
            frag: None,
            frag_compressed: false,
            deflate: false,
            tracker: Tracker::new(tracked),
            token: None,
            accept: String::new(),
            t0: now,
            handshake: Duration::ZERO,
            t_sub: now,
            hb: Duration::from_secs(30),
            sub_pos: 0,
            chunk: 0,
            errors: Vec::new(),
        }
    }

    pub(super) fn reset_attempt(&mut self) {
        self.tracker.reset_seq();
        self.leftover.clear();
        self.need = 0;
        self.pending.clear();
        self.frag = None;
        self.deflate = false;
        self.sub_pos = 0;
        self.chunk = 0;
        self.errors.clear();
    }
}

impl Worker {
    /// A readiness event for connection `idx`.
    pub(super) fn on_event(
        &mut self,
        idx: usize,
        readable: bool,
        writable: bool,
        hist: &mut Local,
    ) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        let Some(sock) = c.sock.as_mut() else {
            return; // an event of a socket closed earlier in this turn
        };
        if c.state == State::Connecting {
            match sock.connected() {
                Ok(true) => {
                    if !self.on_tcp_connected(idx) {
                        return;
                    }
                }
                Ok(false) => return,
                Err(e) => return self.fail(idx, format!("TCP connect: {e}")),
            }
        } else if writable {
            let c = &mut self.conns[idx];
            if let Some(s) = c.sock.as_mut() {
                if let Err(e) = s.flush(&mut c.pending) {
                    return self.fail(idx, format!("error: {e}"));
                }
            }
        }
        if readable {
            self.on_readable(idx, hist);
        }
    }

    /// TCP is up: send the upgrade request.
    fn on_tcp_connected(&mut self, idx: usize) -> bool {
        let key = ws::new_key();
        self.conns[idx].accept = ws::accept_for(&key);
        self.conns[idx].state = State::Upgrading;
        let mut req = std::mem::take(&mut self.out);
        req.clear();
        let t = &self.env.target;
        ws::upgrade_request(
            &t.host_header,
            &t.path,
            &key,
            self.env.compression,
            &mut req,
        );
        let ok = self.write_raw(idx, &req);
        self.out = req;
        ok
    }

    /// Read until the socket has nothing more, handling every complete frame.
    fn on_readable(&mut self, idx: usize, hist: &mut Local) {
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            let c = &mut self.conns[idx];
            let Some(sock) = c.sock.as_mut() else { break };
            let left = c.leftover.len();
            let want = (left + MIN_READ).max(c.need + 1024);
            if scratch.len() < want {
                scratch.resize(want, 0);
            }
            scratch[..left].copy_from_slice(&c.leftover);
            match sock.read(&mut scratch[left..]) {
                Ok(0) => {
                    let why = if c.state == State::Live {
                        "ended without close".to_owned()
                    } else {
                        format!(
                            "connection ended while waiting for {}",
                            c.state.waiting_for()
                        )
                    };
                    self.fail(idx, why);
                    break;
                }
                Ok(n) => {
                    c.leftover.clear();
                    // A short read of a plain socket emptied its receive queue: the
                    // next arrival raises a new edge, so no read just to see EAGAIN.
                    let drained = n < scratch.len() - left
                        && c.sock.as_ref().is_some_and(Transport::is_plain);
                    if !self.process(idx, &scratch[..left + n], hist) || drained {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(idx, format!("error: {e}"));
                    break;
                }
            }
        }
        if scratch.len() > 1 << 20 {
            scratch.truncate(64 * 1024);
            scratch.shrink_to_fit();
        }
        self.scratch = scratch;
    }

    /// Handle the frames in `buf`; keep a partial one. `false` once the
    /// connection is gone.
    fn process(&mut self, idx: usize, buf: &[u8], hist: &mut Local) -> bool {
        let mut pos = 0;
        if self.conns[idx].state == State::Upgrading {
            match ws::parse_upgrade(buf, &self.conns[idx].accept) {
                Upgrade::Partial => {
                    self.conns[idx].leftover.extend_from_slice(buf);
                    return true;
                }
                Upgrade::Refused(r) => {
                    self.fail(idx, r);
                    return false;
                }
                Upgrade::Done(off, deflate) => {
                    pos = off;
                    if deflate && !self.env.compression {
                        self.fail(idx, "permessage-deflate accepted but not offered".into());
                        return false;
                    }
                    self.conns[idx].deflate = deflate;
                    if !self.send_hello(idx) {
                        return false;
                    }
                }
            }
        }
        while pos < buf.len() {
            match ws::parse_frame(buf, pos, self.conns[idx].deflate) {
                Parsed::Need(n) => {
                    let c = &mut self.conns[idx];
                    c.leftover.extend_from_slice(&buf[pos..]);
                    c.need = n - pos;
                    return true;
                }
                Parsed::Error(e) => {
                    self.fail(idx, format!("protocol error: {e}"));
                    return false;
                }
                Parsed::Frame(f) => {
                    pos = f.end;
                    if !self.on_frame(idx, f, &buf[f.start..f.end], hist) {
                        return false;
                    }
                }
            }
        }
        self.conns[idx].need = 0;
        true
    }

    fn on_frame(&mut self, idx: usize, f: ws::Frame, payload: &[u8], hist: &mut Local) -> bool {
        self.wire = f.end - f.head;
        match f.opcode {
            ws::OP_TEXT if f.fin && f.compressed => self.on_compressed(idx, payload, hist),
            ws::OP_TEXT if f.fin => self.on_message(idx, payload, hist),
            ws::OP_BINARY if f.fin => true,
            ws::OP_TEXT | ws::OP_BINARY => {
                let c = &mut self.conns[idx];
                c.frag = Some(payload.to_vec());
                c.frag_compressed = f.compressed;
                true
            }
            ws::OP_CONT => {
                let c = &mut self.conns[idx];
                let Some(mut m) = c.frag.take() else {
                    self.fail(idx, "protocol error: continuation without a start".into());
                    return false;
                };
                m.extend_from_slice(payload);
                if m.len() > ws::MAX_FRAME {
                    self.fail(idx, "protocol error: message over 1 MiB".into());
                    return false;
                }
                if !f.fin {
                    self.conns[idx].frag = Some(m);
                    true
                } else if self.conns[idx].frag_compressed {
                    self.on_compressed(idx, &m, hist)
                } else {
                    self.on_message(idx, &m, hist)
                }
            }
            ws::OP_PING => self.send(idx, ws::OP_PONG, payload),
            ws::OP_PONG => true,
            ws::OP_CLOSE => {
                let why = ws::close_code(payload)
                    .map_or_else(|| "close without code".to_owned(), |c| format!("close {c}"));
                match self.conns[idx].state {
                    State::Closing => self.closed(idx),
                    s if s.in_attempt() => self.fail(
                        idx,
                        format!(
                            "closed by the gateway ({why}) while waiting for {}",
                            s.waiting_for()
                        ),
                    ),
                    _ => self.fail(idx, why),
                }
                false
            }
            _ => {
                self.fail(idx, "protocol error: unknown opcode".into());
                false
            }
        }
    }

    /// One complete compressed text message: inflated with the thread's
    /// decompressor into the thread's buffer, then handled as any other.
    fn on_compressed(&mut self, idx: usize, msg: &[u8], hist: &mut Local) -> bool {
        let mut text = std::mem::take(&mut self.inflated);
        let ok = match ws::inflate(&mut self.inflater, msg, &mut text) {
            Ok(()) => {
                self.compressed = true;
                let ok = self.on_message(idx, &text, hist);
                self.compressed = false;
                ok
            }
            Err(e) => {
                self.fail(idx, format!("protocol error: {e}"));
                false
            }
        };
        if text.capacity() > 1 << 20 {
            text = Vec::new();
        }
        self.inflated = text;
        ok
    }

    /// One complete text message. Events and PONGs are read in place; the few
    /// control answers (HELLO_ACK, SUBSCRIBED, ERROR) are parsed as JSON.
    fn on_message(&mut self, idx: usize, text: &[u8], hist: &mut Local) -> bool {
        if text.starts_with(br#"{"type":"EVENT""#) {
            self.account(idx, text, hist);
            return true;
        }
        if text.starts_with(br#"{"type":"PONG""#) {
            self.acc.pongs += 1;
            return true;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) else {
            self.fail(idx, "frame is not JSON".into());
            return false;
        };
        let payload = v.get("payload").cloned().unwrap_or_default();
        let state = self.conns[idx].state;
        match v.get("type").and_then(|t| t.as_str()) {
            Some("EVENT") | Some("PONG") => {
                self.account(idx, text, hist);
                true
            }
            Some("HELLO_ACK") if state == State::Hello => {
                let hb = payload
                    .get("heartbeatInterval")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(30_000);
                let c = &mut self.conns[idx];
                c.hb = Duration::from_millis(hb.max(10));
                c.handshake = c.t0.elapsed();
                c.t_sub = Instant::now();
                c.state = State::Subscribing;
                self.subscribe_next(idx)
            }
            Some("SUBSCRIBED") if state == State::Subscribing => {
                let granted = payload
                    .get("channels")
                    .and_then(|c| c.as_array())
                    .map_or(0, |a| a.len());
                let c = &self.conns[idx];
                if !c.errors.is_empty() || granted < c.chunk {
                    let why = format!(
                        "SUBSCRIBE refused ({granted} of {} granted): {}",
                        c.chunk,
                        c.errors.join("; ")
                    );
                    self.fail(idx, why);
                    return false;
                }
                self.subscribe_next(idx)
            }
            Some("ERROR") => {
                let g = |k: &str| payload.get(k).and_then(|c| c.as_str()).unwrap_or("");
                let e = format!("{} {}", g("code"), g("message"));
                self.conns[idx].errors.push(e);
                true
            }
            _ => true,
        }
    }

    fn account(&mut self, idx: usize, text: &[u8], hist: &mut Local) {
        let env = &self.env;
        let mut sink = Sink {
            acc: &mut self.acc,
            hist,
            plan: &env.plan,
            clock: &env.clock,
            run_id: env.run_id,
        };
        let before = sink.acc.received;
        self.conns[idx].tracker.on_text(text, &mut sink);
        if self.acc.received > before {
            // A delivery of this run: what it cost on the wire.
            self.acc.wire_bytes += self.wire as u64;
            self.acc.compressed += u64::from(self.compressed);
        }
    }

    fn send_hello(&mut self, idx: usize) -> bool {
        let c = &mut self.conns[idx];
        c.state = State::Hello;
        if c.token.is_none() {
            match self.env.tokens.sign(&self.env.plan.conns[c.id]) {
                Ok(t) => c.token = Some(t),
                Err(e) => {
                    self.fail(idx, format!("{e:#}"));
                    return false;
                }
            }
        }
        let token = self.conns[idx].token.as_deref().unwrap_or_default();
        let hello = serde_json::json!({"type": "HELLO", "payload": {"token": token}}).to_string();
        self.send_text(idx, hello.as_bytes())
    }

    /// Send the next SUBSCRIBE chunk, or go live when every channel is granted.
    fn subscribe_next(&mut self, idx: usize) -> bool {
        let env = self.env.clone();
        let subs = &env.plan.conns[self.conns[idx].id].subscribe;
        let c = &mut self.conns[idx];
        if c.sub_pos >= subs.len() {
            self.attempt_ok(idx);
            return true;
        }
        let mut chunk: Vec<&str> = Vec::new();
        let mut bytes = 64;
        while c.sub_pos < subs.len()
            && (chunk.is_empty() || bytes + subs[c.sub_pos].len() + 3 < MAX_SUBSCRIBE_BYTES)
        {
            bytes += subs[c.sub_pos].len() + 3;
            chunk.push(&subs[c.sub_pos]);
            c.sub_pos += 1;
        }
        c.chunk = chunk.len();
        let msg = serde_json::json!({"type": "SUBSCRIBE", "payload": {"channels": chunk}});
        self.send_text(idx, msg.to_string().as_bytes())
    }

    pub(super) fn send_text(&mut self, idx: usize, text: &[u8]) -> bool {
        self.send(idx, ws::OP_TEXT, text)
    }

    /// Send one masked frame; `false` (and the connection failed) on error.
    pub(super) fn send(&mut self, idx: usize, opcode: u8, payload: &[u8]) -> bool {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        ws::write_frame(&mut out, opcode, payload);
        let ok = self.write_raw(idx, &out);
        self.out = out;
        ok
    }

    fn write_raw(&mut self, idx: usize, bytes: &[u8]) -> bool {
        let c = &mut self.conns[idx];
        let Some(s) = c.sock.as_mut() else {
            return false;
        };
        match s.write(bytes, &mut c.pending) {
            Ok(()) => true,
            Err(e) => {
                self.fail(idx, format!("send failed: {e}"));
                false
            }
        }
    }

    /// The connection ended or failed: what that means depends on its state.
    pub(super) fn fail(&mut self, idx: usize, why: String) {
        match self.conns[idx].state {
            s if s.in_attempt() => self.attempt_failed(idx, why),
            State::Live => self.lost(idx, why),
            State::Closing => self.closed(idx),
            _ => self.drop_socket(idx),
        }
    }
}
