//! One simulated client: connect from a spread source address, upgrade, HELLO,
//! SUBSCRIBE (waiting for every `SUBSCRIBED`), then read events and account for each
//! one (first receipt, duplicate, out of order, unexpected), PING at the heartbeat
//! interval, send TYPING_START now and then (chat), and close or reconnect when the
//! coordinator says so. Per connection it keeps only a small read buffer and one
//! bitmap per covered channel.

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::plan::Plan;
use crate::stats::{record_latency, Counters};
use crate::token::TokenMaker;

type Ws = WebSocketStream<TcpStream>;

/// A monotonic clock that also speaks Unix nanoseconds (events carry their intended
/// send time as Unix nanoseconds; both ends are this process, so no skew).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: std::time::Instant,
    base_unix_ns: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let base_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Clock {
            base: std::time::Instant::now(),
            base_unix_ns,
        }
    }
    pub fn unix_ns(&self, t: std::time::Instant) -> u64 {
        self.base_unix_ns + t.saturating_duration_since(self.base).as_nanos() as u64
    }
    pub fn now_unix_ns(&self) -> u64 {
        self.unix_ns(std::time::Instant::now())
    }
    /// Nanoseconds since the base instant.
    pub fn since_base_ns(&self, unix_ns: u64) -> u64 {
        unix_ns.saturating_sub(self.base_unix_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What the coordinator wants of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Ctrl {
    /// Connect round: bumping it makes every connection close and reconnect.
    pub round: u32,
    pub stop: bool,
    pub round_start: Instant,
}

/// The outcome of one connection attempt.
#[derive(Debug)]
pub struct ConnectReport {
    pub id: usize,
    pub round: u32,
    /// Attempts made (1 + retries).
    pub attempts: u32,
    pub result: Result<Connected, String>,
}

#[derive(Debug)]
pub struct Connected {
    /// TCP connect + upgrade + HELLO → HELLO_ACK.
    pub handshake: Duration,
    /// SUBSCRIBE → last SUBSCRIBED.
    pub subscribe: Duration,
    pub at: Instant,
}

/// What every connection task shares.
pub struct Env {
    pub target: SocketAddr,
    pub url: String,
    pub ws_config: WebSocketConfig,
    pub source_addrs: usize,
    pub connect_timeout: Duration,
    pub connect_retries: u32,
    pub connect_backoff: Duration,
    pub connect_rate: f64,
    pub slots: AtomicU64,
    pub sem: Semaphore,
    pub ping: bool,
    pub ping_interval: Option<Duration>,
    /// Mean time between TYPING_START of one connection.
    pub typing_mean: Option<Duration>,
    /// Typing is sent only while this is set (the measured phase), so that the
    /// connect-time settling is not kept busy by it.
    pub typing_on: std::sync::atomic::AtomicBool,
    pub tokens: TokenMaker,
    pub plan: Arc<Plan>,
    pub counters: Arc<Counters>,
    pub clock: Clock,
    pub run_id: u64,
    pub reports: mpsc::UnboundedSender<ConnectReport>,
}

/// Largest SUBSCRIBE frame we send (the gateway's default --max-message-size is 4096).
const MAX_SUBSCRIBE_BYTES: usize = 3000;

/// The fields of a load-test event's `lt` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lt {
    pub run: u64,
    pub seq: u64,
    pub ch: u32,
    pub k: u64,
    pub step: u32,
    pub t: u64,
}

fn take_u64(b: &[u8], pos: &mut usize) -> Option<u64> {
    let start = *pos;
    let mut v: u64 = 0;
    while let Some(d) = b.get(*pos).filter(|c| c.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        *pos += 1;
    }
    (*pos > start).then_some(v)
}

fn expect_lit(b: &[u8], pos: &mut usize, lit: &[u8]) -> Option<()> {
    if b.get(*pos..*pos + lit.len())? == lit {
        *pos += lit.len();
        Some(())
    } else {
        None
    }
}

/// Find and read `"lt":{"run":R,"seq":S,"ch":C,"k":K,"s":ST,"t":T}` — the exact bytes
/// we published, which the gateway forwards untouched. Falls back to a JSON parse.
pub fn parse_lt(text: &str) -> Option<Lt> {
    let b = text.as_bytes();
    let at = memchr::memmem::find(b, b"\"lt\"")?;
    let fast = (|| {
        let mut p = at + 4;
        expect_lit(b, &mut p, b":{\"run\":")?;
        let run = take_u64(b, &mut p)?;
        expect_lit(b, &mut p, b",\"seq\":")?;
        let seq = take_u64(b, &mut p)?;
        expect_lit(b, &mut p, b",\"ch\":")?;
        let ch = take_u64(b, &mut p)?;
        expect_lit(b, &mut p, b",\"k\":")?;
        let k = take_u64(b, &mut p)?;
        expect_lit(b, &mut p, b",\"s\":")?;
        let step = take_u64(b, &mut p)?;
        expect_lit(b, &mut p, b",\"t\":")?;
        let t = take_u64(b, &mut p)?;
        Some(Lt {
            run,
            seq,
            ch: u32::try_from(ch).ok()?,
            k,
            step: u32::try_from(step).ok()?,
            t,
        })
    })();
    fast.or_else(|| {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let lt = v.get("payload")?.get("payload")?.get("lt")?;
        let g = |k: &str| lt.get(k).and_then(|x| x.as_u64());
        Some(Lt {
            run: g("run")?,
            seq: g("seq")?,
            ch: u32::try_from(g("ch")?).ok()?,
            k: g("k")?,
            step: u32::try_from(g("s")?).ok()?,
            t: g("t")?,
        })
    })
}

/// The `channel` of an EVENT frame (channel names never need escaping).
fn event_channel(b: &[u8]) -> Option<&[u8]> {
    let at = memchr::memmem::find(b, b"\"channel\":\"")? + 11;
    let len = memchr::memchr(b'"', b.get(at..)?)?;
    b.get(at..at + len)
}

/// The top-level `seq` of a frame that starts `{"type":"EVENT","seq":`.
fn top_seq(b: &[u8]) -> Option<u64> {
    const P: &[u8] = b"{\"type\":\"EVENT\",\"seq\":";
    if b.starts_with(P) {
        let mut p = P.len();
        take_u64(b, &mut p)
    } else {
        None
    }
}

struct Track {
    ch: u32,
    max_k: Option<u64>,
    bits: Vec<u64>,
}

/// Per-connection accounting: one bitmap of received `k` per covered channel.
pub struct Tracker {
    tracks: Vec<Track>,
    last_seq: Option<u64>,
}

/// Largest per-channel `k` we accept as plausible.
const MAX_K: u64 = 1 << 32;

impl Tracker {
    pub fn new(tracked: &[u32]) -> Tracker {
        Tracker {
            tracks: tracked
                .iter()
                .map(|&ch| Track {
                    ch,
                    max_k: None,
                    bits: Vec::new(),
                })
                .collect(),
            last_seq: None,
        }
    }

    /// A new connection: the gateway's `seq` is per node, but start the check afresh.
    pub fn reset_seq(&mut self) {
        self.last_seq = None;
    }

    /// Account for one text frame.
    pub fn on_text(&mut self, text: &str, env: &Env) {
        let c = &env.counters;
        let b = text.as_bytes();
        if let Some(seq) = top_seq(b) {
            if self.last_seq.is_some_and(|last| seq <= last) {
                c.seq_regressions.fetch_add(1, Relaxed);
            }
            self.last_seq = Some(seq);
        }
        let Some(ev) = parse_lt(text) else {
            if memchr::memmem::find(b, b"\"type\":\"EVENT\"").is_some() {
                c.other_events.fetch_add(1, Relaxed);
            } else if memchr::memmem::find(b, b"\"type\":\"PONG\"").is_some() {
                c.pongs.fetch_add(1, Relaxed);
            }
            return;
        };
        if ev.run != env.run_id {
            c.stale.fetch_add(1, Relaxed);
            return;
        }
        let now = env.clock.now_unix_ns();
        c.received.fetch_add(1, Relaxed);
        let Ok(idx) = self.tracks.binary_search_by_key(&ev.ch, |t| t.ch) else {
            c.unexpected.fetch_add(1, Relaxed);
            return;
        };
        if let Some(name) = event_channel(b) {
            let want = env.plan.channel_names.get(ev.ch as usize);
            if want.map(|w| w.as_bytes()) != Some(name) {
                c.unexpected.fetch_add(1, Relaxed);
                return;
            }
        }
        if ev.k >= MAX_K {
            c.unexpected.fetch_add(1, Relaxed);
            return;
        }
        let tr = &mut self.tracks[idx];
        let word = (ev.k / 64) as usize;
        let bit = 1u64 << (ev.k % 64);
        if tr.bits.len() <= word {
            tr.bits.resize(word + 1, 0);
        }
        if tr.bits[word] & bit != 0 {
            c.duplicated.fetch_add(1, Relaxed);
            return;
        }
        tr.bits[word] |= bit;
        c.distinct.fetch_add(1, Relaxed);
        if let Some(a) = c.step_distinct.get(ev.step as usize) {
            a.fetch_add(1, Relaxed);
        }
        match tr.max_k {
            Some(m) if ev.k < m => {
                c.out_of_order.fetch_add(1, Relaxed);
            }
            _ => tr.max_k = Some(ev.k),
        }
        record_latency(ev.step as usize, now.saturating_sub(ev.t) / 1000);
        c.last_receive_ns
            .fetch_max(env.clock.since_base_ns(now), Relaxed);
    }
}

/// Read frames until one of type `want` arrives; events met on the way are accounted.
/// ERROR frames are collected into `errors`.
async fn expect(
    ws: &mut Ws,
    tracker: &mut Tracker,
    env: &Env,
    want: &str,
    errors: &mut Vec<String>,
) -> Result<serde_json::Value> {
    loop {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("connection ended while waiting for {want}"))?
            .with_context(|| format!("while waiting for {want}"))?;
        match msg {
            Message::Text(t) => {
                let s = t.as_str();
                if s.contains("\"type\":\"EVENT\"") {
                    tracker.on_text(s, env);
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(s).with_context(|| format!("frame is not JSON: {s}"))?;
                match v.get("type").and_then(|t| t.as_str()) {
                    Some(ty) if ty == want => {
                        return Ok(v.get("payload").cloned().unwrap_or_default());
                    }
                    Some("ERROR") => {
                        let p = v.get("payload").cloned().unwrap_or_default();
                        errors.push(format!(
                            "{} {}",
                            p.get("code").and_then(|c| c.as_str()).unwrap_or("?"),
                            p.get("message").and_then(|c| c.as_str()).unwrap_or("")
                        ));
                    }
                    Some("EVENT") => tracker.on_text(s, env),
                    _ => {}
                }
            }
            Message::Close(f) => {
                let why = f
                    .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                    .unwrap_or_else(|| "no code".into());
                bail!("closed by the gateway ({why}) while waiting for {want}");
            }
            _ => {}
        }
    }
}

fn source_addr(env: &Env, id: usize) -> Option<SocketAddr> {
    match env.target.ip() {
        IpAddr::V4(_) => {
            let k = 1 + (id % env.source_addrs.max(1)) as u8;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)), 0))
        }
        IpAddr::V6(_) => None,
    }
}

