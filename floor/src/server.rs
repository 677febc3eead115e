//! The loop: one thread, one edge-triggered epoll set holding the client listener,
//! the admin listener, the Redis subscription and every connection. Connections
//! live in a slab (a `Vec` and a free list); a slot's epoll token carries its
//! generation, so an event for a connection closed earlier in the same batch is
//! ignored. There is no timer per connection: one coarse sweep (only while a
//! connection is closing or Redis is down) ends half-closed sockets and retries
//! Redis.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::bus::Redis;
use crate::index::Index;
use crate::proto::Framer;
use crate::resp;
use crate::sys::{self, Epoll, ET, GONE, IN, OUT};
use crate::ws::{self, Head};

/// Past this many unsent bytes a connection is closed (a slow consumer).
pub const MAX_QUEUE: usize = 1 << 20;
/// How long a closing connection may take to close its side.
const LINGER: Duration = Duration::from_secs(2);
/// How often the sweep runs while there is something to sweep.
const SWEEP_MS: i32 = 250;

const LISTENER: u64 = 1 << 63;
const ADMIN: u64 = LISTENER | 1;
pub const REDIS: u64 = LISTENER | 2;

/// What the floor was told at start.
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub redis: Option<resp::Target>,
    pub jwt_secret: String,
    pub jwt_leeway_secs: u64,
    pub admin_token: Option<String>,
    pub heartbeat_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Free,
    /// Reading the upgrade request.
    Http,
    AwaitHello,
    Ready,
    /// Our close frame or HTTP refusal is out (or going): read until the peer closes.
    Closing,
    /// An admin HTTP connection.
    Admin,
}

pub struct Conn {
    pub fd: RawFd,
    pub gen: u32,
    pub phase: Phase,
    /// The seq of the last event delivered: an event that two of the connection's
    /// subscriptions cover goes out once.
    pub last_seq: u64,
    /// Bytes of an unfinished frame or request.
    pub inbuf: Vec<u8>,
    /// Bytes the socket would not take yet; the first `sent` of them are gone.
    pub out: Vec<u8>,
    pub sent: usize,
    /// Names this connection subscribed (keys of the index).
    pub subs: Vec<Box<str>>,
    /// Failed during a fan-out; freed right after it.
    pub dead: bool,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            fd: -1,
            gen: 0,
            phase: Phase::Free,
            last_seq: 0,
            inbuf: Vec::new(),
            out: Vec::new(),
            sent: 0,
            subs: Vec::new(),
            dead: false,
        }
    }

    /// Whether nothing is waiting to be written.
    pub fn idle(&self) -> bool {
        self.sent == self.out.len()
    }
}

pub struct Server {
    pub ep: Epoll,
    listener: RawFd,
    admin: RawFd,
    pub conns: Vec<Conn>,
    free: Vec<u32>,
    pub index: Index,
    pub framer: Framer,
    /// The seq of the last event framed.
    pub seq: u64,
    /// The read buffer every connection shares (frames are parsed in it).
    pub scratch: Vec<u8>,
    /// JSON scratch for replies.
    pub json: Vec<u8>,
    pub doomed: Vec<u32>,
    closing: Vec<(u32, u32, Instant)>,
    pub redis: Option<Redis>,
    pub key: DecodingKey,
    pub validation: Validation,
    pub cfg: Config,
}

fn token(slot: u32, gen: u32) -> u64 {
    (u64::from(gen & 0x7fff_ffff) << 32) | u64::from(slot)
}

