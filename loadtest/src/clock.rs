//! The run's clock: monotonic, and also speaking Unix nanoseconds, because each
//! event carries its intended send time as Unix nanoseconds. The publisher and the
//! receivers are this one process, so there is no skew between the two ends.

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