/// TCP + upgrade + HELLO + SUBSCRIBE. Returns the socket and the heartbeat interval.
async fn attempt(
    id: usize,
    env: &Env,
    token: &str,
    tracker: &mut Tracker,
) -> Result<(Ws, Duration, Connected)> {
    let t0 = Instant::now();
    let sock = match env.target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("socket")?;
    if let Some(src) = source_addr(env, id) {
        sock.bind(src)
            .with_context(|| format!("bind {src} (ephemeral ports exhausted?)"))?;
    }
    let stream = sock.connect(env.target).await.context("TCP connect")?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (mut ws, _resp) =
        tokio_tungstenite::client_async_with_config(env.url.as_str(), stream, Some(env.ws_config))
            .await
            .context("WebSocket upgrade")?;
    let hello = serde_json::json!({"type": "HELLO", "payload": {"token": token}}).to_string();
    ws.send(Message::text(hello)).await.context("send HELLO")?;
    let mut errors = Vec::new();
    let ack = expect(&mut ws, tracker, env, "HELLO_ACK", &mut errors).await?;
    let hb = ack
        .get("heartbeatInterval")
        .and_then(|v| v.as_u64())
        .unwrap_or(30_000);
    let handshake = t0.elapsed();

    let t1 = Instant::now();
    let subs = &env.plan.conns[id].subscribe;
    let mut i = 0;
    while i < subs.len() {
        let mut chunk: Vec<&str> = Vec::new();
        let mut bytes = 64;
        while i < subs.len()
            && (chunk.is_empty() || bytes + subs[i].len() + 3 < MAX_SUBSCRIBE_BYTES)
        {
            bytes += subs[i].len() + 3;
            chunk.push(&subs[i]);
            i += 1;
        }
        let msg = serde_json::json!({"type": "SUBSCRIBE", "payload": {"channels": chunk}});
        ws.send(Message::text(msg.to_string()))
            .await
            .context("send SUBSCRIBE")?;
        let got = expect(&mut ws, tracker, env, "SUBSCRIBED", &mut errors).await?;
        let granted = got
            .get("channels")
            .and_then(|c| c.as_array())
            .map_or(0, |a| a.len());
        if !errors.is_empty() || granted < chunk.len() {
            bail!(
                "SUBSCRIBE refused ({} of {} granted): {}",
                granted,
                chunk.len(),
                errors.join("; ")
            );
        }
    }
    let subscribe = t1.elapsed();
    Ok((
        ws,
        Duration::from_millis(hb.max(10)),
        Connected {
            handshake,
            subscribe,
            at: Instant::now(),
        },
    ))
}

