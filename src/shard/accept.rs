//! Accepting clients: the shard's listener, the PROXY protocol, the HTTP/1.1
//! upgrade, and the checks that happen before it (SPEC §2, §3, §8): path (404),
//! Authorization header (401), per-IP limit (429), node at `--max-connections` or
//! draining (503).
//!
//! Slow or silent clients (slowloris, half-open floods) cannot exhaust a shard: the
//! request head is read with a deadline (`--hello-timeout-ms`, at most 10 s) and a
//! size cap, each handshake is one small task, and past `MAX_HANDSHAKES` pending
//! handshakes per shard the oldest is dropped to make room — so a new, fast client
//! always gets through. The upgrade itself is RFC 6455 §4.2 with tungstenite's
//! accept-key derivation.
//!
//! Client address: the peer, unless the peer is in `--trusted-proxies`; then a
//! PROXY v1/v2 header (if it sent one) and then `X-Forwarded-For` (right-most entry
//! that is not itself trusted) decide. A PROXY header from an untrusted peer closes
//! the connection.

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use tracing::warn;

use super::conn::Conn;
use super::{reader, Shard};
use crate::admission::Refusal;
use crate::auth::Claims;
use crate::config::Cidr;
use crate::limits::{
    ACCEPT_BACKOFF, HEAD_TIMEOUT_MAX, MAX_HANDSHAKES, MAX_HEAD, RESPOND_TIMEOUT, SHED_AGE,
};
use crate::protocol::deflate;
use crate::throttle::Throttle;

const PROXY_V1: &[u8] = b"PROXY ";
const PROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A pending handshake; the shard may shed it.
pub struct HandshakeSlot {
    shed: Cell<bool>,
    waker: Cell<Option<Waker>>,
    since: Instant,
    /// Waiting on the client (its bytes have not come), not on this shard: only
    /// such a handshake is a slowloris suspect. A burst the shard has not got to
    /// yet is never shed.
    waiting_on_client: Cell<bool>,
}

/// Pending handshakes of one shard, oldest first.
#[derive(Default)]
pub struct Handshakes {
    slots: std::cell::RefCell<VecDeque<Weak<HandshakeSlot>>>,
}