impl Server {
    /// Bind both listeners (logging their addresses as the gateway does) and
    /// subscribe to Redis.
    pub fn new(cfg: Config) -> Result<Server, String> {
        let ep = Epoll::new(1024).map_err(|e| format!("epoll: {e}"))?;
        let (admin, admin_addr) = sys::listen(cfg.admin_listen)
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.admin_listen))?;
        let (listener, addr) =
            sys::listen(cfg.listen).map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
        ep.add(admin, ADMIN, IN | ET).map_err(|e| e.to_string())?;
        ep.add(listener, LISTENER, IN | ET)
            .map_err(|e| e.to_string())?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = cfg.jwt_leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let mut s = Server {
            ep,
            listener,
            admin,
            conns: Vec::new(),
            free: Vec::new(),
            index: Index::default(),
            framer: Framer::default(),
            seq: 0,
            scratch: vec![0; 64 * 1024],
            json: Vec::with_capacity(512),
            doomed: Vec::new(),
            closing: Vec::new(),
            redis: cfg.redis.clone().map(Redis::new),
            key: DecodingKey::from_secret(cfg.jwt_secret.as_bytes()),
            validation,
            cfg,
        };
        s.redis_connect();
        eprintln!("xcord_floor: admin listening on {admin_addr}");
        eprintln!("xcord_floor: listening on {addr}");
        Ok(s)
    }

    /// Serve until killed.
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            let sweep = !self.closing.is_empty() || self.redis.as_ref().is_some_and(|r| !r.up());
            let n = self.ep.wait(if sweep { SWEEP_MS } else { -1 })?;
            for i in 0..n {
                let (tok, flags) = self.ep.event(i);
                match tok {
                    LISTENER => self.accept(false),
                    ADMIN => self.accept(true),
                    REDIS => self.on_redis(flags),
                    t => self.on_conn(t, flags),
                }
            }
            if sweep {
                self.sweep();
            }
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let mut closing = std::mem::take(&mut self.closing);
        let mut i = 0;
        while i < closing.len() {
            let (slot, gen, deadline) = closing[i];
            let c = &self.conns[slot as usize];
            if c.gen == gen && c.phase == Phase::Closing && deadline > now {
                i += 1;
                continue;
            }
            if c.gen == gen && c.phase == Phase::Closing {
                self.free(slot);
            }
            closing.swap_remove(i);
        }
        // Closes begun during this sweep (none expected) are kept.
        closing.append(&mut self.closing);
        self.closing = closing;
        self.redis_retry(now);
    }

    fn accept(&mut self, admin: bool) {
        let lfd = if admin { self.admin } else { self.listener };
        loop {
            let fd = match sys::accept(lfd) {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and the like: the backlog waits for the next edge.
                    eprintln!("xcord_floor: accept: {e}");
                    return;
                }
            };
            if !admin {
                sys::set_nodelay(fd);
            }
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.conns.push(Conn::new());
                    (self.conns.len() - 1) as u32
                }
            };
            let c = &mut self.conns[slot as usize];
            c.fd = fd;
            c.phase = if admin { Phase::Admin } else { Phase::Http };
            if self.ep.add(fd, token(slot, c.gen), IN | OUT | ET).is_err() {
                self.free(slot);
            }
        }
    }

    fn on_conn(&mut self, tok: u64, flags: u32) {
        let (slot, gen) = (tok as u32, ((tok >> 32) & 0x7fff_ffff) as u32);
        if !self.live(slot, gen) {
            return;
        }
        if flags & (IN | GONE) != 0 {
            self.on_readable(slot, gen, flags);
        }
        if flags & OUT != 0 && self.live(slot, gen) {
            self.flush(slot);
        }
    }

    fn live(&self, slot: u32, gen: u32) -> bool {
        self.conns
            .get(slot as usize)
            .is_some_and(|c| c.phase != Phase::Free && c.gen & 0x7fff_ffff == gen & 0x7fff_ffff)
    }

    /// Read until drained (edge-triggered), handling what arrives.
    fn on_readable(&mut self, slot: u32, gen: u32, flags: u32) {
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            let fd = self.conns[slot as usize].fd;
            match sys::recv(fd, &mut scratch) {
                Ok(0) => {
                    self.free(slot);
                    break;
                }
                Ok(n) => {
                    self.ingest(slot, &mut scratch[..n]);
                    if !self.live(slot, gen) {
                        break;
                    }
                    // A short read drained the socket: new bytes bring a new edge.
                    if n < scratch.len() && flags & GONE == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.free(slot);
                    break;
                }
            }
        }
        self.scratch = scratch;
        if self.live(slot, gen) {
            self.flush(slot);
        }
    }

    fn ingest(&mut self, slot: u32, data: &mut [u8]) {
        match self.conns[slot as usize].phase {
            Phase::Http => self.on_http(slot, data),
            Phase::AwaitHello | Phase::Ready => self.on_ws(slot, data),
            Phase::Admin => self.on_admin(slot, data),
            Phase::Closing | Phase::Free => {}
        }
    }

    fn on_http(&mut self, slot: u32, data: &mut [u8]) {
        let c = &mut self.conns[slot as usize];
        let mut head = std::mem::take(&mut c.inbuf);
        let buf: &mut [u8] = if head.is_empty() {
            data
        } else {
            head.extend_from_slice(data);
            &mut head
        };
        match ws::parse_upgrade(buf, &mut c.out) {
            Head::Partial => c.inbuf = buf.to_vec(),
            Head::Refuse(response) => {
                c.out.extend_from_slice(response);
                self.begin_closing(slot);
            }
            Head::Upgrade(len) => {
                c.phase = Phase::AwaitHello;
                if len < buf.len() {
                    self.on_ws(slot, &mut buf[len..]);
                }
            }
        }
    }

    /// Parse whole frames from `data`, keeping an unfinished one for the next read.
    fn on_ws(&mut self, slot: u32, data: &mut [u8]) {
        let c = &mut self.conns[slot as usize];
        if c.inbuf.is_empty() {
            let used = self.frames(slot, data);
            if self.is_ws(slot) && used < data.len() {
                self.conns[slot as usize]
                    .inbuf
                    .extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut c.inbuf);
            buf.extend_from_slice(data);
            let used = self.frames(slot, &mut buf);
            if self.is_ws(slot) && used < buf.len() {
                buf.drain(..used);
                self.conns[slot as usize].inbuf = buf;
            }
        }
    }

    fn is_ws(&self, slot: u32) -> bool {
        matches!(
            self.conns[slot as usize].phase,
            Phase::AwaitHello | Phase::Ready
        )
    }

    fn frames(&mut self, slot: u32, buf: &mut [u8]) -> usize {
        let mut at = 0;
        while self.is_ws(slot) {
            match ws::parse_frame(&mut buf[at..]) {
                ws::Parsed::Need => break,
                ws::Parsed::Fail(code) => self.close_with(slot, code),
                ws::Parsed::Frame(f, n) => {
                    self.on_frame(slot, f);
                    at += n;
                }
            }
        }
        at
    }

    fn on_frame(&mut self, slot: u32, f: ws::Frame<'_>) {
        match f {
            ws::Frame::Text(t) => self.on_command(slot, t),
            ws::Frame::Binary => self.close_with(slot, 4002),
            ws::Frame::Close(p) => {
                // Echo the code, then close: the peer sends nothing after its close.
                self.unsubscribe_all(slot);
                let c = &mut self.conns[slot as usize];
                ws::push_frame(ws::OP_CLOSE, p.get(..2).unwrap_or(&[]), &mut c.out);
                self.flush(slot);
                self.free(slot);
            }
            ws::Frame::Ping(p) => {
                ws::push_frame(ws::OP_PONG, p, &mut self.conns[slot as usize].out);
            }
            ws::Frame::Pong => {}
        }
    }

    /// Send a close frame with `code`, then close once the peer has.
    pub fn close_with(&mut self, slot: u32, code: u16) {
        self.unsubscribe_all(slot);
        ws::push_close(code, &mut self.conns[slot as usize].out);
        self.begin_closing(slot);
    }

    /// Stop reading commands; after what is queued, our FIN; the socket is closed
    /// when the peer's arrives (or after `LINGER`), so that our last bytes are not
    /// lost to a reset.
    pub fn begin_closing(&mut self, slot: u32) {
        let c = &mut self.conns[slot as usize];
        c.phase = Phase::Closing;
        c.inbuf = Vec::new();
        self.closing.push((slot, c.gen, Instant::now() + LINGER));
        self.flush(slot);
    }

    /// Write what is queued; on `WouldBlock` the next EPOLLOUT edge resumes.
    pub fn flush(&mut self, slot: u32) {
        let c = &mut self.conns[slot as usize];
        while !c.idle() {
            match sys::send(c.fd, &c.out[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.free(slot),
            }
        }
        // Nothing queued: give the memory back (an idle connection holds none).
        c.out = Vec::new();
        c.sent = 0;
        if c.phase == Phase::Closing {
            sys::shutdown_write(c.fd);
        }
    }

    pub fn unsubscribe_all(&mut self, slot: u32) {
        let subs = std::mem::take(&mut self.conns[slot as usize].subs);
        for s in &subs {
            self.index.remove(s, slot);
        }
    }

    /// Close the socket and free the slot.
    pub fn free(&mut self, slot: u32) {
        if self.conns[slot as usize].phase == Phase::Free {
            return;
        }
        self.unsubscribe_all(slot);
        let c = &mut self.conns[slot as usize];
        sys::close(c.fd);
        let gen = c.gen.wrapping_add(1);
        *c = Conn::new();
        c.gen = gen;
        self.free.push(slot);
    }
}
