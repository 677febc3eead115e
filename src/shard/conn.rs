//! One client connection: its state machine and its tasks.
//!
//! States: `AwaitHello` (upgraded; only HELLO or RESUME is allowed) → `Ready`
//! (authenticated; commands, events) → `Closing` (a close code is chosen; nothing is
//! queued after the close frame; the writer flushes and shuts the socket's write
//! side) → gone (the reader saw EOF, or the sweep killed a connection stuck closing).
//!
//! The reader task reads the socket into the shard's scratch buffer, lets
//! tungstenite's frame codec (`WebSocketContext`, owning no socket, made afresh for
//! each read that needs one) turn the bytes into messages, and runs each command in
//! order. Event frames are written by the fan-out itself (`flush_direct`, one
//! `send()` per socket per turn). A writer task exists only while there is
//! something that could not go out that way — replies, pongs, close frames,
//! whatever a socket pushed back: `wake_writer` spawns it, it writes the
//! connection's outbound buffer until it is empty, and ends. An idle connection
//! therefore holds one task, one pending read and its state — about 2.7 KB of RSS
//! (loadtest/RESULTS.md). Only one of them writes at a time: the fan-out writes
//! only while the writer has nothing in flight. The outbound bytes — event frames,
//! replies, tungstenite's pongs — are bounded by `--send-queue-bytes` (4010 past
//! it).
//!
//! Invariant: the reader alone removes the connection from the shard (slab, trie,
//! routes, counters), exactly once, after the writer is gone; then it closes the
//! socket.

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use tungstenite::protocol::{Message, WebSocketContext};

use super::Shard;
use crate::auth::Claims;
use crate::bus::Floor;
use crate::channels::{self, Root, TypingTarget};
use crate::protocol::messages::{self as msg, ClientMsg, DecodeError};
use crate::protocol::{codes, frame, ErrorCode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    AwaitHello,
    Ready,
    Closing,
}

/// A fixed-window rate limiter (SPEC §2 `--rate-limit`): the window opens at the
/// first counted command; `count` commands pass, the rest of the window gets
/// RATE_LIMITED, and the 2×count-th command in one window closes 4008.
#[derive(Debug)]
pub struct RateWindow {
    start: Instant,
    used: u32,
}

pub enum RateVerdict {
    Allow,
    Limited,
    Close,
}

impl RateWindow {
    pub fn new(now: Instant) -> RateWindow {
        RateWindow {
            start: now,
            used: 0,
        }
    }
    pub fn check(&mut self, now: Instant, limit: crate::config::RateLimit) -> RateVerdict {
        if now.duration_since(self.start) >= limit.window {
            self.start = now;
            self.used = 0;
        }
        self.used = self.used.saturating_add(1);
        if self.used >= limit.count.saturating_mul(2) {
            RateVerdict::Close
        } else if self.used > limit.count {
            RateVerdict::Limited
        } else {
            RateVerdict::Allow
        }
    }
}

/// A connection's explicit subscriptions: a sorted vector of names, each with the
/// [`Floor`] of its subscription (for resume) — a few dozen bytes for the usual
/// handful, binary search for the up-to-1000.
#[derive(Debug, Default, Clone)]
pub struct SubSet(Vec<(Box<str>, Floor)>);

impl SubSet {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(name))
    }
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }
    pub fn insert(&mut self, name: &str, floor: Floor) -> bool {
        match self.find(name) {
            Ok(_) => false,
            Err(i) => {
                // Exact growth: most connections hold a handful, idle for hours.
                self.0.reserve_exact(1);
                self.0.insert(i, (name.into(), floor));
                true
            }
        }
    }
    pub fn remove(&mut self, name: &str) -> bool {
        match self.find(name) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| &**n)
    }
    /// Names with their floors.
    pub fn floors(&self) -> impl Iterator<Item = (&str, Floor)> {
        self.0.iter().map(|(n, f)| (&**n, *f))
    }
}

impl FromIterator<(String, Floor)> for SubSet {
    fn from_iter<I: IntoIterator<Item = (String, Floor)>>(it: I) -> Self {
        let mut v: Vec<(Box<str>, Floor)> = it
            .into_iter()
            .map(|(n, f)| (n.into_boxed_str(), f))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        SubSet(v)
    }
}

/// The authenticated part of a connection. Its automatic subscription,
/// `user:{sub}` (not counted, not removable), is derived from the claims.
pub struct Session {
    pub session_id: String,
    pub claims: Claims,
    /// Where the event stream stood when `user:{sub}` was subscribed (resume).
    pub floor: Floor,
    /// Explicit subscriptions (normalised names).
    pub subs: SubSet,
    pub rate: RateWindow,
    /// Typing indicators this session started: channel → when it ends by itself.
    pub typing: Vec<(String, Instant)>,
}

impl Session {
    /// `user:{sub}`, subscribed at HELLO.
    pub fn auto_sub(&self) -> String {
        format!("user:{}", self.claims.sub)
    }

    pub fn is_auto_sub(&self, name: &str) -> bool {
        name.strip_prefix("user:") == Some(self.claims.sub.as_str())
    }
}