impl Handshakes {
    fn admit(&self, metrics: &crate::metrics::ShardMetrics) -> Rc<HandshakeSlot> {
        let now = Instant::now();
        let slot = Rc::new(HandshakeSlot {
            shed: Cell::new(false),
            waker: Cell::new(None),
            since: now,
            waiting_on_client: Cell::new(false),
        });
        let mut q = self.slots.borrow_mut();
        while q.front().is_some_and(|w| w.strong_count() == 0) {
            q.pop_front();
        }
        if q.len() >= MAX_HANDSHAKES {
            q.retain(|w| w.strong_count() > 0);
        }
        if q.len() >= MAX_HANDSHAKES {
            // Shed the oldest handshakes that have waited on their client for at
            // least SHED_AGE (a look at the first 64 is enough: the queue is in
            // arrival order); past 4x the cap, the oldest whatever they wait for.
            let mut shed = 0;
            let need = q.len() + 1 - MAX_HANDSHAKES;
            let hard = q.len() >= 4 * MAX_HANDSHAKES;
            for w in q.iter().take(64) {
                if shed >= need {
                    break;
                }
                let Some(old) = w.upgrade() else { continue };
                let stale =
                    old.waiting_on_client.get() && now.duration_since(old.since) >= SHED_AGE;
                if (stale || hard) && !old.shed.get() {
                    old.shed.set(true);
                    metrics.handshakes_shed.fetch_add(1, Relaxed);
                    if let Some(w) = old.waker.take() {
                        w.wake();
                    }
                    shed += 1;
                }
            }
            q.retain(|w| w.upgrade().is_some_and(|s| !s.shed.get()));
        }
        q.push_back(Rc::downgrade(&slot));
        slot
    }
}

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let warn_log = Throttle::new(Duration::from_secs(5));
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.draining.wait().await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Ok(stream)) => {
                let slot = shard.handshakes.admit(shard.metrics());
                glommio::spawn_local(handle(shard.clone(), stream, slot)).detach();
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off a little instead of spinning.
                if warn_log.ready() {
                    warn!(shard = shard.id, "accept failed: {e}");
                }
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn read_into(
    stream: &mut TcpStream,
    buf: &mut [u8],
    slot: &HandshakeSlot,
) -> io::Result<usize> {
    poll_fn(|cx| {
        if slot.shed.get() {
            return Poll::Ready(Err(io::Error::other("shed")));
        }
        match Pin::new(&mut *stream).poll_read(cx, buf) {
            Poll::Pending => {
                slot.waiting_on_client.set(true);
                slot.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
            r => {
                slot.waiting_on_client.set(false);
                r
            }
        }
    })
    .await
}

async fn write_all(stream: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    // RFC 6455 §4.4: a refused version names the one this server speaks.
    let version = if status.starts_with("426") {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\n{version}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = glommio::timer::timeout(RESPOND_TIMEOUT, async {
        Ok(write_all(stream, resp.as_bytes()).await)
    })
    .await;
}

fn trusted(proxies: &[Cidr], ip: IpAddr) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// What the connection's first bytes said.
struct Head {
    /// Bytes read, PROXY header removed.
    bytes: Vec<u8>,
    /// Length of the HTTP request head within `bytes`.
    head_len: usize,
    /// Source address from a PROXY header.
    proxied: Option<IpAddr>,
}

/// Parse a complete PROXY header at the start of `buf`: (its length, source address).
/// `Ok(None)`: more bytes needed.
fn parse_proxy(buf: &[u8]) -> Result<Option<(usize, Option<IpAddr>)>, ()> {
    use ppp::PartialResult;
    let r = ppp::HeaderResult::parse(buf);
    if r.is_incomplete() {
        return Ok(None);
    }
    match r {
        ppp::HeaderResult::V1(Ok(h)) => {
            let ip = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
                ppp::v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Some((h.header.len(), ip)))
        }
        ppp::HeaderResult::V2(Ok(h)) => {
            let ip = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => Some(IpAddr::V4(a.source_address)),
                ppp::v2::Addresses::IPv6(a) => Some(IpAddr::V6(a.source_address)),
                _ => None,
            };
            Ok(Some((h.len(), ip)))
        }
        _ => Err(()),
    }
}

/// Read an optional PROXY header (trusted peers only) and the request head.
async fn read_head(
    stream: &mut TcpStream,
    peer_trusted: bool,
    slot: &HandshakeSlot,
) -> io::Result<Head> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let mut buf = vec![0u8; 2048];
    let mut len = 0;
    let mut start = 0; // where the HTTP request begins
    let mut proxied = None;
    let mut proxy_done = false;
    loop {
        if len == buf.len() {
            if buf.len() >= MAX_HEAD + 256 {
                return Err(bad("request head too large"));
            }
            buf.resize((buf.len() * 2).min(MAX_HEAD + 256), 0);
        }
        let n = read_into(stream, &mut buf[len..], slot).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
        if !proxy_done {
            let seen = &buf[..len];
            let maybe_v1 = seen.len() < PROXY_V1.len() && PROXY_V1.starts_with(seen)
                || seen.starts_with(PROXY_V1);
            let maybe_v2 = seen.len() < PROXY_V2.len() && PROXY_V2.starts_with(seen)
                || seen.starts_with(PROXY_V2);
            if maybe_v1 || maybe_v2 {
                let complete_prefix = seen.starts_with(PROXY_V1) || seen.starts_with(PROXY_V2);
                if complete_prefix && !peer_trusted {
                    return Err(bad("PROXY header from an untrusted peer"));
                }
                if !complete_prefix {
                    continue; // could still be either
                }
                match parse_proxy(seen) {
                    Ok(None) => continue,
                    Ok(Some((hlen, ip))) => {
                        start = hlen;
                        proxied = ip;
                        proxy_done = true;
                    }
                    Err(()) => return Err(bad("malformed PROXY header")),
                }
            } else {
                proxy_done = true;
            }
        }
        if proxy_done {
            let from = start;
            if let Some(p) = buf[from..len].windows(4).position(|w| w == b"\r\n\r\n") {
                buf.truncate(len);
                let bytes = buf.split_off(start);
                return Ok(Head {
                    bytes,
                    head_len: p + 4,
                    proxied,
                });
            }
            if len - start > MAX_HEAD {
                return Err(bad("request head too large"));
            }
        }
    }
}

