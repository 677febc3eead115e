//! Events in — the Redis subscription, read by a RESP reader on a nonblocking
//! socket in the loop's own epoll set, and the admin route — and the fan-out: each
//! event framed once, then one `send()` per subscriber.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{IntoRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::admin::{self, Request, Route};
use crate::index;
use crate::resp::{self, Msg, Target};
use crate::server::{Conn, Server, MAX_QUEUE, REDIS};
use crate::sys::{self, ET, GONE, IN};

/// The Redis subscription's state.
pub struct Redis {
    target: Target,
    fd: Option<RawFd>,
    /// Bytes of an unfinished message.
    buf: Vec<u8>,
    retry_at: Instant,
}

impl Redis {
    pub fn new(target: Target) -> Redis {
        Redis {
            target,
            fd: None,
            buf: Vec::new(),
            retry_at: Instant::now(),
        }
    }

    /// Subscribed.
    pub fn up(&self) -> bool {
        self.fd.is_some()
    }
}

/// Connect, log in, PSUBSCRIBE `events:*` and wait for the confirmation — blocking
/// and bounded, at start and on reconnect only — so that once the floor says it is
/// listening, an event published to Redis reaches it. Returns the socket and any
/// bytes read past the confirmation.
fn subscribe(target: &Target) -> Result<(TcpStream, Vec<u8>), String> {
    let addr = target
        .addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut cmd = Vec::new();
    match (&target.user, &target.password) {
        (Some(u), Some(p)) => resp::command(&[b"AUTH", u.as_bytes(), p.as_bytes()], &mut cmd),
        (None, Some(p)) => resp::command(&[b"AUTH", p.as_bytes()], &mut cmd),
        _ => {}
    }
    resp::command(&[b"PSUBSCRIBE", b"events:*"], &mut cmd);
    s.write_all(&cmd).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed while subscribing".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Some((m, len)) = resp::parse(&buf[at..])? {
            at += len;
            match m {
                Msg::Error(e) => return Err(String::from_utf8_lossy(e).into_owned()),
                Msg::Subscribed => {
                    buf.drain(..at);
                    return Ok((s, buf));
                }
                _ => {}
            }
        }
    }
}

/// Queue or write one frame to one connection; false: it must be closed.
fn deliver(c: &mut Conn, frame: &[u8]) -> bool {
    if !c.idle() {
        if c.out.len() - c.sent + frame.len() > MAX_QUEUE {
            return false;
        }
        c.out.extend_from_slice(frame);
        return true;
    }
    let n = match sys::send(c.fd, frame) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            0
        }
        Err(_) => return false,
    };
    if n < frame.len() {
        // The rest goes on the next EPOLLOUT edge.
        c.out.clear();
        c.sent = 0;
        c.out.extend_from_slice(&frame[n..]);
    }
    true
}