pub struct Conn {
    pub key: Cell<u32>,
    pub id: u64,
    pub ip: IpAddr,
    pub out: RefCell<Vec<u8>>,
    /// The socket: the reader reads it, the writer task writes it; taken (closed)
    /// once both are done.
    stream: RefCell<Option<TcpStream>>,
    /// This connection, for spawning its writer task on demand.
    me: Weak<Conn>,
    /// A writer task exists (spawned, running or waiting for the socket).
    writer_running: Cell<bool>,
    /// The writer has half-closed the socket after the close frame.
    write_shut: Cell<bool>,
    /// Bytes handed to the writer and not yet written.
    pub inflight: Cell<usize>,
    /// Bytes at the front of `out` that finish a frame a direct write sent only
    /// part of: they are written whatever happens (a slow-consumer close keeps them,
    /// so the client never sees a frame cut short before the close frame).
    partial: Cell<usize>,
    /// Bus receive time of the oldest event frame not yet written.
    pub pending_since: Cell<Option<Instant>>,
    writer_waker: Cell<Option<Waker>>,
    reader_waker: Cell<Option<Waker>>,
    pub phase: Cell<Phase>,
    pub close_code: Cell<Option<u16>>,
    pub closing_since: Cell<Option<Instant>>,
    pub killed: Cell<bool>,
    /// The peer sent its close frame first.
    pub peer_closed: Cell<bool>,
    pub last_seq: Cell<u64>,
    pub last_rx: Cell<Instant>,
    pub opened: Instant,
    /// Claims from a valid `Authorization: Bearer` header on the upgrade.
    pub header_claims: RefCell<Option<Box<Claims>>>,
    pub session: RefCell<Option<Session>>,
    /// A RESUME is waiting for its grant; holds the (verified) token's claims.
    pub resuming: RefCell<Option<Box<Claims>>>,
    /// HELLO is in progress: events already routed here wait in `held` until
    /// HELLO_ACK is queued.
    pub holding: Cell<bool>,
    pub held: RefCell<Vec<u8>>,
    /// The socket, for the fan-out's direct writes; -1 once killed. `kill` runs
    /// before the stream is dropped, so a reused fd number is never written.
    pub fd: Cell<i32>,
    /// On the shard's dirty list: event frames were queued this fan-out turn.
    pub dirty: Cell<bool>,
}

/// What `Conn::enqueue` did with an event frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Appended to the outbound buffer: someone must flush it.
    Queued,
    /// Kept until HELLO_ACK is queued (nothing to flush yet).
    Held,
    /// Not queued: closing, or this frame made the connection a slow consumer.
    Refused,
}

impl Conn {
    pub fn new(id: u64, ip: IpAddr, header_claims: Option<Claims>) -> Rc<Conn> {
        let header_claims = header_claims.map(Box::new);
        let now = Instant::now();
        Rc::new_cyclic(|me| Conn {
            id,
            key: Cell::new(u32::MAX),
            ip,
            out: RefCell::new(Vec::new()),
            stream: RefCell::new(None),
            me: me.clone(),
            writer_running: Cell::new(false),
            write_shut: Cell::new(false),
            inflight: Cell::new(0),
            partial: Cell::new(0),
            pending_since: Cell::new(None),
            writer_waker: Cell::new(None),
            reader_waker: Cell::new(None),
            phase: Cell::new(Phase::AwaitHello),
            close_code: Cell::new(None),
            closing_since: Cell::new(None),
            killed: Cell::new(false),
            peer_closed: Cell::new(false),
            last_seq: Cell::new(0),
            last_rx: Cell::new(now),
            opened: now,
            header_claims: RefCell::new(header_claims),
            session: RefCell::new(None),
            resuming: RefCell::new(None),
            holding: Cell::new(false),
            held: RefCell::new(Vec::new()),
            fd: Cell::new(-1),
            dirty: Cell::new(false),
        })
    }

    /// Hand the upgraded socket to the connection (before `serve` starts).
    pub fn attach(&self, stream: TcpStream) {
        self.fd.set(stream.as_raw_fd());
        *self.stream.borrow_mut() = Some(stream);
    }

    /// Have the writer task write `out` (and, closing, the close frame and the
    /// half-close): wake it if it waits for the socket, else spawn it. An idle
    /// connection has no writer task: events go out by the fan-out's direct write.
    pub fn wake_writer(&self) {
        if let Some(w) = self.writer_waker.take() {
            if self.writer_running.get() {
                w.wake();
                return;
            }
        }
        if self.writer_running.get() || self.killed.get() || self.write_shut.get() {
            return;
        }
        let (Some(conn), Some(shard)) = (self.me.upgrade(), super::current()) else {
            return;
        };
        // Scheduled, not run in place (`spawn_local` would run it right here,
        // inside the caller's borrows: the fan-out's, the codec's).
        let queue = glommio::executor().current_task_queue();
        if let Ok(t) = glommio::spawn_local_into(writer(shard, conn), queue) {
            self.writer_running.set(true);
            t.detach();
        }
    }

    fn queued(&self) -> usize {
        self.out.borrow().len() + self.inflight.get()
    }

    /// Queue an already-encoded event frame and wake the writer. `false` when the
    /// frame is not queued (closing, or this push made the connection a slow
    /// consumer).
    pub fn push_event(&self, frame: &[u8], received: Instant, limit: usize) -> bool {
        match self.enqueue(frame, received, limit) {
            Push::Queued => {
                self.wake_writer();
                true
            }
            Push::Held => true,
            Push::Refused => false,
        }
    }

    /// FAST PATH: append an already-encoded event frame to the outbound buffer
    /// (or to `held` during HELLO). Wakes nobody: the caller flushes.
    #[inline]
    pub fn enqueue(&self, frame: &[u8], received: Instant, limit: usize) -> Push {
        if self.phase.get() == Phase::Closing {
            return Push::Refused;
        }
        if self.holding.get() {
            // Between routing the user tree and HELLO_ACK (rare, bounded by the limit).
            let mut held = self.held.borrow_mut();
            if held.len() + frame.len() > limit {
                return Push::Refused;
            }
            held.extend_from_slice(frame);
            return Push::Held;
        }
        if self.queued() + frame.len() > limit {
            self.begin_close(codes::SLOW_CONSUMER, true);
            return Push::Refused;
        }
        self.out.borrow_mut().extend_from_slice(frame);
        if self.pending_since.get().is_none() {
            self.pending_since.set(Some(received));
        }
        Push::Queued
    }

