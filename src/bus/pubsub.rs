//! The Redis pub/sub link (`--redis`): the `xcord-bus` thread PSUBSCRIBEs
//! `events:*` and hands every message to the [`Router`]. Redis disconnects a
//! subscriber that falls 32 MB behind, so this thread only parses, stamps and
//! pushes into bounded shard queues (a full queue drops and counts) — it never
//! waits on a shard.
//!
//! When the link drops it reconnects with exponential backoff and full jitter,
//! re-PSUBSCRIBEs, and reports `xcord_redis_up 0` (and `/readyz` 503) meanwhile;
//! nothing published while it was down is replayed — Redis pub/sub is
//! at-most-once, which is what `RESUME` (§8) covers per client.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::Router;
use crate::limits::{PUBSUB_POLL, REDIS_CONNECT_TIMEOUT};
use crate::link::Backoff;
use crate::metrics::Metrics;
use crate::throttle::Throttle;

/// Start the `xcord-bus` thread.
pub fn start(client: redis::Client, router: Router, metrics: Arc<Metrics>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("xcord-bus".into())
        .spawn(move || pubsub_loop(client, router, metrics))
        .map(|_| ())
        .map_err(|e| format!("cannot start the bus thread: {e}"))
}

fn pubsub_loop(client: redis::Client, mut router: Router, metrics: Arc<Metrics>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut ever_up = false;
    let down_log = Throttle::new(Duration::from_secs(10));
    loop {
        let outcome = (|| -> Result<(), String> {
            let mut con = client
                .get_connection_with_timeout(REDIS_CONNECT_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let mut ps = con.as_pubsub();
            ps.psubscribe("events:*").map_err(|e| e.to_string())?;
            ps.set_read_timeout(Some(PUBSUB_POLL))
                .map_err(|e| e.to_string())?;
            if ever_up {
                metrics.bus.reconnects.fetch_add(1, Relaxed);
            }
            ever_up = true;
            metrics.bus.redis_up.store(true, Relaxed);
            backoff.reset();
            info!("redis pub/sub link up (PSUBSCRIBE events:*)");
            loop {
                match ps.get_message() {
                    Ok(msg) => {
                        let channel: Vec<u8> = msg.get_channel().unwrap_or_default();
                        let channel = channel.strip_prefix(b"events:").unwrap_or(&channel);
                        router.route(channel, msg.get_payload_bytes());
                    }
                    Err(e) if e.is_timeout() => router.apply_routes(),
                    Err(e) => return Err(e.to_string()),
                }
            }
        })();
        metrics.bus.redis_up.store(false, Relaxed);
        if let Err(e) = outcome {
            if down_log.ready() {
                warn!("redis pub/sub link down: {e}; reconnecting with backoff");
            }
        }
        let until = Instant::now() + backoff.next_delay();
        while Instant::now() < until {
            router.apply_routes();
            std::thread::sleep(
                Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
            );
        }
    }
}
