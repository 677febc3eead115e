//! Rate-limited logging: a warning that can repeat thousands of times a second (a
//! failing accept, a Redis link down, events dropped) is logged at most once per
//! period. Lock-free, so any thread may share one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Allows one event per `period`.
pub struct Throttle {
    period: Duration,
    /// Milliseconds since `epoch()` of the last allowed event, plus one (0 = never).
    last: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    pub const fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last: AtomicU64::new(0),
        }
    }

    /// True at most once per period (the first call is always allowed).
    pub fn ready(&self) -> bool {
        let now = u64::try_from(epoch().elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.last.load(Relaxed);
        let period = u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < period {
            return false;
        }
        self.last
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_period() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert!(t.ready());
        assert!(!t.ready());
        let t = Throttle::new(Duration::ZERO);
        assert!(t.ready());
        assert!(t.ready());
    }
}
