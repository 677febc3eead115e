//! The shard's clock work: the sweep that enforces every deadline (HELLO and
//! heartbeat 4009, token expiry 4004, typing auto-stop, connections stuck closing),
//! trims idle buffers and publishes the latency histogram; and the drain that
//! closes every client 4011, spread over `--drain-seconds`, on SIGTERM.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::conn::{Conn, Phase};
use super::{commands, Shard};
use crate::limits::{
    CLOSING_KILL_AFTER, DRAIN_FLUSH_WAIT, LATENCY_FLUSH_EVERY, SWEEP_TICK_MAX, SWEEP_TICK_MIN,
    TRIM_EVERY,
};
use crate::protocol::codes;

/// Close every client with 4011, spread evenly over `--drain-seconds` so a fleet
/// does not reconnect in lockstep; then end the shard.
pub(super) async fn drain(shard: Rc<Shard>) {
    let window = shard.ctx.cfg.drain;
    let keys: Vec<usize> = shard.conns.borrow().iter().map(|(k, _)| k).collect();
    let n = keys.len().max(1) as u32;
    let start = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        let due = start + window.mul_f64(i as f64 / n as f64);
        let now = Instant::now();
        if due > now + Duration::from_millis(2) {
            glommio::timer::sleep(due - now).await;
        }
        let c = shard.conns.borrow().get(*k).cloned();
        if let Some(c) = c {
            c.begin_close(codes::DRAINING, true);
        }
    }
    // Connections that were mid-handshake when the drain began are refused at
    // registration; give the closes a moment to flush, then end.
    let deadline = Instant::now() + DRAIN_FLUSH_WAIT;
    while !shard.conns.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let rest: Vec<Rc<Conn>> = shard
        .conns
        .borrow()
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    for c in rest {
        c.kill();
    }
    glommio::timer::sleep(Duration::from_millis(20)).await;
    flush_latency(&shard);
    shard.drained.fire();
}

fn flush_latency(shard: &Shard) {
    let mut local = shard.latency.borrow_mut();
    if local.hist.is_empty() {
        return;
    }
    if let Ok(mut node) = shard.ctx.metrics.latency.lock() {
        local.drain_into(&mut node);
    }
}

/// What the sweep must do to one connection now, if anything.
fn due(shard: &Shard, c: &Conn, now: Instant, now_ms: u64) -> Option<Action> {
    let cfg = &shard.ctx.cfg;
    match c.phase() {
        Phase::AwaitHello => {
            (now.duration_since(c.opened) > cfg.hello_timeout).then_some(Action::Timeout)
        }
        Phase::Ready => {
            if now.duration_since(c.last_rx.get()) > cfg.heartbeat * 2 {
                Some(Action::Timeout)
            } else {
                commands::tick_due(shard, c, now, now_ms).then_some(Action::Tick)
            }
        }
        Phase::Closing => c
            .life
            .closing_since
            .get()
            .is_some_and(|t| now.duration_since(t) > CLOSING_KILL_AFTER)
            .then_some(Action::Kill),
    }
}

#[derive(Clone, Copy)]
enum Action {
    /// HELLO or heartbeat overdue: 4009.
    Timeout,
    /// Typing ran out or the token expired.
    Tick,
    /// Stuck closing.
    Kill,
}

/// Enforce the deadlines: HELLO (4009), heartbeat (4009), token expiry (4004),
/// typing auto-stop, and connections stuck closing. Each tick reads every
/// connection once under one borrow, with one clock read, and touches (clones,
/// closes) only those with something due: an idle connection costs a few loads.
pub(super) async fn sweep_loop(shard: Rc<Shard>) {
    let cfg = &shard.ctx.cfg;
    let tick = (cfg.heartbeat.min(cfg.hello_timeout) / 4).clamp(SWEEP_TICK_MIN, SWEEP_TICK_MAX);
    let mut last_flush = Instant::now();
    let mut last_trim = Instant::now();
    let mut todo: Vec<(Rc<Conn>, Action)> = Vec::new();
    loop {
        glommio::timer::sleep(tick).await;
        let now = Instant::now();
        let now_ms = xcord_common::clock::unix_millis();
        todo.extend(
            shard
                .conns
                .borrow()
                .iter()
                .filter_map(|(_, c)| due(&shard, c, now, now_ms).map(|a| (c.clone(), a))),
        );
        for (c, action) in todo.drain(..) {
            match action {
                Action::Timeout => c.begin_close(codes::TIMEOUT, true),
                Action::Tick => commands::on_tick(&shard, &c, now, now_ms),
                Action::Kill => c.kill(),
            }
        }
        if now.duration_since(last_flush) > LATENCY_FLUSH_EVERY {
            flush_latency(&shard);
            last_flush = now;
        }
        if now.duration_since(last_trim) > TRIM_EVERY {
            // Idle connections give their outbound buffers back; a busy one
            // re-grows its buffer once per trim period at most.
            for (_, c) in shard.conns.borrow().iter() {
                c.out.trim();
            }
            last_trim = now;
        }
    }
}
