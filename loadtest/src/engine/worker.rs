//! One worker thread: an epoll loop (mio) over its connections, one heap of
//! deadlines for all of them, a bound on attempts in flight, and the life cycle of
//! each connection — queued, connecting (with retries and full-jitter backoff),
//! live, closing — across the coordinator's connect rounds. The protocol itself
//! (what each frame means in each state) is in [`super::conn`].

use mio::{Events, Interest, Poll, Token};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{Conn, State};
use super::track::Acc;
use super::transport::Transport;
use super::{ConnectReport, Connected, Env};
use crate::stats::Recorder;

/// The token of the coordinator's wake-ups.
pub(super) const WAKE: Token = Token(usize::MAX);

/// How long a closing connection waits for the gateway's close before dropping.
const CLOSE_WAIT: Duration = Duration::from_millis(1000);
/// How long a stopping thread waits for its connections to close.
const STOP_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// Move a waiting connection to the attempt queue (pacing, backoff).
    Start,
    /// The attempt's connect timeout.
    Timeout,
    Ping,
    Typing,
    /// Give up waiting for the gateway's close.
    CloseWait,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    due: Instant,
    idx: u32,
    gen: u32,
    kind: Kind,
}

pub(super) struct Worker {
    pub env: Arc<Env>,
    poll: Poll,
    pub conns: Vec<Conn>,
    timers: BinaryHeap<Reverse<Timer>>,
    queue: VecDeque<u32>,
    inflight: usize,
    max_inflight: usize,
    pub round: u32,
    round_start: Instant,
    pub stopping: bool,
    stop_deadline: Instant,
    sockets: usize,
    pub scratch: Vec<u8>,
    pub acc: Acc,
    /// Where outgoing frames are built.
    pub out: Vec<u8>,
    /// The thread's one decompressor (permessage-deflate without context
    /// takeover: reset per message) and where it inflates to.
    pub inflater: flate2::Decompress,
    pub inflated: Vec<u8>,
    /// The wire size of the frame being handled, and whether its message was
    /// compressed (for the per-delivery byte count).
    pub wire: usize,
    pub compressed: bool,
}

/// The thread's body.
pub(super) fn run(env: Arc<Env>, poll: Poll, ids: Vec<usize>, max_inflight: usize) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    if let Ok(mut t) = env.tids.lock() {
        t.push(tid);
    }
    let ctrl = env.ctrl();
    let conns = ids
        .iter()
        .map(|&id| Conn::new(id, &env.plan.conns[id].tracked))
        .collect();
    let mut w = Worker {
        env: env.clone(),
        poll,
        conns,
        timers: BinaryHeap::new(),
        queue: VecDeque::new(),
        inflight: 0,
        max_inflight,
        round: ctrl.round,
        round_start: ctrl.round_start,
        stopping: false,
        stop_deadline: Instant::now(),
        sockets: 0,
        scratch: vec![0; env.read_buffer],
        acc: Acc::default(),
        out: Vec::with_capacity(4096),
        inflater: flate2::Decompress::new(false),
        inflated: Vec::new(),
        wire: 0,
        compressed: false,
    };
    for idx in 0..w.conns.len() {
        w.begin(idx);
    }
    let rec = Recorder::new();
    let mut events = Events::with_capacity(1024);
    let mut busy = false;
    if !env.coalesce.is_zero() {
        // SAFETY: prctl(PR_SET_TIMERSLACK) on this thread, no pointers.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        }
    }
    loop {
        // Interrupt moderation: while events keep coming, sleep `coalesce`
        // outside epoll and then take what arrived without blocking. A thread
        // asleep in epoll_wait is woken by every frame, and on loopback the
        // sender pays each wake-up; this way only the first frame of a burst
        // wakes the thread. Idle, it blocks as usual.
        let timeout = if busy && !env.coalesce.is_zero() {
            std::thread::sleep(env.coalesce);
            Duration::ZERO
        } else {
            w.poll_timeout()
        };
        if let Err(e) = w.poll.poll(&mut events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                eprintln!("xcord-loadtest: epoll failed: {e}");
                break;
            }
        }
        busy = !events.is_empty();
        {
            let mut hist = rec.lock();
            for ev in events.iter() {
                if ev.token() == WAKE {
                    w.on_ctrl();
                    continue;
                }
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                w.on_event(ev.token().0, readable, ev.is_writable(), &mut hist);
            }
        }
        w.run_timers();
        w.start_queued();
        w.acc.flush(&env.counters);
        if w.stopping && (w.sockets == 0 || Instant::now() >= w.stop_deadline) {
            break;
        }
    }
    w.acc.flush(&env.counters);
}

impl Worker {
    fn poll_timeout(&self) -> Duration {
        if !self.queue.is_empty() && self.inflight < self.max_inflight {
            return Duration::ZERO;
        }
        let cap = Duration::from_millis(100);
        match self.timers.peek() {
            Some(Reverse(t)) => t.due.saturating_duration_since(Instant::now()).min(cap),
            None => cap,
        }
    }

