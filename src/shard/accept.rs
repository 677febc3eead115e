//! Accepting clients: the shard's listener, the HTTP/1.1 upgrade, and the checks
//! that happen before it (SPEC §2, §3): path (404), Authorization header (401),
//! node at `--max-connections` or draining (503).
//!
//! The request head is read with a deadline and a size cap, so a slow or silent
//! client (slowloris) holds one small task, not the shard. The upgrade itself is
//! RFC 6455 §4.2 with tungstenite's accept-key derivation.

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tracing::warn;

use super::conn::{self, Conn};
use super::Shard;
use crate::auth::Claims;

const MAX_HEAD: usize = 8 * 1024;

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let mut last_warn: Option<Instant> = None;
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.draining.wait().await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Ok(stream)) => {
                glommio::spawn_local(handle(shard.clone(), stream)).detach();
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off a little instead of spinning.
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    warn!(shard = shard.id, "accept failed: {e}");
                    last_warn = Some(Instant::now());
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn read_into(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, buf)).await
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
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = glommio::timer::timeout(Duration::from_secs(2), async {
        Ok(write_all(stream, resp.as_bytes()).await)
    })
    .await;
}

/// Read the request head; returns (head length, all bytes read).
async fn read_head(stream: &mut TcpStream) -> io::Result<(usize, Vec<u8>)> {
    let mut buf = vec![0u8; 2048];
    let mut len = 0;
    loop {
        if len == buf.len() {
            if buf.len() >= MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request head too large",
                ));
            }
            buf.resize((buf.len() * 2).min(MAX_HEAD), 0);
        }
        let n = read_into(stream, &mut buf[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let from = len.saturating_sub(3);
        len += n;
        if let Some(p) = buf[from..len].windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(len);
            return Ok((from + p + 4, buf));
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

enum Decision {
    Upgrade {
        accept_key: String,
        claims: Option<Claims>,
    },
    Refuse(&'static str, &'static str),
}

fn decide(shard: &Shard, head: &[u8]) -> Decision {
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
    let claims = match header(&req, "authorization") {
        None => None,
        Some(v) => {
            let token = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(str::trim);
            match token.map(|t| shard.shared.verifier.verify(t)) {
                Some(Ok(c)) => Some(c),
                _ => return Decision::Refuse("401 Unauthorized", "invalid token\n"),
            }
        }
    };
    Decision::Upgrade {
        accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        claims,
    }
}

async fn handle(shard: Rc<Shard>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let ip = match stream.peer_addr() {
        Ok(a) => a.ip(),
        Err(_) => return,
    };
    let cfg = &shard.shared.cfg;
    let deadline = cfg.hello_timeout().min(Duration::from_secs(10));
    let head = glommio::timer::timeout(deadline, async { Ok(read_head(&mut stream).await) }).await;
    let (head_len, bytes) = match head {
        Ok(Ok(h)) => h,
        _ => return, // timed out, closed, or oversized: just drop the socket
    };
    let decision = decide(&shard, &bytes[..head_len]);
    let (accept_key, claims) = match decision {
        Decision::Refuse(status, body) => {
            shard.metrics().rejected_http.fetch_add(1, Relaxed);
            respond(&mut stream, status, body).await;
            return;
        }
        Decision::Upgrade { accept_key, claims } => (accept_key, claims),
    };
    let shared = &shard.shared;
    if shard.draining.fired() || shared.connections.fetch_add(1, Relaxed) >= cfg.max_connections {
        if !shard.draining.fired() {
            shared.connections.fetch_sub(1, Relaxed);
        }
        shard.metrics().rejected_http.fetch_add(1, Relaxed);
        respond(
            &mut stream,
            "503 Service Unavailable",
            "at capacity or draining\n",
        )
        .await;
        return;
    }
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n\r\n"
    );
    if write_all(&mut stream, resp.as_bytes()).await.is_err() {
        shared.connections.fetch_sub(1, Relaxed);
        return;
    }
    let id = shard.next_conn_id.get();
    shard.next_conn_id.set(id + 1);
    let conn = Rc::new(Conn::new(id, ip, claims));
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
    conn::serve(shard, stream, conn, leftover).await;
}
