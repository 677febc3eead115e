//! Test harness: a real `redis-server` on a free loopback port below 32768, the
//! real `xcord-floor` binary, and WebSocket clients (tungstenite, blocking, with
//! read timeouts so no test can hang; and a raw one that sees frame bytes). Every
//! process a test starts is killed by its PID when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use xcord_common::claims::{sign_hs256, Claims};

pub const SECRET: &str = "floor-test-secret";
pub const ADMIN: &str = "floor-admin-token";

/// A free loopback port below the ephemeral range (32768+); no two calls in one
/// test process return the same one.
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = 12_000 + fastrand::u16(..20_000);
        let mut taken = TAKEN.lock().unwrap();
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
}

pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let mut r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = r.child.try_wait() {
                panic!("redis-server on port {port} exited at start ({st})");
            }
            if let Ok(mut c) = r.conn() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return r;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// PUBLISH events:{channel} with a raw body, as a backend does.
    pub fn publish_raw(&self, channel: &str, body: &str) {
        let mut c = self.conn().unwrap();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("events:{channel}"))
            .arg(body)
            .query(&mut c)
            .unwrap();
    }

    /// Many PUBLISHes in one pipeline, in order.
    pub fn publish_many(&self, events: &[(String, String)]) {
        let mut c = self.conn().unwrap();
        let mut pipe = redis::pipe();
        for (ch, body) in events {
            pipe.cmd("PUBLISH")
                .arg(format!("events:{ch}"))
                .arg(body)
                .ignore();
        }
        pipe.query::<()>(&mut c).unwrap();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill(); // by PID: our own child
        let _ = self.child.wait();
    }
}

pub struct Floor {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Floor {
    /// Start on port 0 with the test secret and admin token, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Floor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xcord-floor"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--jwt-secret", SECRET, "--admin-token", ADMIN])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xcord-floor");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut admin = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let after = |p: &str| {
                    line.find(p).and_then(|i| {
                        line[i + p.len()..]
                            .split_whitespace()
                            .next()?
                            .parse::<SocketAddr>()
                            .ok()
                    })
                };
                if let Some(a) = after("admin listening on ") {
                    admin = Some(a);
                } else if let (Some(a), Some(ad)) = (after("listening on "), admin) {
                    let _ = tx.send((a, ad));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((addr, admin)) => Floor { child, addr, admin },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("xcord-floor did not say where it listens");
            }
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/api/v1/ws", self.addr)
    }

    /// POST /api/v1/publish with `bearer`: (status, body).
    pub fn publish_as(&self, bearer: &str, body: &str) -> (u16, String) {
        http(
            self.admin,
            &format!(
                "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    /// POST /api/v1/publish with the admin token; the status.
    pub fn publish(&self, channel: &str, event: &str, payload: &str) -> u16 {
        let body = format!(r#"{{"channel":"{channel}","event":"{event}","payload":{payload}}}"#);
        self.publish_as(ADMIN, &body).0
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill(); // by PID: our own child
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
pub fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

pub fn token(sub: &str) -> String {
    sign_hs256(SECRET.as_bytes(), &Claims::new(sub, &[], &[], 3600)).unwrap()
}

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Upgrade only.
pub fn connect(url: &str) -> Ws {
    let (ws, _) = tungstenite::connect(url).expect("upgrade");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws
}

pub fn send(ws: &mut Ws, ty: &str, payload: serde_json::Value) {
    let m = serde_json::json!({"type": ty, "payload": payload}).to_string();
    ws.send(Message::text(m)).unwrap();
}

/// The next text frame as JSON.
pub fn next_json(ws: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&next_text(ws)).unwrap()
}

/// The next text frame.
pub fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Read until the floor closes; its close code.
pub fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Upgrade, HELLO as `sub`, SUBSCRIBE `channels`: the connection, ready.
pub fn session(url: &str, sub: &str, channels: &[&str]) -> Ws {
    let mut ws = connect(url);
    send(&mut ws, "HELLO", serde_json::json!({"token": token(sub)}));
    let ack = next_json(&mut ws);
    assert_eq!(ack["type"], "HELLO_ACK", "{ack}");
    send(
        &mut ws,
        "SUBSCRIBE",
        serde_json::json!({"channels": channels}),
    );
    let sub = next_json(&mut ws);
    assert_eq!(sub["type"], "SUBSCRIBED", "{sub}");
    assert_eq!(sub["payload"]["channels"], serde_json::json!(channels));
    ws
}

/// A client that sees the floor's frames as bytes.
pub struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Upgrade by hand; the 101 must come.
    pub fn connect(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill();
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        raw.buf.drain(..end);
        raw
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Send a masked text frame.
    pub fn send_text(&mut self, text: &str) {
        let mask = [0x11u8, 0x22, 0x33, 0x44];
        let mut f = vec![0x81];
        match text.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.s.write_all(&f).unwrap();
    }

    /// The bytes of the next whole frame.
    pub fn frame(&mut self) -> Vec<u8> {
        loop {
            if self.buf.len() >= 2 {
                let (h, len) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    ),
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (10, u64::from_be_bytes(b) as usize)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (2, usize::from(n)),
                };
                if h != usize::MAX && self.buf.len() >= h + len {
                    return self.buf.drain(..h + len).collect();
                }
            }
            self.fill();
        }
    }
}

/// A final unmasked text frame carrying `text`, as a server writes it.
pub fn text_frame(text: &str) -> Vec<u8> {
    let mut f = vec![0x81];
    match text.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(text.as_bytes());
    f
}
