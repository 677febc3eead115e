//! One client connection: who it is, where it is in its life, and how it ends.
//!
//! Life: `AwaitHello` (upgraded; only HELLO or RESUME is allowed) → `Ready`
//! (authenticated; commands, events) → `Closing` (a close code is chosen; nothing is
//! queued after the close frame; the writer flushes and shuts the socket's write
//! side) → gone (the reader saw EOF, or the sweep killed a connection stuck closing).
//!
//! The state is split by concern: [`Life`] and the writer task here, the outbound
//! buffer and its direct write in `outbound.rs`, reading and the frame codec in
//! `reader.rs`, the authenticated session in `session.rs`, and what each command
//! does under `commands/`.
//!
//! The writer task exists only while something must wait for the socket (it pushed
//! back, or a close must be followed by a half-close): [`Conn::wake_writer`]
//! spawns it, it writes the outbound buffer until it is empty, and ends. An idle
//! connection therefore holds one task (its pending read) and no writer.
//!
//! Invariant: the reader alone removes the connection from the shard (slab, trie,
//! routes, counters), exactly once, after the writer is gone; then it closes the
//! socket (`reader::serve`).

use futures_lite::AsyncWrite;
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Instant;

use super::outbound::{Direct, Outbound, Push};
use super::session::Session;
use super::Shard;
use crate::auth::Claims;
use crate::metrics::Latency;
use crate::protocol::{codes, frame};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    AwaitHello,
    Ready,
    Closing,
}

/// Where a connection is in its life, and why it ends.
pub struct Life {
    pub phase: Cell<Phase>,
    pub close_code: Cell<Option<u16>>,
    pub closing_since: Cell<Option<Instant>>,
    /// Both tasks must stop now (the socket failed, or the connection is stuck).
    pub killed: Cell<bool>,
    /// The peer sent its close frame first.
    pub peer_closed: Cell<bool>,
}

/// The claims a connection holds before (or while) its session starts.
#[derive(Default)]
pub struct Credentials {
    /// From a valid `Authorization: Bearer` header on the upgrade.
    pub header: RefCell<Option<Box<Claims>>>,
    /// A RESUME is waiting for its grant: the (verified) token's claims.
    pub resuming: RefCell<Option<Box<Claims>>>,
}

pub struct Conn {
    /// The slab key on its shard (routes and grants name it).
    pub key: Cell<u32>,
    /// Never reused, unlike slab keys: a resume grant names both.
    pub id: u64,
    pub ip: IpAddr,
    pub opened: Instant,
    /// permessage-deflate negotiated (SPEC §3): compressed event frames, and
    /// client frames inflated. A flag: no compression state per connection.
    pub deflate: bool,
    pub life: Life,
    pub out: Outbound,
    /// The `seq` of the last event queued here (exactly-once across overlapping
    /// subscriptions: seq strictly increases per node).
    pub last_seq: Cell<u64>,
    /// When the last complete client frame arrived (the heartbeat deadline).
    pub last_rx: Cell<Instant>,
    pub creds: Credentials,
    pub session: RefCell<Option<Session>>,
    /// The socket: the reader reads it, the writer task writes it; taken (closed)
    /// once both are done.
    pub(super) stream: RefCell<Option<TcpStream>>,
    /// This connection, for spawning its writer task on demand.
    pub(super) me: Weak<Conn>,
    pub(super) reader_waker: Cell<Option<Waker>>,
}

impl Conn {
    pub fn new(id: u64, ip: IpAddr, header_claims: Option<Claims>, deflate: bool) -> Rc<Conn> {
        let now = Instant::now();
        Rc::new_cyclic(|me| Conn {
            key: Cell::new(u32::MAX),
            id,
            ip,
            opened: now,
            deflate,
            life: Life {
                phase: Cell::new(Phase::AwaitHello),
                close_code: Cell::new(None),
                closing_since: Cell::new(None),
                killed: Cell::new(false),
                peer_closed: Cell::new(false),
            },
            out: Outbound::default(),
            last_seq: Cell::new(0),
            last_rx: Cell::new(now),
            creds: Credentials {
                header: RefCell::new(header_claims.map(Box::new)),
                resuming: RefCell::new(None),
            },
            session: RefCell::new(None),
            stream: RefCell::new(None),
            me: me.clone(),
            reader_waker: Cell::new(None),
        })
    }

    pub fn phase(&self) -> Phase {
        self.life.phase.get()
    }

    pub fn is_closing(&self) -> bool {
        self.phase() == Phase::Closing
    }

