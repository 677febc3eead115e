//! The lock-free mailbox from the bus router (and the node) into one shard; it lives
//! beside its producer, and the shard only consumes it.
//!
//! One ordered queue carries events and resume grants, because a grant's place
//! among the events is the resume seam (SPEC §8): everything before it is replayed
//! from the grant, everything after it arrives live. Events are bounded
//! (`limits::INBOX_EVENTS`): the router never waits on a shard — a full inbox drops the event and
//! counts it (`queue_full`), because Redis disconnects a pub/sub client that falls
//! 32 MB behind and that would lose far more. Grants are never dropped.
//!
//! The shard's inbox task sleeps on an `AtomicWaker`; a producer wakes it after a
//! push. glommio turns a wake from a foreign thread into an eventfd notification,
//! and the waker is taken on wake, so a busy shard costs producers no syscall.

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use super::event::Event;
use super::parked::Grant;

/// Control messages for a shard.
#[derive(Debug)]
pub enum Ctl {
    /// SIGTERM/SIGINT: stop accepting, close clients 4011 over the drain window.
    Drain,
}

/// What flows from the router to a shard, in order.
pub enum Item {
    Event(Arc<Event>),
    Grant(Box<Grant>),
}

pub struct Inbox {
    items: SegQueue<Item>,
    events: AtomicUsize,
    capacity: usize,
    ctl: SegQueue<Ctl>,
    waker: AtomicWaker,
}

impl Inbox {
    pub fn new(capacity: usize) -> Inbox {
        Inbox {
            items: SegQueue::new(),
            events: AtomicUsize::new(0),
            capacity: capacity.max(16),
            ctl: SegQueue::new(),
            waker: AtomicWaker::new(),
        }
    }

    /// Queue an event; `false` if the inbox is full (the caller counts the drop).
    pub fn push_event(&self, e: Arc<Event>) -> bool {
        if self.events.load(Ordering::Relaxed) >= self.capacity {
            self.waker.wake();
            return false;
        }
        self.events.fetch_add(1, Ordering::Relaxed);
        self.items.push(Item::Event(e));
        self.waker.wake();
        true
    }

    /// Queue a resume grant (never dropped).
    pub fn push_grant(&self, g: Box<Grant>) {
        self.items.push(Item::Grant(g));
        self.waker.wake();
    }

    pub fn push_ctl(&self, c: Ctl) {
        self.ctl.push(c);
        self.waker.wake();
    }

    pub fn pop(&self) -> Option<Item> {
        let item = self.items.pop()?;
        if matches!(item, Item::Event(_)) {
            self.events.fetch_sub(1, Ordering::Relaxed);
        }
        Some(item)
    }

    pub fn pop_ctl(&self) -> Option<Ctl> {
        self.ctl.pop()
    }

    /// Wait until something is queued.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if !self.items.is_empty() || !self.ctl.is_empty() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if !self.items.is_empty() || !self.ctl.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