enum End {
    Stop,
    Reconnect,
    Lost,
}

fn exp_sample(mean: Duration) -> Duration {
    let u = fastrand::f64().max(1e-12);
    Duration::from_secs_f64((-u.ln() * mean.as_secs_f64()).min(3600.0))
}

async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(Some(frame))).await;
}

/// Resolves when the coordinator stops the run or starts another connect round.
async fn control(mut rx: watch::Receiver<Ctrl>, round: u32) -> End {
    loop {
        if rx.changed().await.is_err() {
            return End::Stop;
        }
        let c = *rx.borrow_and_update();
        if c.stop {
            return End::Stop;
        }
        if c.round != round {
            return End::Reconnect;
        }
    }
}

/// The life of a subscribed connection, until stop, reconnect or loss.
async fn session(
    id: usize,
    env: &Env,
    mut ws: Ws,
    hb: Duration,
    tracker: &mut Tracker,
    ctrl: &mut watch::Receiver<Ctrl>,
    round: u32,
) -> End {
    let c = &env.counters;
    let period = env.ping_interval.unwrap_or(hb);
    let first = Instant::now() + period.mul_f64(fastrand::f64());
    let mut ping = tokio::time::interval_at(first, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let typing_targets = &env.plan.conns[id].typing;
    let typing_mean = env.typing_mean.filter(|_| !typing_targets.is_empty());
    let typing = tokio::time::sleep(typing_mean.map_or(Duration::from_secs(3600), exp_sample));
    tokio::pin!(typing);
    // One long-lived future (not a new one per wake-up): cheap to poll.
    let ctl = control(ctrl.clone(), round);
    tokio::pin!(ctl);
    {
        // A change that happened before this session started.
        let now = *ctrl.borrow_and_update();
        if now.stop || now.round != round {
            close(&mut ws).await;
            return if now.stop { End::Stop } else { End::Reconnect };
        }
    }
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => tracker.on_text(t.as_str(), env),
                Some(Ok(Message::Close(f))) => {
                    let why = f
                        .map(|f| format!("close {}", u16::from(f.code)))
                        .unwrap_or_else(|| "close without code".into());
                    c.note_close(why);
                    return End::Lost;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    c.note_close(format!("error: {e}"));
                    return End::Lost;
                }
                None => {
                    c.note_close("ended without close".into());
                    return End::Lost;
                }
            },
            _ = ping.tick(), if env.ping => {
                if ws.send(Message::text(r#"{"type":"PING","payload":{}}"#)).await.is_err() {
                    c.note_close("send PING failed".into());
                    return End::Lost;
                }
                c.pings.fetch_add(1, Relaxed);
            }
            _ = &mut typing, if typing_mean.is_some() => {
                if env.typing_on.load(Relaxed) {
                    let ch = &typing_targets[fastrand::usize(..typing_targets.len())];
                    let m = serde_json::json!({"type": "TYPING_START", "payload": {"channelId": ch}});
                    if ws.send(Message::text(m.to_string())).await.is_err() {
                        c.note_close("send TYPING_START failed".into());
                        return End::Lost;
                    }
                    c.typing_sent.fetch_add(1, Relaxed);
                }
                if let Some(mean) = typing_mean {
                    typing.as_mut().reset(Instant::now() + exp_sample(mean));
                }
            }
            end = &mut ctl => {
                close(&mut ws).await;
                return end;
            }
        }
    }
}