    /// Hand the upgraded socket to the connection (before `serve` starts).
    pub fn attach(&self, stream: TcpStream) {
        self.out.fd.set(stream.as_raw_fd());
        *self.stream.borrow_mut() = Some(stream);
    }

    /// Choose the close code and queue the close frame (unless `send_frame` is false:
    /// the peer closed first and tungstenite queued the reply). Idempotent.
    pub fn begin_close(&self, code: u16, send_frame: bool) {
        if self.is_closing() {
            // Killed (the socket failed) before the reason was known: record it.
            if self.life.close_code.get().is_none() {
                self.life.close_code.set(Some(code));
            }
            return;
        }
        self.life.phase.set(Phase::Closing);
        self.life.close_code.set(Some(code));
        self.life.closing_since.set(Some(Instant::now()));
        if code == codes::SLOW_CONSUMER {
            // Whatever is not yet handed to the socket will never be read in time —
            // but the tail of a frame already partly written goes out first.
            self.out.discard_unsent();
        }
        if send_frame {
            frame::close_frame_into(code, codes::reason(code), &mut self.out.buf.borrow_mut());
        }
        self.wake_writer();
    }

    /// Stop both tasks now (peer gone, or stuck closing).
    pub fn kill(&self) {
        self.life.killed.set(true);
        self.out.fd.set(-1);
        if !self.is_closing() {
            self.life.phase.set(Phase::Closing);
            self.life.closing_since.set(Some(Instant::now()));
        }
        self.wake_writer();
        if let Some(w) = self.reader_waker.take() {
            w.wake();
        }
    }

    /// Have the writer task write the outbound buffer (and, closing, the close
    /// frame and the half-close): wake it if it waits for the socket, else spawn it.
    pub fn wake_writer(&self) {
        let o = &self.out;
        if let Some(w) = o.writer_waker.take() {
            if o.writer_running.get() {
                w.wake();
                return;
            }
        }
        if o.writer_running.get() || self.life.killed.get() || o.write_shut.get() {
            return;
        }
        let (Some(conn), Some(shard)) = (self.me.upgrade(), super::current()) else {
            return;
        };
        // Scheduled, not run in place (`spawn_local` would run it right here,
        // inside the caller's borrows: the fan-out's, the codec's).
        let queue = glommio::executor().current_task_queue();
        if let Ok(t) = glommio::spawn_local_into(writer(shard, conn), queue) {
            o.writer_running.set(true);
            t.detach();
        }
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
    /// (or hold it during HELLO). Wakes nobody: the caller flushes. A frame past
    /// `limit`, queued or held, makes the connection a slow consumer (4010).
    #[inline]
    pub fn enqueue(&self, frame: &[u8], received: Instant, limit: usize) -> Push {
        if self.is_closing() {
            return Push::Refused;
        }
        let p = self.out.append_event(frame, received, limit);
        if p == Push::Refused {
            // Held frames count too: events that pile up during HELLO past the
            // bound would only make a slow consumer after the ACK.
            self.begin_close(codes::SLOW_CONSUMER, true);
        }
        p
    }

    /// FAST PATH: the end of a fan-out turn for this connection: one direct write,
    /// or hand over to the writer task.
    #[inline]
    pub fn flush_direct(&self, latency: &mut Latency) {
        self.out.dirty.set(false);
        if self.out.inflight.get() > 0 {
            return; // the writer takes the buffer as soon as its current write is done
        }
        if self.phase() != Phase::Ready || self.out.write_direct(latency) == Direct::Writer {
            self.wake_writer();
        }
    }

    /// Queue a server message (JSON text) as one frame, and write it now if
    /// nothing is in flight (a reply needs no writer task unless the socket pushes
    /// back).
    pub fn send_json(&self, shard: &Shard, json: &[u8]) {
        self.send_replies(shard, &[json]);
    }

    /// Queue several server messages, one frame each, and write them with one
    /// `send()` (a SUBSCRIBE's ERRORs and its SUBSCRIBED go out together).
    pub fn send_replies(&self, shard: &Shard, replies: &[&[u8]]) {
        if self.is_closing() {
            return;
        }
        let bytes: usize = replies.iter().map(|r| r.len() + 10).sum();
        if self.out.queued() + bytes > shard.ctx.cfg.send_queue_bytes {
            self.begin_close(codes::SLOW_CONSUMER, true);
            return;
        }
        {
            let mut buf = self.out.buf.borrow_mut();
            for r in replies {
                frame::text_frame_into(r, &mut buf);
            }
        }
        match shard.latency.try_borrow_mut() {
            Ok(mut latency) => {
                self.flush_direct(&mut latency);
                latency.settle();
            }
            Err(_) => self.wake_writer(),
        }
        // A reply is rare: an idle connection keeps no buffer for it.
        if self.out.inflight.get() == 0 {
            self.out.trim();
        }
    }

    /// Whether the writer task is alive (the reader waits for it before cleanup).
    pub fn writer_running(&self) -> bool {
        self.out.writer_running.get()
    }
}

/// Marks the writer task gone however it ends (returns, or is dropped with the
/// executor), and lets a reader waiting for it (after `kill`) go on.
struct WriterDone<'a>(&'a Conn);