impl Server {
    /// (Re)subscribe to Redis; on failure, try again a second later.
    pub fn redis_connect(&mut self) {
        let Some(r) = self.redis.as_mut() else {
            return;
        };
        match subscribe(&r.target) {
            Ok((s, buf)) => {
                if let Err(e) = s.set_nonblocking(true) {
                    eprintln!("xcord_floor: redis: {e}");
                    r.retry_at = Instant::now() + Duration::from_secs(1);
                    return;
                }
                let fd = s.into_raw_fd();
                if let Err(e) = self.ep.add(fd, REDIS, IN | ET) {
                    eprintln!("xcord_floor: redis: epoll: {e}");
                    sys::close(fd);
                    r.retry_at = Instant::now() + Duration::from_secs(1);
                    return;
                }
                r.fd = Some(fd);
                r.buf = buf;
                eprintln!(
                    "xcord_floor: redis: subscribed to events:* on {}",
                    r.target.addr
                );
                self.on_redis(0);
            }
            Err(e) => {
                eprintln!(
                    "xcord_floor: redis {}: {e}; retrying every second",
                    r.target.addr
                );
                r.retry_at = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    pub fn redis_retry(&mut self, now: Instant) {
        if self
            .redis
            .as_ref()
            .is_some_and(|r| !r.up() && now >= r.retry_at)
        {
            self.redis_connect();
        }
    }

    /// Read what Redis sent (until drained) and fan out every complete event;
    /// `flags` are the epoll event's.
    pub fn on_redis(&mut self, flags: u32) {
        let Some((fd, mut buf)) = self
            .redis
            .as_mut()
            .and_then(|r| Some((r.fd?, std::mem::take(&mut r.buf))))
        else {
            return;
        };
        let mut chunk = std::mem::take(&mut self.scratch);
        let mut lost = self.redis_messages(&mut buf).err();
        while lost.is_none() {
            match sys::recv(fd, &mut chunk) {
                Ok(0) => lost = Some("closed".into()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    lost = self.redis_messages(&mut buf).err();
                    // A short read drained the socket: new bytes bring a new edge.
                    if n < chunk.len() && flags & GONE == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => lost = Some(e.to_string()),
            }
        }
        self.scratch = chunk;
        let Some(r) = self.redis.as_mut() else {
            return;
        };
        match lost {
            None => r.buf = buf,
            Some(why) => {
                eprintln!("xcord_floor: redis: subscription lost ({why}); reconnecting");
                sys::close(fd);
                r.fd = None;
                r.retry_at = Instant::now();
            }
        }
    }

    /// Fan out the complete messages at the start of `buf` and drop them from it.
    fn redis_messages(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        let mut at = 0;
        while let Some((m, len)) = resp::parse(&buf[at..])? {
            match m {
                Msg::Event { channel, body } => {
                    let ch = channel.strip_prefix(b"events:").unwrap_or(b"");
                    if let Some(ch) = self.framer.bus(self.seq + 1, ch, body) {
                        self.seq += 1;
                        self.fan_out(ch);
                    }
                }
                Msg::Error(e) => return Err(String::from_utf8_lossy(e).into_owned()),
                Msg::Subscribed | Msg::Other => {}
            }
            at += len;
        }
        buf.drain(..at);
        Ok(())
    }

    /// Write the frame the framer built last to every connection covered by
    /// `channel`: the lists of each of its segment prefixes, one `send()` each.
    pub fn fan_out(&mut self, channel: &str) {
        let Server {
            conns,
            index,
            framer,
            doomed,
            seq,
            ..
        } = self;
        let frame = framer.last();
        for p in index::prefixes(channel) {
            for &slot in index.get(p) {
                let c = &mut conns[slot as usize];
                if c.last_seq == *seq || c.dead {
                    continue;
                }
                c.last_seq = *seq;
                if !deliver(c, frame) {
                    c.dead = true;
                    doomed.push(slot);
                }
            }
        }
        while let Some(slot) = self.doomed.pop() {
            self.free(slot);
        }
    }

    /// Answer every complete admin request in the connection's bytes.
    pub fn on_admin(&mut self, slot: u32, data: &[u8]) {
        let mut buf = std::mem::take(&mut self.conns[slot as usize].inbuf);
        buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            let req = match admin::parse(&buf[at..], self.cfg.admin_token.as_deref()) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(()) => {
                    let out = &mut self.conns[slot as usize].out;
                    admin::respond(400, r#"{"error":"bad request"}"#, true, out);
                    return self.begin_closing(slot);
                }
            };
            let body = &buf[at + req.body.start..at + req.body.end];
            let (status, text) = self.admin_route(&req, body);
            admin::respond(status, &text, req.close, &mut self.conns[slot as usize].out);
            at += req.len;
            if req.close {
                return self.begin_closing(slot);
            }
        }
        buf.drain(..at);
        if !buf.is_empty() {
            self.conns[slot as usize].inbuf = buf;
        }
    }

    fn admin_route(&mut self, req: &Request, body: &[u8]) -> (u16, Cow<'static, str>) {
        match req.route {
            Route::Publish if !req.authorized => {
                (401, r#"{"error":"missing or wrong bearer token"}"#.into())
            }
            Route::Publish => match self.framer.admin(self.seq + 1, body) {
                Ok(channel) => {
                    self.seq += 1;
                    self.fan_out(&channel);
                    (202, r#"{"ok":true}"#.into())
                }
                Err(m) => (400, format!(r#"{{"error":"{m}"}}"#).into()),
            },
            Route::Health => (200, r#"{"ok":true}"#.into()),
            Route::Ready if self.redis.as_ref().is_none_or(Redis::up) => {
                (200, r#"{"ready":true}"#.into())
            }
            Route::Ready => (503, r#"{"ready":false}"#.into()),
            Route::NotFound => (404, r#"{"error":"not found"}"#.into()),
        }
    }
}