    pub(super) fn push_timer(&mut self, idx: usize, delay: Duration, kind: Kind) {
        let gen = self.conns[idx].gen;
        self.push_timer_at(idx, Instant::now() + delay, gen, kind);
    }

    fn push_timer_at(&mut self, idx: usize, due: Instant, gen: u32, kind: Kind) {
        self.timers.push(Reverse(Timer {
            due,
            idx: idx as u32,
            gen,
            kind,
        }));
    }

    /// The coordinator changed the round or stopped the run.
    fn on_ctrl(&mut self) {
        let c = self.env.ctrl();
        if c.stop {
            if !self.stopping {
                self.stopping = true;
                self.stop_deadline = Instant::now() + STOP_WAIT;
                self.queue.clear();
                for idx in 0..self.conns.len() {
                    if self.conns[idx].sock.is_some() {
                        self.close_gracefully(idx, false);
                    } else {
                        let k = &mut self.conns[idx];
                        k.gen = k.gen.wrapping_add(1);
                        k.state = State::Done;
                    }
                }
            }
            return;
        }
        if c.round != self.round {
            self.round = c.round;
            self.round_start = c.round_start;
            self.queue.clear();
            for idx in 0..self.conns.len() {
                self.conns[idx].attempts = 0;
                if self.conns[idx].sock.is_some() {
                    self.close_gracefully(idx, true);
                } else {
                    self.begin(idx);
                }
            }
        }
    }

    /// Start connection `idx` in this round: paced, or queued at once.
    pub(super) fn begin(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        c.gen = c.gen.wrapping_add(1);
        if self.env.connect_rate > 0.0 {
            let slot = self.env.slots.fetch_add(1, Relaxed);
            let due =
                self.round_start + Duration::from_secs_f64(slot as f64 / self.env.connect_rate);
            c.state = State::Waiting;
            let gen = c.gen;
            self.push_timer_at(idx, due, gen, Kind::Start);
        } else {
            c.state = State::Queued;
            self.queue.push_back(idx as u32);
        }
    }

    fn start_queued(&mut self) {
        while self.inflight < self.max_inflight && !self.stopping {
            let Some(idx) = self.queue.pop_front() else {
                break;
            };
            let idx = idx as usize;
            if self.conns[idx].state == State::Queued {
                self.start_attempt(idx);
            }
        }
    }