    /// FAST PATH: write what this fan-out turn queued straight to the socket — one
    /// non-blocking `send()` for all of this turn's frames, no task wake-up. What the
    /// socket does not take now (or anything while the writer is mid-write or the
    /// connection closing) is left to the writer task, which keeps the order: it
    /// only ever writes the front of `out`, and is only bypassed while it holds
    /// nothing in flight.
    #[inline]
    pub fn flush_direct(&self, latency: &mut hdrhistogram::Histogram<u64>) {
        self.dirty.set(false);
        if self.inflight.get() > 0 {
            return; // the writer takes `out` as soon as its current write is done
        }
        let fd = self.fd.get();
        if fd < 0 || self.phase.get() != Phase::Ready {
            self.wake_writer();
            return;
        }
        let Ok(mut out) = self.out.try_borrow_mut() else {
            self.wake_writer();
            return;
        };
        if out.is_empty() {
            return;
        }
        // SAFETY: `fd` is this connection's open socket (see `fd`); the buffer is
        // valid for `out.len()` bytes.
        let n = unsafe {
            libc::send(
                fd,
                out.as_ptr().cast(),
                out.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 && n as usize == out.len() {
            out.clear();
            if let Some(t) = self.pending_since.take() {
                // Read the clock after the write (a vDSO call, ~1% of a send): a
                // broadcast's last socket is written long after its first.
                let _ = latency.record(t.elapsed().as_micros().max(1) as u64);
            }
            return;
        }
        if n > 0 {
            let n = n as usize;
            let end = frame::cut_frame_end(&out, self.partial.get(), n);
            out.drain(..n);
            self.partial.set(end - n);
        }
        // EAGAIN, a partial write or an error: the writer waits for the socket
        // (or meets the error and ends the connection).
        drop(out);
        self.wake_writer();
    }

    /// Queue a server message (JSON text) as one frame.
    pub fn send_json(&self, shard: &Shard, json: &[u8]) {
        if self.phase.get() == Phase::Closing {
            return;
        }
        if self.queued() + json.len() + 10 > shard.shared.cfg.args.send_queue_bytes {
            self.begin_close(codes::SLOW_CONSUMER, true);
            return;
        }
        frame::text_frame_into(json, &mut self.out.borrow_mut());
        // Write it now if nothing is in flight (a reply needs no writer task unless
        // the socket pushes back); `flush_direct` hands over to the writer otherwise.
        match shard.latency.try_borrow_mut() {
            Ok(mut latency) => self.flush_direct(&mut latency),
            Err(_) => self.wake_writer(),
        }
        // A reply is rare: an idle connection keeps no buffer for it.
        if let Ok(mut out) = self.out.try_borrow_mut() {
            if out.is_empty() && self.inflight.get() == 0 {
                *out = Vec::new();
            }
        }
    }

    /// Choose the close code and queue the close frame (unless `send_frame` is false:
    /// the peer closed first and tungstenite queued the reply). Idempotent.
    pub fn begin_close(&self, code: u16, send_frame: bool) {
        if self.phase.get() == Phase::Closing {
            // Killed (the socket failed) before the reason was known: record it.
            if self.close_code.get().is_none() {
                self.close_code.set(Some(code));
            }
            return;
        }
        self.phase.set(Phase::Closing);
        self.close_code.set(Some(code));
        self.closing_since.set(Some(Instant::now()));
        if code == codes::SLOW_CONSUMER {
            // Whatever is not yet handed to the socket will never be read in time —
            // but the tail of a frame already partly written goes out first.
            let mut out = self.out.borrow_mut();
            out.truncate(self.partial.get());
            out.shrink_to(256);
        }
        if send_frame {
            frame::close_frame_into(code, codes::reason(code), &mut self.out.borrow_mut());
        }
        self.wake_writer();
    }

    /// Give back the outbound buffer's memory if nothing is queued (idle sweep).
    pub fn trim(&self) {
        if let Ok(mut out) = self.out.try_borrow_mut() {
            if out.is_empty() {
                *out = Vec::new();
            }
        }
    }

    /// Stop both tasks now (peer gone, or stuck closing).
    pub fn kill(&self) {
        self.killed.set(true);
        self.fd.set(-1);
        if self.phase.get() != Phase::Closing {
            self.phase.set(Phase::Closing);
            self.closing_since.set(Some(Instant::now()));
        }
        self.wake_writer();
        if let Some(w) = self.reader_waker.take() {
            w.wake();
        }
    }
}

/// A `Read + Write` view for tungstenite's codec: reads from the bytes just received,
/// writes (pongs, close replies) into the connection's outbound buffer.
struct MemIo<'a> {
    input: &'a [u8],
    out: Option<&'a mut Vec<u8>>,
}

impl io::Read for MemIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl io::Write for MemIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(out) = self.out.as_mut() {
            out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn ws_config(cfg: &crate::config::Config) -> tungstenite::protocol::WebSocketConfig {
    let max = cfg.args.max_message_size;
    tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

enum ReadOutcome {
    Data(usize),
    Eof,
}

/// Read once from the socket into the shard's scratch buffer.
async fn read_some(shard: &Shard, conn: &Conn) -> ReadOutcome {
    poll_fn(|cx| {
        if conn.killed.get() {
            return Poll::Ready(ReadOutcome::Eof);
        }
        let mut scratch = shard.scratch.borrow_mut();
        let mut s = conn.stream.borrow_mut();
        let Some(s) = s.as_mut() else {
            return Poll::Ready(ReadOutcome::Eof);
        };
        match Pin::new(s).poll_read(cx, &mut scratch[..]) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(ReadOutcome::Eof),
            Poll::Ready(Ok(n)) => Poll::Ready(ReadOutcome::Data(n)),
            Poll::Pending => {
                conn.reader_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    })
    .await
}

/// Marks the writer task gone however it ends (returns, or is dropped with the
/// executor), and lets a reader waiting for it (after `kill`) go on.
struct WriterDone<'a>(&'a Conn);

impl Drop for WriterDone<'_> {
    fn drop(&mut self) {
        self.0.writer_running.set(false);
        // A waker left from waiting for the socket belongs to this task: the next
        // `wake_writer` must spawn a new one, not wake the dead one.
        drop(self.0.writer_waker.take());
        if self.0.killed.get() {
            if let Some(w) = self.0.reader_waker.take() {
                w.wake();
            }
        }
    }
}

/// The writer task, spawned by `wake_writer` when there is something the fan-out's
/// direct write cannot do: write `out` until it is empty (waiting for the socket as
/// long as it takes), then end — or, closing, half-close the socket after the
/// close frame and end.
async fn writer(shard: Rc<Shard>, conn: Rc<Conn>) {
    let _done = WriterDone(&conn);
    let mut buf = Vec::new();
    loop {
        if conn.killed.get() {
            return;
        }
        if conn.out.borrow().is_empty() {
            if conn.phase.get() == Phase::Closing {
                // Our close frame (or the reply to the client's) is out: half-close
                // and let the reader collect the peer's close or EOF.
                if let Some(s) = conn.stream.borrow().as_ref() {
                    // SAFETY: shutdown on a valid fd owned by the stream.
                    unsafe {
                        libc::shutdown(s.as_raw_fd(), libc::SHUT_WR);
                    }
                }
                conn.write_shut.set(true);
            }
            break;
        }
        // Double buffering: the fan-out appends to `out` while `buf` is written.
        std::mem::swap(&mut buf, &mut *conn.out.borrow_mut());
        conn.partial.set(0); // the writer writes all of `buf`
        let since = conn.pending_since.take();
        let mut off = 0;
        conn.inflight.set(buf.len());
        while off < buf.len() {
            let r = poll_fn(|cx| {
                if conn.killed.get() {
                    return Poll::Ready(Err(io::Error::other("killed")));
                }
                let mut s = conn.stream.borrow_mut();
                let Some(s) = s.as_mut() else {
                    return Poll::Ready(Err(io::Error::other("closed")));
                };
                match Pin::new(s).poll_write(cx, &buf[off..]) {
                    Poll::Pending => {
                        conn.writer_waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                    ready => ready,
                }
            })
            .await;
            match r {
                Ok(n) if n > 0 => {
                    off += n;
                    conn.inflight.set(buf.len() - off);
                }
                _ => {
                    conn.inflight.set(0);
                    conn.kill();
                    return;
                }
            }
        }
        if let Some(t) = since {
            let _ = shard
                .latency
                .borrow_mut()
                .record(t.elapsed().as_micros().max(1) as u64);
        }
        buf.clear();
    }
    // `buf` is freed here: a connection that got a reply keeps no buffer for it.
}

/// Serve an upgraded connection until it is gone. `leftover`: bytes read after the
/// HTTP request (a client may send its first frame right behind it).
pub async fn serve(shard: Rc<Shard>, conn: Rc<Conn>, leftover: Vec<u8>) {
    // The frame codec exists only while it holds something: an idle connection
    // keeps none (it would cost ~500 bytes: the context and its read buffer).
    let new_codec = || {
        Box::new(WebSocketContext::new(
            tungstenite::protocol::Role::Server,
            Some(ws_config(&shard.shared.cfg)),
        ))
    };
    let mut ws: Option<Box<WebSocketContext>> = None;
    let mut msgs: VecDeque<Message> = VecDeque::new();

    let mut frames = FrameTracker::default();
    frames.feed(&leftover);
    let mut finished = !leftover.is_empty()
        && feed(
            &conn,
            ws.get_or_insert_with(new_codec),
            &leftover,
            &mut msgs,
        );
    drop(leftover);
    while !finished {
        while let Some(m) = msgs.pop_front() {
            // After our own close nothing more runs; after the peer's close, what it
            // sent before closing still does (a SET_PRESENCE right before leaving).
            if conn.phase.get() == Phase::Closing && !conn.peer_closed.get() {
                msgs.clear();
                break;
            }
            // Boxed: a command's future is large and rare; the idle task stays small.
            Box::pin(handle_message(&shard, &conn, m)).await;
        }
        if msgs.capacity() > 0 {
            msgs = VecDeque::new(); // idle connections keep no message buffer
        }
        if conn.phase.get() != Phase::Closing && frames.at_boundary() {
            // Provably stateless between messages: no partial frame, no open
            // fragmented message, no pending pong (`MemIo` takes every write), the
            // close handshake not begun. A fresh codec is made for the next bytes.
            ws = None;
        }
        match read_some(&shard, &conn).await {
            ReadOutcome::Eof => break,
            ReadOutcome::Data(n) => {
                conn.last_rx.set(Instant::now());
                let scratch = shard.scratch.borrow();
                frames.feed(&scratch[..n]);
                finished = feed(
                    &conn,
                    ws.get_or_insert_with(new_codec),
                    &scratch[..n],
                    &mut msgs,
                );
            }
        }
    }
    if conn.killed.get() && conn.close_code.get().is_none() && !finished {
        // Killed (a write failed) with bytes perhaps unread: one last non-blocking
        // read, so a close frame the peer sent before going is what gets recorded.
        let fd = conn.stream.borrow().as_ref().map(|s| s.as_raw_fd());
        if let Some(fd) = fd {
            let mut scratch = shard.scratch.borrow_mut();
            // SAFETY: `fd` is the connection's open socket (taken only below); the
            // buffer is valid for its length.
            let n = unsafe {
                libc::recv(
                    fd,
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                let ws = ws.get_or_insert_with(new_codec);
                feed(&conn, ws, &scratch[..n as usize], &mut msgs);
            }
        }
    }
    if conn.phase.get() != Phase::Closing || conn.close_code.get().is_none() {
        conn.close_code
            .set(conn.close_code.get().or(Some(codes::ABNORMAL)));
    }
    conn.kill();
    poll_fn(|cx| {
        if conn.writer_running.get() {
            conn.reader_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    conn.stream.borrow_mut().take(); // closes the socket (`fd` is already -1)
    cleanup(&shard, &conn);
}

/// Follows WebSocket frame boundaries in the bytes given to the codec (headers
/// parsed with tungstenite's own `FrameHeader::parse`), to know when the codec
/// holds no partial frame and no unfinished fragmented message.
#[derive(Default)]
pub struct FrameTracker {
    hdr: [u8; 14],
    hdr_len: usize,
    payload_left: u64,
    fragmented: bool,
    lost: bool,
}

impl FrameTracker {
    pub fn feed(&mut self, mut input: &[u8]) {
        use tungstenite::protocol::frame::FrameHeader;
        while !input.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = (self.payload_left.min(input.len() as u64)) as usize;
                self.payload_left -= n as u64;
                input = &input[n..];
                continue;
            }
            let take = (self.hdr.len() - self.hdr_len).min(input.len());
            self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&input[..take]);
            let mut cur = std::io::Cursor::new(&self.hdr[..self.hdr_len + take]);
            match FrameHeader::parse(&mut cur) {
                Ok(Some((h, len))) => {
                    let used = cur.position() as usize - self.hdr_len;
                    input = &input[used..];
                    self.hdr_len = 0;
                    self.payload_left = len;
                    if matches!(
                        h.opcode,
                        tungstenite::protocol::frame::coding::OpCode::Data(_)
                    ) {
                        self.fragmented = !h.is_final;
                    }
                }
                Ok(None) => {
                    self.hdr_len += take;
                    input = &input[take..];
                    if self.hdr_len >= self.hdr.len() {
                        self.lost = true;
                    }
                }
                Err(_) => self.lost = true,
            }
        }
    }

    /// Nothing partial is buffered: every byte fed belongs to a complete frame
    /// and no fragmented message is open.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.hdr_len == 0 && self.payload_left == 0 && !self.fragmented
    }
}

/// Run the codec over newly received bytes, collecting complete messages.
/// Returns true when the closing handshake is complete (the peer answered our close).
pub fn feed(
    conn: &Conn,
    ws: &mut WebSocketContext,
    input: &[u8],
    msgs: &mut VecDeque<Message>,
) -> bool {
    let closing = conn.phase.get() == Phase::Closing;
    let mut out = conn.out.borrow_mut();
    let mut io = MemIo {
        input,
        out: if closing { None } else { Some(&mut out) },
    };
    let mut close: Option<(u16, bool)> = None;
    loop {
        match ws.read(&mut io) {
            Ok(Message::Close(f)) => {
                let code = f.map(|f| u16::from(f.code)).unwrap_or(codes::NO_STATUS);
                let _ = ws.flush(&mut io); // the close reply
                close = Some((code, false));
                break;
            }
            Ok(m) => msgs.push_back(m),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                break
            }
            Err(tungstenite::Error::Capacity(_)) => {
                close = Some((codes::TOO_BIG, true));
                break;
            }
            Err(tungstenite::Error::Utf8(_)) => {
                close = Some((codes::NOT_JSON, true));
                break;
            }
            Err(_) => {
                close = Some((codes::PROTOCOL_ERROR, true));
                break;
            }
        }
    }
    let _ = ws.flush(&mut io); // pongs
    drop(out);
    if !conn.out.borrow().is_empty() {
        conn.wake_writer();
    }
    match close {
        // The peer's answer to our close frame: the handshake is done. (Killed before
        // any code was chosen — the socket failed — the peer's own close says why.)
        Some((code, false)) if closing => {
            if conn.close_code.get().is_none() {
                conn.close_code.set(Some(code));
            }
            return true;
        }
        // The peer closes first; messages that arrived before its close still run.
        Some((code, false)) => {
            conn.peer_closed.set(true);
            conn.begin_close(code, false)
        }
        Some((code, true)) => {
            msgs.clear();
            conn.begin_close(code, true);
        }
        None => {}
    }
    false
}

fn cleanup(shard: &Shard, conn: &Conn) {
    let key = conn.key.get();
    if let Some(s) = conn.session.borrow_mut().take() {
        let code = conn.close_code.get().unwrap_or(codes::ABNORMAL);
        let window = shard.shared.cfg.args.resume_window_seconds;
        // SPEC §8: any end but a client close 1000 or an auth close 4004 keeps the
        // session for the resume window (not on a draining node: it is going away).
        let park = window > 0
            && code != codes::NORMAL
            && code != codes::AUTH_FAILED
            && !shard.draining.fired();
        if park {
            // Queued before the Removes below: the channels stay recorded.
            shard
                .shared
                .bus
                .route_op(crate::bus::RouteOp::Park(Box::new(crate::bus::Detached {
                    session_id: s.session_id.clone(),
                    claims: s.claims.clone(),
                    auto_sub: s.auto_sub(),
                    floor: s.floor,
                    subs: s.subs.floors().map(|(n, f)| (n.to_owned(), f)).collect(),
                    expires: Instant::now() + Duration::from_secs(window),
                })));
        }
        for name in s.subs.iter() {
            shard.unsubscribe(name, key);
        }
        shard.unsubscribe(&s.auto_sub(), key);
        for (ch, _) in s.typing.iter() {
            publish_typing(shard, &s.claims.sub, ch, false);
        }
        if !park && !shard.draining.fired() {
            crate::presence::session_ended(shard, &s);
        }
    }
    shard.conns.borrow_mut().try_remove(key as usize);
    let m = shard.metrics();
    m.connections.fetch_sub(1, Relaxed);
    m.closed(conn.close_code.get().unwrap_or(codes::ABNORMAL));
    shard.shared.connections.fetch_sub(1, Relaxed);
    shard.shared.per_ip.release(conn.ip);
}

async fn handle_message(shard: &Rc<Shard>, conn: &Rc<Conn>, m: Message) {
    let text = match m {
        Message::Text(t) => t,
        Message::Binary(_) => {
            conn.begin_close(codes::NOT_JSON, true);
            return;
        }
        // Control frames: tungstenite answered pings; any frame counted as activity.
        _ => return,
    };
    let decoded = msg::decode(text.as_bytes());
    if conn.phase.get() == Phase::AwaitHello {
        match decoded {
            Err(DecodeError::NotJson) => conn.begin_close(codes::NOT_JSON, true),
            Ok(ClientMsg::Hello { token }) => {
                shard.metrics().command("HELLO");
                hello(shard, conn, token).await
            }
            Ok(ClientMsg::Resume {
                token,
                session_id,
                seq,
            }) => {
                shard.metrics().command("RESUME");
                resume(shard, conn, token, session_id, seq).await
            }
            Err(e) if e.is_handshake() => conn.begin_close(codes::AUTH_FAILED, true),
            _ => conn.begin_close(codes::NOT_AUTHENTICATED, true),
        }
        return;
    }
    let cmd = match decoded {
        Err(DecodeError::NotJson) => {
            conn.begin_close(codes::NOT_JSON, true);
            return;
        }
        Ok(ClientMsg::Hello { .. }) | Ok(ClientMsg::Resume { .. }) => {
            conn.begin_close(codes::ALREADY_AUTHENTICATED, true);
            return;
        }
        Ok(ClientMsg::Ping) => {
            shard.metrics().command("PING");
            conn.send_json(
                shard,
                &msg::encode(
                    "PONG",
                    msg::Pong {
                        timestamp: now_millis(),
                    },
                ),
            );
            return;
        }
        other => other,
    };
    // Everything else is a rate-limited command.
    let verdict = {
        let mut s = conn.session.borrow_mut();
        match s.as_mut() {
            Some(s) => s
                .rate
                .check(Instant::now(), shard.shared.cfg.args.rate_limit),
            None => RateVerdict::Allow,
        }
    };
    match verdict {
        RateVerdict::Close => {
            conn.begin_close(codes::RATE_LIMITED, true);
            return;
        }
        RateVerdict::Limited => {
            conn.send_json(
                shard,
                &msg::error(ErrorCode::RateLimited, "rate limit exceeded", None),
            );
            return;
        }
        RateVerdict::Allow => {}
    }
    match cmd {
        Err(DecodeError::BadPayload { kind, message }) => {
            shard.metrics().command(kind.unwrap_or("UNKNOWN"));
            conn.send_json(shard, &msg::error(ErrorCode::BadPayload, message, None));
        }
        Err(DecodeError::UnknownType(t)) => {
            shard.metrics().command("UNKNOWN");
            let m = format!("unknown type {}", t.chars().take(64).collect::<String>());
            conn.send_json(shard, &msg::error(ErrorCode::UnknownType, &m, None));
        }
        Err(DecodeError::NotJson) => {}
        Ok(c) => {
            shard.metrics().command(c.kind());
            match c {
                ClientMsg::Subscribe { channels } => subscribe(shard, conn, channels).await,
                ClientMsg::Unsubscribe { channels } => unsubscribe(shard, conn, channels),
                ClientMsg::Typing { channel_id, start } => {
                    typing(shard, conn, channel_id, start).await
                }
                ClientMsg::SetPresence { status } => {
                    crate::presence::set_presence(shard, conn, &status)
                }
                ClientMsg::Refresh { token } => refresh(shard, conn, &token),
                ClientMsg::Hello { .. } | ClientMsg::Resume { .. } | ClientMsg::Ping => {}
            }
        }
    }
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn new_session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The claims for a HELLO/RESUME: the token in the message if any (it must be
/// valid), else the upgrade's Authorization header.
fn authenticate(shard: &Shard, conn: &Conn, token: Option<String>) -> Option<Claims> {
    match token {
        Some(t) => shard.shared.verifier.verify(&t).ok(),
        None => conn.header_claims.borrow().as_deref().cloned(),
    }
}

async fn hello(shard: &Rc<Shard>, conn: &Rc<Conn>, token: Option<String>) {
    let Some(claims) = authenticate(shard, conn, token) else {
        conn.begin_close(codes::AUTH_FAILED, true);
        return;
    };
    // The user tree is routed first, so the session sees its own `user.presence`;
    // events that arrive before HELLO_ACK are held and follow it.
    let auto_sub = format!("user:{}", claims.sub);
    conn.holding.set(true);
    let floor = shard.floor();
    shard.subscribe(&auto_sub, conn.key.get());
    // Counted before HELLO_ACK (SPEC §6): once the client has it, this session keeps
    // its user online even if another of the user's sessions, on any node, ends
    // right away.
    let counted = crate::presence::session_started(shard, &claims);
    let _ = glommio::timer::timeout(Duration::from_secs(2), async { Ok(counted.await) }).await;
    conn.holding.set(false);
    if conn.phase.get() != Phase::AwaitHello {
        // Closed while waiting: the session never started.
        shard.unsubscribe(&auto_sub, conn.key.get());
        let _ = shard.shared.presence_end(&claims.sub);
        return;
    }
    start_session(shard, conn, claims, new_session_id(), floor);
    let held = std::mem::take(&mut *conn.held.borrow_mut());
    if !held.is_empty() {
        conn.out.borrow_mut().extend_from_slice(&held);
        conn.wake_writer();
    }
}

fn start_session(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    claims: Claims,
    session_id: String,
    floor: Floor,
) {
    // hello() routed the user tree before this.
    let ack = msg::encode(
        "HELLO_ACK",
        msg::HelloAck {
            session_id: &session_id,
            heartbeat_interval: shard.shared.cfg.args.heartbeat_interval_ms,
            user_id: &claims.sub,
        },
    );
    let session = Session {
        session_id,
        claims,
        floor,
        subs: SubSet::default(),
        rate: RateWindow::new(Instant::now()),
        typing: Vec::new(),
    };
    *conn.session.borrow_mut() = Some(session);
    conn.phase.set(Phase::Ready);
    conn.send_json(shard, &ack);
}

async fn resume(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    token: Option<String>,
    session_id: String,
    seq: u64,
) {
    let Some(claims) = authenticate(shard, conn, token) else {
        conn.begin_close(codes::AUTH_FAILED, true);
        return;
    };
    if conn.resuming.borrow().is_some() {
        return; // one RESUME at a time
    }
    let user = claims.sub.clone();
    *conn.resuming.borrow_mut() = Some(Box::new(claims));
    // The bus thread answers in this shard's inbox, in order with its events.
    shard.shared.bus.route_op(crate::bus::RouteOp::Resume {
        session_id,
        user,
        seq,
        shard: shard.id as u8,
        conn_key: conn.key.get(),
        conn_id: conn.id,
    });
}

/// Give back the routes a grant added for a session nobody takes, and end it.
fn abandon(shard: &Shard, r: &crate::bus::Resumed) {
    for n in r.session.names() {
        if !shard.trie.borrow().covers_exactly(n) {
            shard.shared.bus.remove_route(shard.id, n);
        }
    }
    let _ = shard.shared.presence_end(&r.session.claims.sub);
}

/// A RESUME's answer, applied in inbox order: every event before it is in the
/// replay, every event after it is live.
pub fn apply_grant(shard: &Rc<Shard>, g: crate::bus::Grant) {
    let conn = shard.conns.borrow().get(g.conn_key as usize).cloned();
    let conn = conn.filter(|c| c.id == g.conn_id);
    let claims = conn.as_ref().and_then(|c| c.resuming.borrow_mut().take());
    let (Some(conn), Some(claims)) = (conn, claims) else {
        // The connection is gone.
        if let Some(r) = &g.outcome {
            abandon(shard, r);
        }
        return;
    };
    let Some(r) = g.outcome else {
        conn.send_json(shard, &msg::encode("INVALID_SESSION", msg::Empty {}));
        return;
    };
    if conn.phase.get() != Phase::AwaitHello {
        // A HELLO (or a close) got there first: the old session ends here.
        abandon(shard, &r);
        return;
    }
    let key = conn.key.get();
    let d = r.session;
    shard.subscribe(&d.auto_sub, key);
    for (n, _) in &d.subs {
        shard.subscribe(n, key);
    }
    let replayed = r.replay.len() as u64;
    let limit = shard.shared.cfg.args.send_queue_bytes;
    for ev in &r.replay {
        conn.push_event(&ev.frame, ev.received, limit);
    }
    conn.last_seq.set(r.s0);
    let session = Session {
        session_id: d.session_id,
        claims: *claims,
        floor: d.floor,
        subs: d.subs.into_iter().collect(),
        rate: RateWindow::new(Instant::now()),
        typing: Vec::new(),
    };
    let reply = msg::encode(
        "RESUMED",
        msg::Resumed {
            session_id: &session.session_id,
            replayed,
        },
    );
    *conn.session.borrow_mut() = Some(session);
    if conn.phase.get() != Phase::AwaitHello {
        // The replay overflowed the send queue (closed 4010): not resumed.
        return;
    }
    conn.phase.set(Phase::Ready);
    conn.last_rx.set(Instant::now());
    conn.send_json(shard, &reply);
}

fn refresh(shard: &Rc<Shard>, conn: &Rc<Conn>, token: &str) {
    let verified = shard.shared.verifier.verify(token);
    let mut s = conn.session.borrow_mut();
    let Some(session) = s.as_mut() else { return };
    match verified {
        Ok(c) if c.sub == session.claims.sub => {
            let exp = c.exp;
            session.claims = c;
            drop(s);
            conn.send_json(shard, &msg::encode("REFRESHED", msg::Refreshed { exp }));
        }
        _ => {
            drop(s);
            conn.begin_close(codes::AUTH_FAILED, true);
        }
    }
}

/// Whether the claims alone grant `sub`; `None` means "ask Redis".
fn granted_by_claims(claims: &Claims, sub: &channels::Subscription) -> Option<bool> {
    match sub.root {
        Root::User => Some(sub.id() == claims.sub),
        Root::Live => Some(true),
        Root::Dm => claims.dms.iter().any(|d| d == sub.id()).then_some(true),
        Root::Server => claims.servers.iter().any(|d| d == sub.id()).then_some(true),
    }
}

/// Ask Redis whether the user is in each (set, member) pair; errors count as "no".
async fn redis_memberships(shard: &Shard, user: &str, asks: &[(Root, String)]) -> Vec<bool> {
    let Some(redis) = shard.shared.bus.redis() else {
        return vec![false; asks.len()];
    };
    if asks.is_empty() {
        return Vec::new();
    }
    let mut pipe = redis::pipe();
    for (root, id) in asks {
        let set = if *root == Root::Dm {
            format!("user:{user}:dms")
        } else {
            format!("user:{user}:servers")
        };
        pipe.cmd("SISMEMBER").arg(set).arg(id);
    }
    let r = glommio::timer::timeout(Duration::from_secs(3), async {
        Ok(redis.query(pipe).await)
    })
    .await;
    match r {
        Ok(Ok(vals)) => {
            let mut out: Vec<bool> = vals
                .iter()
                .map(|v| matches!(v, redis::Value::Int(1)))
                .collect();
            out.resize(asks.len(), false);
            out
        }
        _ => vec![false; asks.len()],
    }
}

async fn subscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, channels: Vec<Result<String, String>>) {
    let (user, claims) = match conn.session.borrow().as_ref() {
        Some(s) => (s.claims.sub.clone(), s.claims.clone()),
        None => return,
    };
    enum Verdict {
        Invalid,
        Granted,
        Forbidden,
        Ask(usize),
    }
    let mut asks: Vec<(Root, String)> = Vec::new();
    let mut plan: Vec<(String, Option<channels::Subscription>, Verdict)> = Vec::new();
    for raw in channels {
        let raw = match raw {
            Ok(s) => s,
            Err(repr) => {
                plan.push((repr, None, Verdict::Invalid));
                continue;
            }
        };
        match channels::parse_subscription(&raw) {
            None => plan.push((raw, None, Verdict::Invalid)),
            Some(sub) => {
                let v = match granted_by_claims(&claims, &sub) {
                    Some(true) => Verdict::Granted,
                    Some(false) => Verdict::Forbidden,
                    None => {
                        let i = asks
                            .iter()
                            .position(|(r, id)| *r == sub.root && id == sub.id())
                            .unwrap_or_else(|| {
                                asks.push((sub.root, sub.id().to_owned()));
                                asks.len() - 1
                            });
                        Verdict::Ask(i)
                    }
                };
                plan.push((raw, Some(sub), v));
            }
        }
    }
    let answers = redis_memberships(shard, &user, &asks).await;
    if conn.phase.get() != Phase::Ready {
        return;
    }
    let max = shard.shared.cfg.args.max_subscriptions;
    let key = conn.key.get();
    let mut granted: Vec<String> = Vec::new();
    let mut replies: Vec<Vec<u8>> = Vec::new();
    {
        let mut s = conn.session.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        for (raw, sub, verdict) in plan {
            let ok = match verdict {
                Verdict::Invalid => {
                    replies.push(msg::error(
                        ErrorCode::InvalidChannel,
                        "invalid channel name",
                        Some(&raw),
                    ));
                    continue;
                }
                Verdict::Granted => true,
                Verdict::Forbidden => false,
                Verdict::Ask(i) => answers.get(i).copied().unwrap_or(false),
            };
            let Some(sub) = sub else { continue };
            if !ok {
                replies.push(msg::error(
                    ErrorCode::Forbidden,
                    "not allowed to subscribe",
                    Some(&raw),
                ));
                continue;
            }
            if !session.is_auto_sub(&sub.name) && !session.subs.contains(&sub.name) {
                if session.subs.len() >= max {
                    replies.push(msg::error(
                        ErrorCode::TooManySubscriptions,
                        "subscription limit reached",
                        Some(&raw),
                    ));
                    continue;
                }
                // Route queued before SUBSCRIBED is sent (SPEC §3's promise).
                let floor = shard.floor();
                shard.subscribe(&sub.name, key);
                session.subs.insert(&sub.name, floor);
            }
            if !granted.contains(&raw) {
                granted.push(raw);
            }
        }
    }
    for r in replies {
        conn.send_json(shard, &r);
    }
    conn.send_json(
        shard,
        &msg::encode("SUBSCRIBED", msg::Channels { channels: &granted }),
    );
}

fn unsubscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, channels: Vec<Result<String, String>>) {
    let key = conn.key.get();
    let mut done: Vec<String> = Vec::new();
    {
        let mut s = conn.session.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        for raw in channels.into_iter().flatten() {
            if let Some(sub) = channels::parse_subscription(&raw) {
                if session.subs.remove(&sub.name) {
                    shard.unsubscribe(&sub.name, key);
                }
            }
            if !done.contains(&raw) {
                done.push(raw);
            }
        }
    }
    conn.send_json(
        shard,
        &msg::encode("UNSUBSCRIBED", msg::Channels { channels: &done }),
    );
}

fn publish_typing(shard: &Shard, user: &str, channel: &str, typing: bool) {
    let payload = match channels::typing_target(channel) {
        Some(TypingTarget::Dm { conversation }) => (
            "dm.typing",
            sonic_rs::json!({"conversationId": conversation, "userId": user, "isTyping": typing}),
        ),
        Some(TypingTarget::ServerChannel {
            server,
            channel: cid,
        }) => (
            "server.typing",
            sonic_rs::json!({"serverId": server, "channelId": cid, "userId": user, "isTyping": typing}),
        ),
        None => return,
    };
    shard
        .shared
        .bus
        .publish(channel, payload.0, &payload.1.to_string());
}

pub const TYPING_TTL: Duration = Duration::from_secs(10);

async fn typing(shard: &Rc<Shard>, conn: &Rc<Conn>, channel_id: String, start: bool) {
    let Some(target) = channels::typing_target(&channel_id) else {
        conn.send_json(
            shard,
            &msg::error(
                ErrorCode::InvalidChannel,
                "typing needs dm:{conv} or server:{sid}:channel:{cid}",
                Some(&channel_id),
            ),
        );
        return;
    };
    let (user, claims) = match conn.session.borrow().as_ref() {
        Some(s) => (s.claims.sub.clone(), s.claims.clone()),
        None => return,
    };
    let (root, id) = match &target {
        TypingTarget::Dm { conversation } => (Root::Dm, conversation.clone()),
        TypingTarget::ServerChannel { server, .. } => (Root::Server, server.clone()),
    };
    let by_claims = match root {
        Root::Dm => claims.dms.contains(&id),
        _ => claims.servers.contains(&id),
    };
    let allowed = by_claims
        || redis_memberships(shard, &user, &[(root, id)])
            .await
            .first()
            .copied()
            .unwrap_or(false);
    if !allowed {
        conn.send_json(
            shard,
            &msg::error(
                ErrorCode::Forbidden,
                "not allowed on this channel",
                Some(&channel_id),
            ),
        );
        return;
    }
    {
        let mut s = conn.session.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        session.typing.retain(|(c, _)| *c != channel_id);
        if start {
            session
                .typing
                .push((channel_id.clone(), Instant::now() + TYPING_TTL));
        }
    }
    publish_typing(shard, &user, &channel_id, start);
}

/// Per-tick work on a ready connection: typing that ran out, tokens that expired.
pub fn on_tick(shard: &Shard, conn: &Conn, now: Instant) {
    let mut expired_token = false;
    let mut stopped: Vec<String> = Vec::new();
    let user;
    {
        let mut s = conn.session.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        user = session.claims.sub.clone();
        if !session.typing.is_empty() {
            session.typing.retain(|(c, until)| {
                if *until <= now {
                    stopped.push(c.clone());
                    false
                } else {
                    true
                }
            });
        }
        // In milliseconds: "once exp + grace has passed", not up to a second later.
        let deadline = session
            .claims
            .exp
            .saturating_add(shard.shared.cfg.args.token_grace_seconds)
            .saturating_mul(1000);
        if now_millis() > deadline {
            expired_token = true;
        }
    }
    for c in stopped {
        publish_typing(shard, &user, &c, false);
    }
    if expired_token {
        conn.begin_close(codes::AUTH_FAILED, true);
    }
}

#[cfg(test)]
mod tests {
    use super::FrameTracker;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tungstenite::protocol::frame::Frame;

