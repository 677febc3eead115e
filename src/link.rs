//! Redis links: how every thread of the gateway connects to Redis (with a connect
//! timeout, and read/write timeouts on command connections, so a stalled Redis
//! never stalls a thread for long), and the backoff between attempts.

use std::time::Duration;

use crate::limits::{REDIS_CONNECT_TIMEOUT, REDIS_IO_TIMEOUT};

/// A command connection: bounded connect, bounded reads and writes.
pub fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let c = client.get_connection_with_timeout(REDIS_CONNECT_TIMEOUT)?;
    c.set_read_timeout(Some(REDIS_IO_TIMEOUT))?;
    c.set_write_timeout(Some(REDIS_IO_TIMEOUT))?;
    Ok(c)
}

/// Exponential backoff with full jitter (the AWS architecture blog's "full
/// jitter"): attempt `n` waits a random time in `[cap_n / 4, cap_n]`, with
/// `cap_n = min(cap, base · 2^n)` — never zero, so a flapping Redis is not hammered.
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The bound of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap)
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(fastrand::u64(ms / 4..=ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let d: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(d[0] <= Duration::from_millis(100));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(5)));
        assert!(
            d[11] >= Duration::from_millis(1250),
            "capped delay keeps at least a quarter: {:?}",
            d[11]
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
