//! The lock-free mailbox from other threads (the bus router, the node) into one shard.
//!
//! Events go into a bounded `ArrayQueue`: the router never waits on a shard — a full
//! queue drops the event and counts it (`queue_full`), because Redis disconnects a
//! pub/sub client that falls 32 MB behind and that would lose far more.
//! The shard's inbox task sleeps on an `AtomicWaker`; a producer wakes it after a
//! push. glommio turns a wake from a foreign thread into an eventfd notification,
//! and the waker is taken on wake, so a busy shard costs producers no syscall.

use atomic_waker::AtomicWaker;
use crossbeam_queue::{ArrayQueue, SegQueue};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use crate::bus::event::Event;

/// Control messages for a shard.
#[derive(Debug)]
pub enum Ctl {
    /// SIGTERM/SIGINT: stop accepting, close clients 4011 over the drain window.
    Drain,
}

pub struct Inbox {
    events: ArrayQueue<Arc<Event>>,
    ctl: SegQueue<Ctl>,
    waker: AtomicWaker,
}

impl Inbox {
    pub fn new(capacity: usize) -> Inbox {
        Inbox {
            events: ArrayQueue::new(capacity.max(16)),
            ctl: SegQueue::new(),
            waker: AtomicWaker::new(),
        }
    }

    /// Queue an event; `false` if the queue is full (the caller counts the drop).
    pub fn push_event(&self, e: Arc<Event>) -> bool {
        let ok = self.events.push(e).is_ok();
        self.waker.wake();
        ok
    }

    pub fn push_ctl(&self, c: Ctl) {
        self.ctl.push(c);
        self.waker.wake();
    }

    pub fn pop_event(&self) -> Option<Arc<Event>> {
        self.events.pop()
    }

    pub fn pop_ctl(&self) -> Option<Ctl> {
        self.ctl.pop()
    }

    /// Wait until something is queued.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if !self.events.is_empty() || !self.ctl.is_empty() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if !self.events.is_empty() || !self.ctl.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
