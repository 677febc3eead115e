//! One connection attempt: TCP from a spread loopback source address, the WebSocket
//! upgrade, HELLO → HELLO_ACK, then SUBSCRIBE in frames the gateway accepts until
//! every channel is granted. Events that arrive meanwhile are accounted as usual;
//! any refused channel fails the attempt.

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::track::Tracker;
use super::{Connected, Env, Ws};

/// Largest SUBSCRIBE frame we send (the gateway's default --max-message-size is 4096).
const MAX_SUBSCRIBE_BYTES: usize = 3000;

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

/// An attempt's outcome: the socket, the heartbeat interval, and the timings.
pub(super) type Attempt = Result<(Ws, Duration, Connected)>;

/// TCP + upgrade + HELLO + SUBSCRIBE.
pub(super) async fn attempt(id: usize, env: &Env, token: &str, tracker: &mut Tracker) -> Attempt {
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
    subscribe_all(&mut ws, id, tracker, env, &mut errors).await?;
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

/// SUBSCRIBE to every channel of connection `id`, in frames under the gateway's
/// message size, each answered by its SUBSCRIBED; any refusal fails the attempt.
async fn subscribe_all(
    ws: &mut Ws,
    id: usize,
    tracker: &mut Tracker,
    env: &Env,
    errors: &mut Vec<String>,
) -> Result<()> {
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
        let got = expect(ws, tracker, env, "SUBSCRIBED", errors).await?;
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
    Ok(())
}
