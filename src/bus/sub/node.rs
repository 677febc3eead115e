//! One pub/sub connection to one Redis node, nonblocking, driven by the bus
//! thread's poll loop: connect (AUTH if the URL carries credentials), write
//! commands, and turn what Redis sends into [`Event`]s. It remembers the commands
//! in flight, in order, so each reply — a confirmation, or an error such as
//! `-MOVED` — is matched to the roots it was about, and a `sunsubscribe` that is
//! no reply (Redis pushes it when a slot migrates away) is told apart from one
//! that is.

use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::ToSocketAddrs;
use std::time::Instant;

use super::resp::{self, Resp};

/// What a connection heard.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A published message: its channel and body.
    Message { channel: Vec<u8>, body: Vec<u8> },
    /// `SSUBSCRIBE` of this channel confirmed.
    Subscribed(Vec<u8>),
    /// `PSUBSCRIBE` confirmed.
    PatternSubscribed,
    /// The channel is no longer subscribed here; `pushed` when Redis did it on its
    /// own (a slot moved), not in reply to our `SUNSUBSCRIBE`.
    Unsubscribed { channel: Vec<u8>, pushed: bool },
    /// A command about these channels failed (`-MOVED …`, `-CLUSTERDOWN …`).
    Refused {
        channels: Vec<Vec<u8>>,
        error: String,
    },
}

#[derive(Debug)]
enum Sent {
    Auth,
    /// Channels of an SSUBSCRIBE still to be confirmed.
    Subscribe(Vec<Vec<u8>>),
    Unsubscribe(Vec<Vec<u8>>),
    Pattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Up,
    Down,
}

/// The room a read of the socket gets.
const READ_CHUNK: usize = 64 * 1024;

pub struct Node {
    pub addr: String,
    sock: Option<Socket>,
    pub state: State,
    pub since: Instant,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    sent: VecDeque<Sent>,
}