fn header<'a>(req: &'a httparse::Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The client address from `X-Forwarded-For` (SPEC §8): all its header lines, in
/// order, form one list; walking it from the right, the first entry that is not a
/// trusted proxy is the client. An entry that is not an address (`ip:port`,
/// garbage, empty) ends the walk: `None`, the peer is taken. When every entry is a
/// trusted proxy, the left-most one.
pub fn client_from_xff<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    proxies: &[Cidr],
) -> Option<IpAddr> {
    let entries: Vec<&str> = lines
        .into_iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .collect();
    let mut leftmost = None;
    for e in entries.iter().rev() {
        let ip: IpAddr = e.parse().ok()?;
        if !trusted(proxies, ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

enum Decision {
    Upgrade {
        accept_key: String,
        claims: Option<Claims>,
        ip: IpAddr,
        /// permessage-deflate offered and accepted.
        deflate: bool,
    },
    Refuse(&'static str, &'static str),
}

fn decide(shard: &Shard, head: &[u8], mut ip: IpAddr) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Decision::Refuse("400 Bad Request", "malformed request\n"),
    }
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    if path != "/api/v1/ws" {
        return Decision::Refuse("404 Not Found", "not found\n");
    }
    if req.method != Some("GET") {
        return Decision::Refuse("405 Method Not Allowed", "use GET\n");
    }
    if !has_token(header(&req, "upgrade"), "websocket")
        || !has_token(header(&req, "connection"), "upgrade")
    {
        return Decision::Refuse("426 Upgrade Required", "a WebSocket upgrade is required\n");
    }
    if header(&req, "sec-websocket-version") != Some("13") {
        return Decision::Refuse(
            "426 Upgrade Required",
            "Sec-WebSocket-Version: 13 is required\n",
        );
    }
    let Some(key) = header(&req, "sec-websocket-key") else {
        return Decision::Refuse("400 Bad Request", "missing Sec-WebSocket-Key\n");
    };
    let proxies = &shard.ctx.cfg.trusted_proxies;
    if trusted(proxies, ip) {
        let lines = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .filter_map(|h| std::str::from_utf8(h.value).ok());
        if let Some(client) = client_from_xff(lines, proxies) {
            ip = client;
        }
    }
    let claims = match header(&req, "authorization") {
        None => None,
        Some(v) => {
            let token = crate::auth::bearer_token(v);
            match token.map(|t| shard.ctx.verifier.verify(t)) {
                Some(Ok(c)) => Some(c),
                _ => return Decision::Refuse("401 Unauthorized", "invalid token\n"),
            }
        }
    };
    let deflate = shard.ctx.cfg.compression
        && deflate::accept_offer(
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .filter_map(|h| std::str::from_utf8(h.value).ok()),
        );
    Decision::Upgrade {
        accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        claims,
        ip,
        deflate,
    }
}

async fn handle(shard: Rc<Shard>, mut stream: TcpStream, slot: Rc<HandshakeSlot>) {
    let _ = stream.set_nodelay(true);
    let peer = match stream.peer_addr() {
        Ok(a) => a.ip(),
        Err(_) => return,
    };
    let cfg = &shard.ctx.cfg;
    let peer_trusted = trusted(&cfg.trusted_proxies, peer);
    let deadline = cfg.hello_timeout.min(HEAD_TIMEOUT_MAX);
    let head = glommio::timer::timeout(deadline, async {
        Ok(read_head(&mut stream, peer_trusted, &slot).await)
    })
    .await;
    drop(slot); // no longer a pending handshake
    let Head {
        bytes,
        head_len,
        proxied,
    } = match head {
        Ok(Ok(h)) => h,
        _ => return, // timed out, shed, closed, oversized, or an untrusted PROXY header
    };
    let (accept_key, claims, ip, deflate) =
        match decide(&shard, &bytes[..head_len], proxied.unwrap_or(peer)) {
            Decision::Refuse(status, body) => {
                shard.metrics().rejected_http.fetch_add(1, Relaxed);
                respond(&mut stream, status, body).await;
                return;
            }
            Decision::Upgrade {
                accept_key,
                claims,
                ip,
                deflate,
            } => (accept_key, claims, ip, deflate),
        };
    let admission = &shard.ctx.admission;
    // The node's drain flag is set before any shard hears of the drain.
    if let Err(why) = admission.admit(ip) {
        shard.metrics().rejected_http.fetch_add(1, Relaxed);
        let (status, body) = match why {
            Refusal::PerIp => (
                "429 Too Many Requests",
                "too many connections from this address\n",
            ),
            Refusal::Full => ("503 Service Unavailable", "at capacity or draining\n"),
        };
        respond(&mut stream, status, body).await;
        return;
    }
    let extensions = if deflate {
        format!("Sec-WebSocket-Extensions: {}\r\n", deflate::RESPONSE)
    } else {
        String::new()
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n{extensions}\r\n"
    );
    if write_all(&mut stream, resp.as_bytes()).await.is_err() {
        admission.release(ip);
        return;
    }
    let id = shard.next_conn_id.get();
    shard.next_conn_id.set(id + 1);
    let conn = Conn::new(id, ip, claims, deflate);
    conn.attach(stream);
    {
        let mut conns = shard.conns.borrow_mut();
        let entry = conns.vacant_entry();
        conn.key.set(entry.key() as u32);
        entry.insert(conn.clone());
    }
    let m = shard.metrics();
    m.accepted.fetch_add(1, Relaxed);
    m.connections.fetch_add(1, Relaxed);
    let leftover = bytes[head_len..].to_vec();
    drop(bytes);
    // A task of its own: the handshake's state is freed now, not kept for the
    // connection's lifetime.
    glommio::spawn_local(reader::serve(shard, conn, leftover)).detach();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_cidr;

    #[test]
    fn xff_takes_the_rightmost_untrusted_entry() {
        let p = vec![parse_cidr("10.0.0.0/8").unwrap()];
        let one = |x: &str| client_from_xff([x], &p);
        assert_eq!(one("1.2.3.4, 10.0.0.5"), "1.2.3.4".parse().ok());
        assert_eq!(one("9.9.9.9, 1.2.3.4, 10.0.0.5"), "1.2.3.4".parse().ok());
        assert_eq!(one("10.0.0.1, 10.0.0.5"), "10.0.0.1".parse().ok());
        assert_eq!(one("junk"), None);
    }

    /// Issue 12 defect 7: behind a proxy that appends a second header line, or
    /// writes `ip:port`, a client could pick its own address.
    #[test]
    fn xff_lines_form_one_list_and_a_non_address_ends_the_walk() {
        let p = vec![parse_cidr("10.0.0.0/8").unwrap()];
        // The client forged the first line; the balancer appended the second.
        assert_eq!(
            client_from_xff(["6.6.6.6", "1.2.3.4, 10.0.0.5"], &p),
            "1.2.3.4".parse().ok()
        );
        assert_eq!(
            client_from_xff(["6.6.6.6", "1.2.3.4"], &p),
            "1.2.3.4".parse().ok(),
            "the last line's entry is the right-most"
        );
        // `ip:port` is not an address: the walk stops, the peer is taken (it used
        // to be skipped, so the forged entry to its left won).
        assert_eq!(client_from_xff(["6.6.6.6, 1.2.3.4:5555"], &p), None);
        assert_eq!(client_from_xff(["6.6.6.6, , 10.0.0.5"], &p), None);
        assert_eq!(
            client_from_xff(["2001:db8::1"], &p),
            "2001:db8::1".parse().ok()
        );
    }

    #[test]
    fn proxy_headers_parse() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n\r\n";
        let (len, ip) = parse_proxy(v1).unwrap().unwrap();
        assert_eq!(&v1[len..len + 3], b"GET");
        assert_eq!(ip, "192.0.2.7".parse().ok());
        assert_eq!(parse_proxy(b"PROXY TCP4 192.0.2.7 127.0"), Ok(None));
        assert!(parse_proxy(b"PROXY NOPE\r\n").is_err());
        let mut v2 = PROXY_V2.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x15, 0xb3, 0, 80,
        ]);
        let (len, ip) = parse_proxy(&v2).unwrap().unwrap();
        assert_eq!(len, 28);
        assert_eq!(ip, "198.51.100.9".parse().ok());
    }
}