    fn open_socket(&self, id: usize) -> std::io::Result<mio::net::TcpStream> {
        use socket2::{Domain, Protocol, Socket, Type};
        let addr = self.env.target.addr;
        let s = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        let srcs = &self.env.source_addrs;
        if !srcs.is_empty() {
            let ip = srcs[id % srcs.len()];
            // Let connect() pick the port for the whole 4-tuple: ports are shared
            // across destinations and bind() does not search the ephemeral range
            // (which, with TIME_WAIT left by an earlier run, fails).
            set_bind_no_port(&s);
            s.bind(&SocketAddr::new(ip, 0).into()).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("bind {ip} (ephemeral ports exhausted?): {e}"),
                )
            })?;
        }
        s.set_nodelay(true)?;
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(mio::net::TcpStream::from_std(s.into()))
    }

    fn start_attempt(&mut self, idx: usize) {
        self.inflight += 1;
        let c = &mut self.conns[idx];
        c.reset_attempt();
        c.in_flight = true;
        c.attempts += 1;
        c.gen = c.gen.wrapping_add(1);
        c.t0 = Instant::now();
        c.state = State::Connecting;
        let id = c.id;
        let opened = self.open_socket(id).and_then(|s| {
            let mut t = Transport::new(s, self.env.target.tls.as_ref())?;
            self.poll.registry().register(
                t.socket(),
                Token(idx),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(t)
        });
        match opened {
            Ok(t) => {
                self.conns[idx].sock = Some(t);
                self.sockets += 1;
                self.push_timer(idx, self.env.connect_timeout, Kind::Timeout);
            }
            Err(e) => self.attempt_failed(idx, format!("TCP connect: {e}")),
        }
    }

    fn release(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if c.in_flight {
            c.in_flight = false;
            self.inflight -= 1;
        }
    }

    pub(super) fn drop_socket(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if c.sock.take().is_some() {
            self.sockets -= 1;
        }
        c.gen = c.gen.wrapping_add(1);
        c.leftover = Vec::new();
        c.pending = Vec::new();
        c.frag = None;
    }

    /// The attempt failed: retry after a full-jitter backoff, or report it.
    pub(super) fn attempt_failed(&mut self, idx: usize, why: String) {
        self.drop_socket(idx);
        self.release(idx);
        let env = self.env.clone();
        let c = &mut self.conns[idx];
        if c.attempts <= env.connect_retries && !self.stopping {
            let cap = env
                .connect_backoff
                .saturating_mul(1u32 << (c.attempts - 1).min(16))
                .min(Duration::from_secs(5));
            c.state = State::Waiting;
            self.push_timer(idx, cap.mul_f64(fastrand::f64()), Kind::Start);
            return;
        }
        c.state = State::Done;
        let _ = env.reports.send(ConnectReport {
            id: c.id,
            round: self.round,
            attempts: c.attempts,
            result: Err(why),
        });
    }

    /// Every SUBSCRIBE was granted: the connection is live.
    pub(super) fn attempt_ok(&mut self, idx: usize) {
        self.release(idx);
        let env = self.env.clone();
        let c = &mut self.conns[idx];
        c.state = State::Live;
        env.counters.open.fetch_add(1, Relaxed);
        let _ = env.reports.send(ConnectReport {
            id: c.id,
            round: self.round,
            attempts: c.attempts,
            result: Ok(Connected {
                handshake: c.handshake,
                subscribe: c.t_sub.elapsed(),
                at: Instant::now(),
            }),
        });
        let period = env.ping_interval.unwrap_or(c.hb);
        if env.ping {
            self.push_timer(idx, period.mul_f64(fastrand::f64()), Kind::Ping);
        }
        if let Some(mean) = env.typing_mean {
            if !env.plan.conns[self.conns[idx].id].typing.is_empty() {
                self.push_timer(idx, exp_sample(mean), Kind::Typing);
            }
        }
    }

    /// A live connection closed or broke while it should have stayed open.
    pub(super) fn lost(&mut self, idx: usize, why: String) {
        let c = &self.env.counters;
        c.note_close(why);
        c.lost.fetch_add(1, Relaxed);
        c.open.fetch_sub(1, Relaxed);
        self.drop_socket(idx);
        self.conns[idx].state = State::Done;
    }

    /// Send close 1000 and wait (bounded) for the gateway's close; then, with
    /// `restart`, connect again in the current round.
    pub(super) fn close_gracefully(&mut self, idx: usize, restart: bool) {
        match self.conns[idx].state {
            State::Live => {
                self.env.counters.open.fetch_sub(1, Relaxed);
            }
            State::Closing => {
                self.conns[idx].restart |= restart;
                return;
            }
            _ => self.release(idx),
        }
        self.conns[idx].restart = restart;
        self.conns[idx].state = State::Closing;
        if !self.send(idx, super::ws::OP_CLOSE, &1000u16.to_be_bytes()) {
            return; // send failed: already closed
        }
        if let Some(s) = self.conns[idx].sock.as_mut() {
            s.shutdown();
        }
        self.push_timer(idx, CLOSE_WAIT, Kind::CloseWait);
    }

    /// The closing handshake is over (or timed out).
    pub(super) fn closed(&mut self, idx: usize) {
        self.drop_socket(idx);
        if self.conns[idx].restart && !self.stopping {
            self.conns[idx].restart = false;
            self.begin(idx);
        } else {
            self.conns[idx].state = State::Done;
        }
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse(t)) = self.timers.peek() {
            if t.due > now {
                break;
            }
            let Some(Reverse(t)) = self.timers.pop() else {
                break;
            };
            let idx = t.idx as usize;
            if self.conns[idx].gen != t.gen {
                continue;
            }
            let state = self.conns[idx].state;
            match t.kind {
                Kind::Start if state == State::Waiting && !self.stopping => {
                    self.conns[idx].state = State::Queued;
                    self.queue.push_back(t.idx);
                }
                Kind::Timeout if state.in_attempt() => {
                    self.attempt_failed(idx, "connect timeout".into());
                }
                Kind::Ping if state == State::Live => self.ping(idx),
                Kind::Typing if state == State::Live => self.typing(idx),
                Kind::CloseWait if state == State::Closing => self.closed(idx),
                _ => {}
            }
        }
    }

    fn ping(&mut self, idx: usize) {
        if self.send_text(idx, br#"{"type":"PING","payload":{}}"#) {
            self.acc.pings += 1;
            let period = self.env.ping_interval.unwrap_or(self.conns[idx].hb);
            self.push_timer(idx, period, Kind::Ping);
        }
    }

    fn typing(&mut self, idx: usize) {
        let env = self.env.clone();
        let targets = &env.plan.conns[self.conns[idx].id].typing;
        if env.typing_on.load(Relaxed) {
            let ch = &targets[fastrand::usize(..targets.len())];
            let m = serde_json::json!({"type": "TYPING_START", "payload": {"channelId": ch}});
            if !self.send_text(idx, m.to_string().as_bytes()) {
                return;
            }
            self.acc.typing_sent += 1;
        }
        if let Some(mean) = env.typing_mean {
            self.push_timer(idx, exp_sample(mean), Kind::Typing);
        }
    }
}

fn set_bind_no_port(s: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a valid socket with a c_int option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn exp_sample(mean: Duration) -> Duration {
    let u = fastrand::f64().max(1e-12);
    Duration::from_secs_f64((-u.ln() * mean.as_secs_f64()).min(3600.0))
}
