//! A connection's outbound bytes: one buffer for event frames, replies, close
//! frames and the pongs tungstenite owes, bounded by `--send-queue-bytes` (4010 past
//! it), and the direct write that empties it without waking a task.
//!
//! Two writers take turns on a socket, never at once: FAST PATH the direct write
//! ([`Outbound::write_direct`]: one non-blocking `send()` for everything queued,
//! used by the fan-out at the end of each turn and right after a reply), and the
//! connection's writer task (`conn.rs`), which exists only while something must wait
//! for the socket. The direct write runs only while the writer holds nothing in
//! flight, and the writer only ever writes the front of the buffer, so the order of
//! bytes is kept. A frame a direct write cut in the middle is finished before
//! anything else (`partial`): a slow-consumer close keeps that tail, so a client
//! never sees a frame cut short before the close frame.
//!
//! During HELLO (between routing the user tree and HELLO_ACK) event frames are held
//! aside and follow the ACK.

use std::cell::{Cell, RefCell};
use std::task::Waker;
use std::time::Instant;

use crate::limits::OUT_KEEP_BYTES;
use crate::metrics::Latency;
use crate::protocol::frame;

#[derive(Default)]
pub struct Outbound {
    /// Bytes queued and not yet handed to the socket.
    pub buf: RefCell<Vec<u8>>,
    /// Bytes handed to the writer task and not yet written.
    pub inflight: Cell<usize>,
    /// Bytes at the front of `buf` that finish a frame a direct write sent only
    /// part of: they are written whatever happens.
    partial: Cell<usize>,
    /// Bus receive time of the oldest event frame not yet written.
    pub pending_since: Cell<Option<Instant>>,
    /// The socket, for direct writes; -1 until attached and once killed (the kill
    /// comes before the socket is closed, so a reused fd number is never written).
    pub fd: Cell<i32>,
    /// On the shard's dirty list: event frames were queued this fan-out turn.
    pub dirty: Cell<bool>,
    /// HELLO is in progress: event frames wait in `held` until HELLO_ACK is queued.
    holding: Cell<bool>,
    held: RefCell<Vec<u8>>,
    /// A writer task exists (spawned, running or waiting for the socket).
    pub writer_running: Cell<bool>,
    /// The writer task's waker while it waits for the socket.
    pub writer_waker: Cell<Option<Waker>>,
    /// The writer has half-closed the socket after the close frame.
    pub write_shut: Cell<bool>,
}

/// What appending an event frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Appended to the buffer: someone must flush it.
    Queued,
    /// Kept until HELLO_ACK is queued (nothing to flush yet).
    Held,
    /// Not queued: the connection is closing, or this frame passes the bound.
    Refused,
}

/// What a direct write left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// Nothing: the buffer was empty, or all of it went out.
    Done,
    /// The writer task has it (already writing, or must be woken to wait for the socket).
    Writer,
}

impl Outbound {
    /// Bytes queued or in flight: what counts against `--send-queue-bytes`.
    pub fn queued(&self) -> usize {
        self.buf.borrow().len() + self.inflight.get()
    }

    /// FAST PATH: append an already-encoded event frame (or hold it during HELLO).
    /// `Refused` when it would pass `limit`: the caller closes the connection 4010.
    #[inline]
    pub fn append_event(&self, frame: &[u8], received: Instant, limit: usize) -> Push {
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
            return Push::Refused;
        }
        self.buf.borrow_mut().extend_from_slice(frame);
        if self.pending_since.get().is_none() {
            self.pending_since.set(Some(received));
        }
        Push::Queued
    }

    /// FAST PATH: one non-blocking `send()` of everything queued. What the socket
    /// does not take now is left to the writer task (`Direct::Writer`), as is
    /// everything while the writer has bytes in flight or the socket is gone.
    #[inline]
    pub fn write_direct(&self, latency: &mut Latency) -> Direct {
        if self.inflight.get() > 0 {
            return Direct::Done; // the writer takes `buf` once its current write is done
        }
        let fd = self.fd.get();
        if fd < 0 {
            return Direct::Writer;
        }
        let Ok(mut buf) = self.buf.try_borrow_mut() else {
            return Direct::Writer;
        };
        if buf.is_empty() {
            return Direct::Done;
        }
        // SAFETY: `fd` is the connection's open socket (see `fd`); the buffer is
        // valid for `buf.len()` bytes.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 && n as usize == buf.len() {
            buf.clear();
            if let Some(t) = self.pending_since.take() {
                // Charged after the write (a broadcast's last socket is written
                // long after its first), one clock read per batch of writes.
                latency.written(t);
            }
            return Direct::Done;
        }
        if n > 0 {
            let n = n as usize;
            let end = frame::cut_frame_end(&buf, self.partial.get(), n);
            buf.drain(..n);
            self.partial.set(end - n);
        }
        // EAGAIN, a partial write or an error: the writer waits for the socket
        // (or meets the error and ends the connection).
        Direct::Writer
    }

    /// The writer task takes everything queued into `into` (double buffering: the
    /// fan-out appends to `buf` meanwhile); returns when the oldest event in it was
    /// received.
    pub fn take_for_writer(&self, into: &mut Vec<u8>) -> Option<Instant> {
        std::mem::swap(into, &mut *self.buf.borrow_mut());
        self.partial.set(0); // the writer writes all of it
        self.inflight.set(into.len());
        self.pending_since.take()
    }

    /// A slow consumer: drop what was not handed to the socket, except the tail of
    /// a frame already partly written.
    pub fn discard_unsent(&self) {
        let mut buf = self.buf.borrow_mut();
        buf.truncate(self.partial.get());
        buf.shrink_to(OUT_KEEP_BYTES);
    }

    /// Give back the buffer's memory if nothing is queued (idle sweep, after a reply).
    pub fn trim(&self) {
        if let Ok(mut buf) = self.buf.try_borrow_mut() {
            if buf.is_empty() {
                *buf = Vec::new();
            }
        }
    }

    /// Start holding event frames (HELLO in progress).
    pub fn hold(&self) {
        self.holding.set(true);
    }

    /// Stop holding; returns the frames held meanwhile.
    pub fn release_held(&self) -> Vec<u8> {
        self.holding.set(false);
        std::mem::take(&mut *self.held.borrow_mut())
    }
}
