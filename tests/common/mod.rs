//! Test harness: a real `redis-server` on a free loopback port, the real
//! `xcord-gateway` binary, and real WebSocket clients (tungstenite, blocking, with
//! read timeouts so that no test can hang). Every process a test starts is killed
//! by PID when its handle drops.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};
use xcord_common::claims::{sign_hs256, Claims};

pub const SECRET: &str = "test-secret";
pub const ADMIN: &str = "admin-token";

/// A free loopback port for a server a test starts (Redis): below the ephemeral
/// range (so no client socket of the OS takes it while the test stops and restarts
/// its server) and below 22000 (a Redis Cluster node's bus port is port + 10000).
/// No two calls in one test process return the same port.
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = 12_000 + fastrand::u16(..10_000);
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

/// The test process's open-file limit, raised to the hard limit once (tests open
/// thousands of sockets; the soft default may be 1,024).
pub fn raise_nofile() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    });
}

pub struct Redis {
    child: Child,
    pub port: u16,
    /// With persistence: where `dump.rdb` lives (a restart loads it).
    dir: Option<std::path::PathBuf>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        Self::spawn(port, None)
    }

    /// A Redis whose `SAVE` writes a snapshot that [`Redis::restart`] loads.
    pub fn start_persistent() -> Redis {
        let dir = std::env::temp_dir().join(format!(
            "xcord-redis-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self::spawn(free_port(), Some(dir))
    }

    fn spawn(port: u16, dir: Option<std::path::PathBuf>) -> Redis {
        let mut args: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match &dir {
            Some(d) => args.extend([
                "--dir".into(),
                d.display().to_string(),
                "--save".into(),
                "".into(),
                "--appendonly".into(),
                "no".into(),
            ]),
            None => args.extend(["--save", "", "--appendonly", "no"].map(String::from)),
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let mut r = Redis { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // Our own child must be the one answering (not another test's server).
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("redis-server on port {port} exited at start ({status}): port taken?");
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `sig` to our server, only while it is our live child (never to a pid
    /// that may have been reused).
    fn signal(&mut self, sig: i32) {
        if let Ok(None) = self.child.try_wait() {
            unsafe {
                libc::kill(self.child.id() as i32, sig);
            }
        }
    }

    /// Stop answering (SIGSTOP) without closing anything: an unreachable Redis.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Answer again after [`Redis::pause`].
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    /// Write a snapshot now (persistent Redis only).
    pub fn save(&self) {
        let mut c = self.conn().unwrap();
        let _: String = redis::cmd("SAVE").query(&mut c).unwrap();
    }

    /// Kill -9 and start again on the same port; a persistent Redis loads its last
    /// snapshot, another comes back empty.
    pub fn restart(&mut self) {
        self.stop();
        let mut fresh = Self::spawn(self.port, self.dir.take());
        // `fresh` now holds the old, already reaped child: dropping it signals nothing.
        std::mem::swap(self, &mut fresh);
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

    pub fn publish(&self, channel: &str, event: &str, payload: Value) {
        self.publish_raw(
            channel,
            &json!({"type": event, "payload": payload}).to_string(),
        );
    }

    pub fn stop(&mut self) {
        self.resume(); // never leave a paused server behind
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Gateway {
    /// Start with the test defaults (loopback, port 0, HS256 SECRET, admin token),
    /// plus `extra` flags.
    pub fn start(extra: &[&str]) -> Gateway {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--jwt-secret".into(),
            SECRET.into(),
            "--admin-token".into(),
            ADMIN.into(),
        ];
        if !extra.contains(&"--shards") {
            args.extend(["--shards".into(), "2".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_raw(&args).expect("gateway did not start")
    }

    pub fn start_raw(args: &[String]) -> Result<Gateway, String> {
        Self::start_env(args, &[])
    }

    /// Start with these arguments and extra environment variables.
    pub fn start_env(args: &[String], env: &[(&str, &str)]) -> Result<Gateway, String> {
        raise_nofile();
        let mut child = Command::new(env!("CARGO_BIN_EXE_xcord-gateway"))
            .args(args)
            .envs(env.iter().copied())
            .env("XCORD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = log.clone();
        std::thread::spawn(move || {
            let mut admin = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push_str(&line);
                l2.lock().unwrap().push('\n');
                if let Some(i) = line.find("admin listening on ") {
                    admin = line[i + 19..]
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                } else if let Some(i) = line.find("listening on ") {
                    let a = line[i + 13..]
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    if let (Some(a), Some(ad)) = (a, admin) {
                        let _ = tx.send((a, ad));
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((addr, admin)) => Ok(Gateway {
                child,
                addr,
                admin,
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(log.lock().unwrap().clone())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/v1/ws", self.addr)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Send a signal to the gateway (by its PID).
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit up to `timeout`; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, &[], "")
    }

    /// POST /api/v1/publish with the admin token.
    pub fn publish(&self, channel: &str, event: &str, payload: Value) -> u16 {
        let body = json!({"channel": channel, "event": event, "payload": payload}).to_string();
        http(
            self.admin,
            "POST",
            "/api/v1/publish",
            &[("Authorization", &format!("Bearer {ADMIN}"))],
            &body,
        )
        .0
    }

    /// A metric's value summed over all label sets matching `name{labels…`.
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 request: (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).to_string();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn token_with(sub: &str, servers: &[&str], dms: &[&str], ttl_secs: i64) -> String {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut claims = Claims::new(sub, &strings(servers), &strings(dms), 0);
    claims.exp = claims.exp.saturating_add_signed(ttl_secs);
    sign_hs256(SECRET.as_bytes(), &claims).unwrap()
}

pub fn token(sub: &str, servers: &[&str], dms: &[&str]) -> String {
    token_with(sub, servers, dms, 3600)
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// Skip presence events (`user.presence`, `server.member.presence`) that every
    /// session causes, so tests of other features read only what they look for.
    pub skip_presence: bool,
}

fn is_presence(v: &Value) -> bool {
    v["type"] == "EVENT"
        && matches!(
            v["payload"]["event"].as_str(),
            Some("user.presence" | "server.member.presence")
        )
}

/// What a read returned.
#[derive(Debug)]
pub enum Got {
    Msg(Value),
    Closed(Option<u16>),
    Timeout,
}

impl Client {
    pub fn connect(gw: &Gateway) -> Client {
        Self::try_connect(gw.addr, &[]).expect("upgrade")
    }

    /// Upgrade with extra headers; Err(status) when refused.
    pub fn try_connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Client, u16> {
        raise_nofile();
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{addr}/api/v1/ws"
        ))
        .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match tungstenite::client(req, stream) {
            Ok((ws, _)) => Ok(Client {
                ws,
                skip_presence: true,
            }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                Err(r.status().as_u16())
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    /// Connect and complete HELLO; returns the client and HELLO_ACK's payload.
    pub fn hello(gw: &Gateway, token: &str) -> (Client, Value) {
        let mut c = Self::connect(gw);
        c.send(json!({"type": "HELLO", "payload": {"token": token}}));
        let ack = c.expect("HELLO_ACK");
        (c, ack)
    }

    pub fn set_timeout(&mut self, d: Duration) {
        self.ws.get_ref().set_read_timeout(Some(d)).unwrap();
    }

    pub fn send(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    pub fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).unwrap();
    }

    pub fn next(&mut self) -> Got {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("server sent JSON");
                    if self.skip_presence && is_presence(&v) {
                        continue;
                    }
                    return Got::Msg(v);
                }
                Ok(Message::Close(f)) => {
                    // Complete the closing handshake, as a well-behaved client does.
                    let _ = self.ws.flush();
                    return Got::Closed(f.map(|f| u16::from(f.code)));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Got::Timeout
                }
                Err(_) => return Got::Closed(None),
            }
        }
    }

    /// The next message, which must be of type `ty`; returns its payload.
    pub fn expect(&mut self, ty: &str) -> Value {
        match self.next() {
            Got::Msg(v) => {
                assert_eq!(v["type"], ty, "expected {ty}, got {v}");
                v["payload"].clone()
            }
            other => panic!("expected {ty}, got {other:?}"),
        }
    }

    /// The next message must be an EVENT; returns the whole frame.
    pub fn expect_event(&mut self) -> Value {
        match self.next() {
            Got::Msg(v) => {
                assert_eq!(v["type"], "EVENT", "expected EVENT, got {v}");
                v
            }
            other => panic!("expected EVENT, got {other:?}"),
        }
    }

    /// Read until a close frame; returns its code (messages before it are skipped).
    pub fn expect_close(&mut self) -> Option<u16> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match self.next() {
                Got::Closed(c) => return c,
                Got::Msg(_) => continue,
                Got::Timeout => continue,
            }
        }
        panic!("no close within 15 s");
    }

    /// Nothing arrives within `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        self.set_timeout(d);
        match self.next() {
            Got::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.set_timeout(Duration::from_secs(10));
    }

    pub fn subscribe(&mut self, channels: &[&str]) -> Value {
        self.send(json!({"type": "SUBSCRIBE", "payload": {"channels": channels}}));
        self.expect("SUBSCRIBED")
    }

    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.ws.flush();
    }
}

/// Poll `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// ---- Helpers for tests that must fail with the feature broken (issue 12) ----

/// Whether `line` of a Prometheus exposition is a sample (not `# HELP`/`# TYPE`)
/// of what `prefix` names: the line starts with `prefix`, and the metric name in
/// `prefix` is the whole name on the line (`xcord_redis_up` matches
/// `xcord_redis_up 1`, never `xcord_redis_up_total 1`).
pub fn is_sample_of(line: &str, prefix: &str) -> bool {
    if line.starts_with('#') || !line.starts_with(prefix) {
        return false;
    }
    let name_len = prefix.find(['{', ' ']).unwrap_or(prefix.len());
    matches!(line.as_bytes().get(name_len), Some(b'{' | b' '))
}

/// Whether the exposition `body` has at least one sample line of `prefix`.
pub fn has_sample(body: &str, prefix: &str) -> bool {
    body.lines().any(|l| is_sample_of(l, prefix))
}

impl Gateway {
    /// Like [`Gateway::metric`] (summed over the sample lines matching `prefix`),
    /// but panics when no sample line matches: a renamed or missing metric fails
    /// the test instead of reading as 0.
    pub fn metric_exact(&self, prefix: &str) -> f64 {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "/metrics answered {status}");
        let values: Vec<f64> = body
            .lines()
            .filter(|l| is_sample_of(l, prefix))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("unparsable sample line {l:?}"))
            })
            .collect();
        assert!(
            !values.is_empty(),
            "no sample line for `{prefix}` in /metrics:\n{body}"
        );
        values.iter().sum()
    }
}

impl Client {
    /// Read until a close frame arrives within `d` (messages before it are
    /// skipped) and return its code; panics when none arrives by then.
    pub fn expect_close_within(&mut self, d: Duration) -> Option<u16> {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no close within {d:?}");
            }
            self.set_timeout(left.max(Duration::from_millis(1)));
            match self.next() {
                Got::Closed(c) => {
                    let _ = self
                        .ws
                        .get_ref()
                        .set_read_timeout(Some(Duration::from_secs(10)));
                    return c;
                }
                Got::Msg(_) | Got::Timeout => continue,
            }
        }
    }
}
