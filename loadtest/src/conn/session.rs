//! The life of a subscribed connection: read and account for every frame, PING at
//! the heartbeat interval (first tick at a random offset so that the connections'
//! pings spread out), send TYPING_START at exponential intervals while the measured
//! phase runs, and close when the coordinator stops the run or starts another
//! connect round. A close or error from the gateway is a loss, with its reason.

use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::track::Tracker;
use super::{Ctrl, Env, Ws};

pub(super) enum End {
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
pub(super) async fn session(
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
pub(super) async fn wait_for_next_round(ctrl: &mut watch::Receiver<Ctrl>, round: u32) -> bool {
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