/// Credentials from the URL the node was given.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Node {
    /// Start connecting to `addr` ("host:port").
    pub fn connect(addr: &str, auth: &Auth) -> Node {
        let mut n = Node {
            addr: addr.to_owned(),
            sock: None,
            state: State::Down,
            since: Instant::now(),
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            sent: VecDeque::new(),
        };
        if let Ok(sock) = n.open() {
            n.sock = Some(sock);
            n.state = State::Connecting;
            if let Some(p) = &auth.password {
                let mut args: Vec<&[u8]> = vec![b"AUTH"];
                if let Some(u) = &auth.username {
                    args.push(u.as_bytes());
                }
                args.push(p.as_bytes());
                resp::encode(&mut n.wbuf, args);
                n.sent.push_back(Sent::Auth);
            }
        }
        n
    }

    fn open(&self) -> io::Result<Socket> {
        let sa = self
            .addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other("no address"))?;
        let sock = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        match sock.connect(&SockAddr::from(sa)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(sock)
    }

    pub fn fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.sock.as_ref().map(|s| s.as_raw_fd())
    }

    pub fn wants_write(&self) -> bool {
        self.state == State::Connecting || !self.wbuf.is_empty()
    }

    /// Queue `SSUBSCRIBE` of channels (all of one slot).
    pub fn subscribe(&mut self, channels: Vec<Vec<u8>>) {
        let mut args: Vec<&[u8]> = vec![b"SSUBSCRIBE"];
        args.extend(channels.iter().map(Vec::as_slice));
        resp::encode(&mut self.wbuf, args);
        self.sent.push_back(Sent::Subscribe(channels));
    }

    /// Queue `SUNSUBSCRIBE` of channels (all of one slot).
    pub fn unsubscribe(&mut self, channels: Vec<Vec<u8>>) {
        let mut args: Vec<&[u8]> = vec![b"SUNSUBSCRIBE"];
        args.extend(channels.iter().map(Vec::as_slice));
        resp::encode(&mut self.wbuf, args);
        self.sent.push_back(Sent::Unsubscribe(channels));
    }

    /// Queue `PSUBSCRIBE pattern`.
    pub fn psubscribe(&mut self, pattern: &[u8]) {
        resp::encode(&mut self.wbuf, [&b"PSUBSCRIBE"[..], pattern]);
        self.sent.push_back(Sent::Pattern);
    }

    /// The socket is writable: finish connecting, write what is queued. `Err`:
    /// the connection is lost.
    pub fn on_writable(&mut self) -> io::Result<()> {
        let Some(sock) = self.sock.as_mut() else {
            return Err(io::Error::other("closed"));
        };
        if self.state == State::Connecting {
            if let Some(e) = sock.take_error()? {
                return Err(e);
            }
            self.state = State::Up;
            self.since = Instant::now();
        }
        while !self.wbuf.is_empty() {
            match sock.write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The socket is readable: read everything there is and return what it said.
    /// `Err`: the connection is lost (what was parsed before is still returned
    /// through `events`).
    pub fn on_readable(&mut self, events: &mut Vec<Event>) -> io::Result<()> {
        let mut closed = None;
        if let Some(sock) = self.sock.as_mut() {
            loop {
                // Straight into the buffer's spare room: no zeroed chunk, no copy.
                if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                    self.rbuf.reserve(READ_CHUNK);
                }
                let spare = self.rbuf.spare_capacity_mut();
                let room = spare.len();
                match sock.recv(spare) {
                    Ok(0) => {
                        closed = Some(io::Error::from(io::ErrorKind::UnexpectedEof));
                        break;
                    }
                    Ok(n) => {
                        // SAFETY: recv initialised the first `n` bytes of the spare room.
                        unsafe { self.rbuf.set_len(self.rbuf.len() + n) };
                        if n < room {
                            // A short read emptied the socket; poll(2) is
                            // level-triggered, so no read just to meet EAGAIN.
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        closed = Some(e);
                        break;
                    }
                }
            }
        }
        let mut at = 0;
        loop {
            match resp::parse(&self.rbuf[at..]) {
                Ok(Some((v, used))) => {
                    at += used;
                    self.on_value(v, events);
                }
                Ok(None) => break,
                Err(e) => {
                    closed = Some(io::Error::other(e));
                    break;
                }
            }
        }
        self.rbuf.drain(..at);
        match closed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn on_value(&mut self, v: Resp, events: &mut Vec<Event>) {
        match v {
            Resp::Error(error) => match self.sent.pop_front() {
                Some(Sent::Subscribe(channels) | Sent::Unsubscribe(channels)) => {
                    events.push(Event::Refused { channels, error });
                }
                Some(Sent::Auth) => tracing::warn!("redis {}: AUTH refused: {error}", self.addr),
                _ => tracing::warn!("redis {}: {error}", self.addr),
            },
            Resp::Simple(s) if s == b"OK" => {
                if matches!(self.sent.front(), Some(Sent::Auth)) {
                    self.sent.pop_front();
                }
            }
            Resp::Array(items) => self.on_array(items, events),
            _ => {}
        }
    }

    fn on_array(&mut self, mut items: Vec<Resp>, events: &mut Vec<Event>) {
        let kind = items
            .first()
            .and_then(Resp::bytes)
            .map(<[u8]>::to_ascii_lowercase);
        let Some(kind) = kind else { return };
        let take = |items: &mut Vec<Resp>, i: usize| match items.get_mut(i) {
            Some(Resp::Bulk(b)) => std::mem::take(b),
            _ => Vec::new(),
        };
        match kind.as_slice() {
            b"smessage" | b"message" => {
                let body = take(&mut items, 2);
                let channel = take(&mut items, 1);
                events.push(Event::Message { channel, body });
            }
            b"pmessage" => {
                let body = take(&mut items, 3);
                let channel = take(&mut items, 2);
                events.push(Event::Message { channel, body });
            }
            b"ssubscribe" => {
                let channel = take(&mut items, 1);
                if let Some(Sent::Subscribe(waiting)) = self.sent.front_mut() {
                    waiting.retain(|c| *c != channel);
                    if waiting.is_empty() {
                        self.sent.pop_front();
                    }
                }
                events.push(Event::Subscribed(channel));
            }
            b"psubscribe" => {
                if matches!(self.sent.front(), Some(Sent::Pattern)) {
                    self.sent.pop_front();
                }
                events.push(Event::PatternSubscribed);
            }
            b"sunsubscribe" => {
                let channel = take(&mut items, 1);
                let mut pushed = true;
                if let Some(Sent::Unsubscribe(waiting)) = self.sent.front_mut() {
                    if let Some(i) = waiting.iter().position(|c| *c == channel) {
                        waiting.remove(i);
                        pushed = false;
                        if waiting.is_empty() {
                            self.sent.pop_front();
                        }
                    }
                }
                events.push(Event::Unsubscribed { channel, pushed });
            }
            _ => {}
        }
    }

    /// Drop the connection.
    pub fn close(&mut self) {
        self.sock = None;
        self.state = State::Down;
        self.since = Instant::now();
        self.rbuf.clear();
        self.wbuf.clear();
        self.sent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            addr: "x:1".into(),
            sock: None,
            state: State::Up,
            since: Instant::now(),
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            sent: VecDeque::new(),
        }
    }

    fn feed(n: &mut Node, bytes: &[u8]) -> Vec<Event> {
        n.rbuf.extend_from_slice(bytes);
        let mut ev = Vec::new();
        let _ = n.on_readable(&mut ev);
        ev
    }

    #[test]
    fn replies_are_matched_to_commands_and_pushes_told_apart() {
        let mut n = node();
        n.subscribe(vec![b"xcord:{a}".to_vec(), b"xcord:{b}".to_vec()]);
        n.subscribe(vec![b"xcord:{c}".to_vec()]);
        let ev = feed(
            &mut n,
            b"*3\r\n$10\r\nssubscribe\r\n$9\r\nxcord:{a}\r\n:1\r\n*3\r\n$10\r\nssubscribe\r\n$9\r\nxcord:{b}\r\n:2\r\n-MOVED 7 h:2\r\n",
        );
        assert_eq!(ev[0], Event::Subscribed(b"xcord:{a}".to_vec()));
        assert_eq!(ev[1], Event::Subscribed(b"xcord:{b}".to_vec()));
        assert_eq!(
            ev[2],
            Event::Refused {
                channels: vec![b"xcord:{c}".to_vec()],
                error: "MOVED 7 h:2".into()
            }
        );
        // A slot migrated away: Redis unsubscribes us on its own.
        let ev = feed(
            &mut n,
            b"*3\r\n$12\r\nsunsubscribe\r\n$9\r\nxcord:{a}\r\n:1\r\n",
        );
        assert_eq!(
            ev,
            vec![Event::Unsubscribed {
                channel: b"xcord:{a}".to_vec(),
                pushed: true
            }]
        );
        n.unsubscribe(vec![b"xcord:{b}".to_vec()]);
        let ev = feed(
            &mut n,
            b"*3\r\n$12\r\nsunsubscribe\r\n$9\r\nxcord:{b}\r\n:0\r\n",
        );
        assert_eq!(
            ev,
            vec![Event::Unsubscribed {
                channel: b"xcord:{b}".to_vec(),
                pushed: false
            }]
        );
        let ev = feed(
            &mut n,
            b"*3\r\n$8\r\nsmessage\r\n$9\r\nxcord:{b}\r\n$2\r\n{}\r\n",
        );
        assert_eq!(
            ev,
            vec![Event::Message {
                channel: b"xcord:{b}".to_vec(),
                body: b"{}".to_vec()
            }]
        );
    }
}
