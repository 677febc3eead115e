//! Reading a connection: its task (`serve`), which reads the socket into the
//! shard's scratch buffer, lets tungstenite's frame codec turn the bytes into
//! messages, runs each command in order, and at the end removes the connection.
//!
//! The codec (`WebSocketContext`, owning no socket) is made afresh for each read
//! that needs one and dropped at every frame boundary ([`FrameTracker`]): an idle
//! connection keeps no codec and no read buffer, only its pending read. Pongs and
//! the close reply the codec writes go into the connection's outbound buffer.

use futures_lite::AsyncRead;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Instant;
use tungstenite::protocol::{Message, WebSocketContext};

use super::conn::Conn;
use super::{commands, Shard};
use crate::bus::{Detached, RouteOp};
use crate::protocol::codes;
use crate::protocol::deflate::Inflating;
use crate::protocol::frame::FrameTracker;

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
    let max = cfg.max_message_size;
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
        if conn.life.killed.get() {
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

/// A connection's frame codec while it holds something (an idle connection keeps
/// none: the context and its read buffer; loadtest/RESULTS.md, "Memory"), and, with
/// permessage-deflate, the stage that inflates compressed messages before it.
struct Codec {
    ws: Option<Box<WebSocketContext>>,
    /// Boxed: only connections that negotiated compression need it, and the
    /// reader's future (one per connection) stays small.
    inflating: Option<Box<Inflating>>,
    msgs: VecDeque<Message>,
}

impl Codec {
    /// Run newly received bytes through the codec; true once the closing handshake
    /// is complete.
    fn take(&mut self, shard: &Shard, conn: &Conn, bytes: &[u8]) -> bool {
        let cfg = &shard.ctx.cfg;
        let ws = self.ws.get_or_insert_with(|| {
            Box::new(WebSocketContext::new(
                tungstenite::protocol::Role::Server,
                Some(ws_config(cfg)),
            ))
        });
        if !conn.deflate {
            return feed(conn, ws, bytes, &mut self.msgs, cfg.send_queue_bytes);
        }
        let mut plain = shard.inflated.borrow_mut();
        plain.clear();
        let st = self.inflating.get_or_insert_with(Box::default);
        let r = st.feed(
            bytes,
            &mut plain,
            cfg.max_message_size,
            &mut shard.inflater.borrow_mut(),
        );
        let done = feed(conn, ws, &plain, &mut self.msgs, cfg.send_queue_bytes);
        if plain.capacity() > crate::limits::SCRATCH_BYTES {
            *plain = Vec::new();
        }
        if let Err(code) = r {
            self.msgs.clear();
            conn.begin_close(code, true);
        }
        done
    }

    /// Between messages (no partial frame, no open fragmented or compressed
    /// message, no pending pong — `MemIo` takes every write — the close handshake
    /// not begun) the codec is provably stateless: drop it.
    fn rest(&mut self, conn: &Conn, frames: &FrameTracker) {
        let idle = self.inflating.as_ref().is_none_or(|i| i.idle());
        if !conn.is_closing() && frames.at_boundary() && idle {
            self.ws = None;
            self.inflating = None;
        }
        if self.msgs.capacity() > 0 && self.msgs.is_empty() {
            self.msgs = VecDeque::new(); // idle connections keep no message buffer
        }
    }
}

/// Serve an upgraded connection until it is gone. `leftover`: bytes read after the
/// HTTP request (a client may send its first frame right behind it).
pub async fn serve(shard: Rc<Shard>, conn: Rc<Conn>, leftover: Vec<u8>) {
    let mut codec = Codec {
        ws: None,
        inflating: None,
        msgs: VecDeque::new(),
    };
    let mut frames = FrameTracker::default();
    if frames.feed(&leftover) > 0 {
        conn.last_rx.set(Instant::now());
    }
    let mut finished = !leftover.is_empty() && codec.take(&shard, &conn, &leftover);
    drop(leftover);
    while !finished {
        while let Some(m) = codec.msgs.pop_front() {
            // After our own close nothing more runs; after the peer's close, what it
            // sent before closing still does (a SET_PRESENCE right before leaving).
            if conn.is_closing() && !conn.life.peer_closed.get() {
                codec.msgs.clear();
                break;
            }
            // Boxed: a command's future is large and rare; the idle task stays small.
            Box::pin(commands::handle_message(&shard, &conn, m)).await;
        }
        codec.rest(&conn, &frames);
        match read_some(&shard, &conn).await {
            ReadOutcome::Eof => break,
            ReadOutcome::Data(n) => {
                let scratch = shard.scratch.borrow();
                // Only complete frames reset the heartbeat: a client trickling the
                // bytes of a frame it never finishes is not alive (SPEC §2).
                if frames.feed(&scratch[..n]) > 0 {
                    conn.last_rx.set(Instant::now());
                }
                finished = codec.take(&shard, &conn, &scratch[..n]);
            }
        }
    }
    if conn.life.killed.get() && conn.life.close_code.get().is_none() && !finished {
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
                codec.take(&shard, &conn, &scratch[..n as usize]);
            }
        }
    }
    if !conn.is_closing() || conn.life.close_code.get().is_none() {
        conn.life
            .close_code
            .set(conn.life.close_code.get().or(Some(codes::ABNORMAL)));
    }
    conn.kill();
    poll_fn(|cx| {
        if conn.writer_running() {
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

/// Run the codec over newly received bytes, collecting complete messages.
/// Returns true when the closing handshake is complete (the peer answered our close).
pub fn feed(
    conn: &Conn,
    ws: &mut WebSocketContext,
    input: &[u8],
    msgs: &mut VecDeque<Message>,
    limit: usize,
) -> bool {
    let closing = conn.is_closing();
    let mut out = conn.out.buf.borrow_mut();
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
    // The pongs owed to a client's pings count against the send queue like any
    // other byte: a client that pings and never reads is a slow consumer.
    if close.is_none() && conn.out.queued() > limit {
        close = Some((codes::SLOW_CONSUMER, true));
    }
    if !conn.out.buf.borrow().is_empty() {
        conn.wake_writer();
    }
    match close {
        // The peer's answer to our close frame: the handshake is done. (Killed before
        // any code was chosen — the socket failed — the peer's own close says why.)
        Some((code, false)) if closing => {
            if conn.life.close_code.get().is_none() {
                conn.life.close_code.set(Some(code));
            }
            return true;
        }
        // The peer closes first; messages that arrived before its close still run.
        Some((code, false)) => {
            conn.life.peer_closed.set(true);
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

/// The connection is gone: park or end its session, give back its routes and its
/// admission place, and count the close. Runs once, from `serve`.
fn cleanup(shard: &Shard, conn: &Conn) {
    let key = conn.key.get();
    let code = conn.life.close_code.get().unwrap_or(codes::ABNORMAL);
    if let Some(s) = conn.session.borrow_mut().take() {
        let window = shard.ctx.cfg.resume_window;
        // SPEC §8: any end but a client close 1000 or an auth close 4004 keeps the
        // session for the resume window (not on a draining node: it is going away).
        let park = !window.is_zero()
            && code != codes::NORMAL
            && code != codes::AUTH_FAILED
            && !shard.draining.fired();
        if park {
            // Queued before the Removes below: the channels stay recorded.
            shard.ctx.bus.route_op(RouteOp::Park(Box::new(Detached {
                session_id: s.session_id.clone(),
                claims: s.claims.clone(),
                auto_sub: s.auto_sub(),
                floor: s.floor,
                subs: s.subs.floors().map(|(n, f)| (n.to_owned(), f)).collect(),
                expires: Instant::now() + window,
            })));
        }
        for name in s.subs.iter() {
            shard.unsubscribe(name, key);
        }
        shard.unsubscribe(&s.auto_sub(), key);
        for (ch, _) in s.typing.iter() {
            commands::typing::publish(shard, &s.claims.sub, ch, false);
        }
        if !park && !shard.draining.fired() {
            shard.presence_ended(&s.claims.sub);
        }
    }
    shard.conns.borrow_mut().try_remove(key as usize);
    let m = shard.metrics();
    m.connections.fetch_sub(1, Relaxed);
    m.closed(code);
    shard.ctx.admission.release(conn.ip);
}