    fn client_frame(payload: &[u8], opcode: OpCode, fin: bool) -> Vec<u8> {
        let mut f = match opcode {
            OpCode::Control(Control::Ping) => Frame::ping(payload.to_vec()),
            _ => Frame::message(payload.to_vec(), opcode, fin),
        };
        f.header_mut().mask = Some([1, 2, 3, 4]);
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    #[test]
    fn boundaries_across_every_split() {
        let mut stream = client_frame(&[b'x'; 300], OpCode::Data(Data::Text), true);
        stream.extend(client_frame(b"ping", OpCode::Control(Control::Ping), true));
        stream.extend(client_frame(
            &[b'y'; 70_000],
            OpCode::Data(Data::Text),
            true,
        ));
        for split in 0..=stream.len().min(400) {
            let mut t = FrameTracker::default();
            t.feed(&stream[..split]);
            t.feed(&stream[split..]);
            assert!(t.at_boundary(), "split at {split}");
        }
        let mut t = FrameTracker::default();
        t.feed(&stream[..stream.len() - 1]);
        assert!(!t.at_boundary());
    }

    #[test]
    fn a_fragmented_message_is_not_a_boundary_until_its_last_frame() {
        let mut t = FrameTracker::default();
        t.feed(&client_frame(b"part1", OpCode::Data(Data::Text), false));
        assert!(!t.at_boundary());
        t.feed(&client_frame(b"p", OpCode::Control(Control::Ping), true));
        assert!(
            !t.at_boundary(),
            "a control frame in between does not end it"
        );
        t.feed(&client_frame(b"part2", OpCode::Data(Data::Continue), true));
        assert!(t.at_boundary());
    }
}