/// Wait until the coordinator moves to another round or stops. `false` = stop.
async fn wait_for_next_round(ctrl: &mut watch::Receiver<Ctrl>, round: u32) -> bool {
    loop {
        {
            let c = *ctrl.borrow_and_update();
            if c.stop {
                return false;
            }
            if c.round != round {
                return true;
            }
        }
        if ctrl.changed().await.is_err() {
            return false;
        }
    }
}

/// The connection task.
pub async fn run(id: usize, env: Arc<Env>, mut ctrl: watch::Receiver<Ctrl>) {
    let mut tracker = Tracker::new(&env.plan.conns[id].tracked);
    let token = match env.tokens.sign(&env.plan.conns[id]) {
        Ok(t) => t,
        Err(e) => {
            let _ = env.reports.send(ConnectReport {
                id,
                round: 0,
                attempts: 0,
                result: Err(format!("{e:#}")),
            });
            return;
        }
    };
    loop {
        let c = *ctrl.borrow_and_update();
        if c.stop {
            return;
        }
        let round = c.round;
        if env.connect_rate > 0.0 {
            let slot = env.slots.fetch_add(1, Relaxed);
            let at = c.round_start + Duration::from_secs_f64(slot as f64 / env.connect_rate);
            tokio::time::sleep_until(at).await;
        }
        let mut attempts = 0u32;
        let result = loop {
            attempts += 1;
            let r = {
                let Ok(_permit) = env.sem.acquire().await else {
                    return;
                };
                tracker.reset_seq();
                tokio::time::timeout(env.connect_timeout, attempt(id, &env, &token, &mut tracker))
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("connect timeout")))
            };
            if r.is_ok() || attempts > env.connect_retries {
                break r;
            }
            // Back off (full jitter), unless the coordinator moved on meanwhile.
            let cap = env
                .connect_backoff
                .saturating_mul(1u32 << (attempts - 1).min(16))
                .min(Duration::from_secs(5));
            tokio::time::sleep(cap.mul_f64(fastrand::f64())).await;
            let now = *ctrl.borrow();
            if now.stop || now.round != round {
                break r;
            }
        };
        match result {
            Ok((ws, hb, connected)) => {
                env.counters.open.fetch_add(1, Relaxed);
                let _ = env.reports.send(ConnectReport {
                    id,
                    round,
                    attempts,
                    result: Ok(connected),
                });
                let end = session(id, &env, ws, hb, &mut tracker, &mut ctrl, round).await;
                env.counters.open.fetch_sub(1, Relaxed);
                match end {
                    End::Stop => return,
                    End::Reconnect => continue,
                    End::Lost => {
                        env.counters.lost.fetch_add(1, Relaxed);
                        if !wait_for_next_round(&mut ctrl, round).await {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                let _ = env.reports.send(ConnectReport {
                    id,
                    round,
                    attempts,
                    result: Err(format!("{e:#}")),
                });
                if !wait_for_next_round(&mut ctrl, round).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lt_fast_and_slow() {
        let frame = r#"{"type":"EVENT","seq":9,"payload":{"event":"lt.event","channel":"live:lt0:chat","payload":{"lt":{"run":7,"seq":3,"ch":0,"k":2,"s":1,"t":123456789},"pad":"xx"}}}"#;
        let want = Lt {
            run: 7,
            seq: 3,
            ch: 0,
            k: 2,
            step: 1,
            t: 123456789,
        };
        assert_eq!(parse_lt(frame), Some(want));
        assert_eq!(top_seq(frame.as_bytes()), Some(9));
        assert_eq!(event_channel(frame.as_bytes()), Some(&b"live:lt0:chat"[..]));
        // Re-serialised with spaces: the JSON fallback still reads it.
        let spaced = r#"{"type": "EVENT", "payload": {"event": "x", "channel": "c", "payload": {"lt": {"t": 123456789, "run": 7, "seq": 3, "ch": 0, "k": 2, "s": 1}}}}"#;
        assert_eq!(parse_lt(spaced), Some(want));
        assert_eq!(parse_lt(r#"{"type":"PONG","payload":{}}"#), None);
    }
}