impl Drop for WriterDone<'_> {
    fn drop(&mut self) {
        let c = self.0;
        c.out.writer_running.set(false);
        // A waker left from waiting for the socket belongs to this task: the next
        // `wake_writer` must spawn a new one, not wake the dead one.
        drop(c.out.writer_waker.take());
        if c.life.killed.get() {
            if let Some(w) = c.reader_waker.take() {
                w.wake();
            }
        }
    }
}

/// The writer task, spawned by `wake_writer` when there is something the direct
/// write cannot do: write the buffer until it is empty (waiting for the socket as
/// long as it takes), then end — or, closing, half-close the socket after the
/// close frame and end.
async fn writer(shard: Rc<Shard>, conn: Rc<Conn>) {
    let _done = WriterDone(&conn);
    let o = &conn.out;
    let mut buf = Vec::new();
    loop {
        if conn.life.killed.get() {
            return;
        }
        if o.buf.borrow().is_empty() {
            if conn.is_closing() {
                // Our close frame (or the reply to the client's) is out: half-close
                // and let the reader collect the peer's close or EOF.
                if let Some(s) = conn.stream.borrow().as_ref() {
                    // SAFETY: shutdown on a valid fd owned by the stream.
                    unsafe {
                        libc::shutdown(s.as_raw_fd(), libc::SHUT_WR);
                    }
                }
                o.write_shut.set(true);
            }
            break;
        }
        let since = o.take_for_writer(&mut buf);
        let mut off = 0;
        while off < buf.len() {
            let r = poll_fn(|cx| {
                if conn.life.killed.get() {
                    return Poll::Ready(Err(io::Error::other("killed")));
                }
                let mut s = conn.stream.borrow_mut();
                let Some(s) = s.as_mut() else {
                    return Poll::Ready(Err(io::Error::other("closed")));
                };
                match Pin::new(s).poll_write(cx, &buf[off..]) {
                    Poll::Pending => {
                        o.writer_waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                    ready => ready,
                }
            })
            .await;
            match r {
                Ok(n) if n > 0 => {
                    off += n;
                    o.inflight.set(buf.len() - off);
                }
                _ => {
                    o.inflight.set(0);
                    conn.kill();
                    return;
                }
            }
        }
        if let Some(t) = since {
            shard.latency.borrow_mut().record(t.elapsed());
        }
        buf.clear();
    }
    // `buf` is freed here: a connection that got a reply keeps no buffer for it.
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 (smaller ones): events held during HELLO past the send queue used
    /// to be dropped silently; they make a slow consumer like any queued byte.
    #[test]
    fn events_held_during_hello_past_the_bound_close_4010() {
        let c = Conn::new(1, "127.0.0.1".parse().unwrap(), None, false);
        c.out.hold();
        let frame = [b'x'; 600];
        assert_eq!(c.enqueue(&frame, Instant::now(), 1024), Push::Held);
        assert_eq!(c.enqueue(&frame, Instant::now(), 1024), Push::Refused);
        assert!(c.is_closing());
        assert_eq!(c.life.close_code.get(), Some(codes::SLOW_CONSUMER));
        assert_eq!(c.enqueue(&frame, Instant::now(), 1024), Push::Refused);
    }

    #[test]
    fn a_queued_frame_past_the_bound_closes_4010_and_keeps_nothing_unsent() {
        let c = Conn::new(1, "127.0.0.1".parse().unwrap(), None, false);
        let frame = [b'x'; 600];
        assert_eq!(c.enqueue(&frame, Instant::now(), 1024), Push::Queued);
        assert_eq!(c.enqueue(&frame, Instant::now(), 1024), Push::Refused);
        assert_eq!(c.life.close_code.get(), Some(codes::SLOW_CONSUMER));
        // Only the close frame is left to write.
        let buf = c.out.buf.borrow();
        assert_eq!(buf[0], 0x88, "a close frame");
        assert_eq!(&buf[2..4], &codes::SLOW_CONSUMER.to_be_bytes());
    }
}
