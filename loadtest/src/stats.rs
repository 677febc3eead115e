//! Measurement state: the run-wide counters (atomics, cheap to bump from every
//! connection task), the latency histograms (one set per client thread, merged on
//! demand, so recording never contends), and the percentile summaries taken from
//! them.

use hdrhistogram::Histogram;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

pub use xcord_common::result::Percentiles;

/// Latencies are recorded in microseconds, 1 µs ..= 1 hour, 3 significant digits.
pub const MAX_US: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

pub fn record_into(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_US));
}

/// Most steps a run can have (ramp steps; a plain run uses step 0).
pub const MAX_STEPS: usize = 256;

/// Run-wide counters.
pub struct Counters {
    /// Deliveries of this run's events received (duplicates included).
    pub received: AtomicU64,
    /// First receipts of an expected (connection, channel, k).
    pub distinct: AtomicU64,
    pub duplicated: AtomicU64,
    pub out_of_order: AtomicU64,
    /// A run event on a channel the connection does not cover, or a wrong channel name.
    pub unexpected: AtomicU64,
    /// Events carrying another run's id (an earlier run's leftovers).
    pub stale: AtomicU64,
    /// Other EVENT frames (presence, typing, …).
    pub other_events: AtomicU64,
    /// An EVENT whose top-level `seq` did not grow on its connection.
    pub seq_regressions: AtomicU64,
    /// First receipts per step.
    pub step_distinct: Vec<AtomicU64>,
    /// Connections open and subscribed now.
    pub open: AtomicU64,
    /// Connections the gateway closed, or that broke, while we wanted them open.
    pub lost: AtomicU64,
    pub close_codes: Mutex<BTreeMap<String, u64>>,
    pub pings: AtomicU64,
    pub pongs: AtomicU64,
    pub typing_sent: AtomicU64,
    /// Wire bytes of this run's deliveries (frame headers included), and the
    /// deliveries that came compressed (permessage-deflate).
    pub wire_bytes: AtomicU64,
    pub compressed: AtomicU64,
    /// Published so far, and expected deliveries so far (for the progress line).
    pub published: AtomicU64,
    pub expected: AtomicU64,
    /// Nanoseconds since the run's base instant of the latest first receipt.
    pub last_receive_ns: AtomicU64,
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            received: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            other_events: AtomicU64::new(0),
            seq_regressions: AtomicU64::new(0),
            step_distinct: (0..MAX_STEPS).map(|_| AtomicU64::new(0)).collect(),
            open: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            close_codes: Mutex::new(BTreeMap::new()),
            pings: AtomicU64::new(0),
            pongs: AtomicU64::new(0),
            typing_sent: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            compressed: AtomicU64::new(0),
            published: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            last_receive_ns: AtomicU64::new(0),
        }
    }

    pub fn step_distinct(&self, step: usize) -> u64 {
        self.step_distinct.get(step).map_or(0, |a| a.load(Relaxed))
    }

    pub fn note_close(&self, why: String) {
        if let Ok(mut m) = self.close_codes.lock() {
            *m.entry(why).or_insert(0) += 1;
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

/// One client thread's histograms.
pub struct Local {
    steps: Vec<Histogram<u64>>,
    interval: Histogram<u64>,
}

impl Local {
    /// Record one end-to-end latency (µs) for an event of `step`.
    #[inline]
    pub fn record(&mut self, step: usize, us: u64) {
        while self.steps.len() <= step {
            self.steps.push(new_hist());
        }
        record_into(&mut self.steps[step], us);
        record_into(&mut self.interval, us);
    }
}

fn registry() -> &'static Mutex<Vec<Arc<Mutex<Local>>>> {
    static R: OnceLock<Mutex<Vec<Arc<Mutex<Local>>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

/// A worker thread's histograms, registered so that the run can merge them. The
/// worker locks them once per event-loop turn (never contended but by a reader
/// of the progress line).
#[derive(Clone)]
pub struct Recorder(Arc<Mutex<Local>>);

impl Recorder {
    pub fn new() -> Recorder {
        let l = Arc::new(Mutex::new(Local {
            steps: Vec::new(),
            interval: new_hist(),
        }));
        if let Ok(mut r) = registry().lock() {
            r.push(l.clone());
        }
        Recorder(l)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
thread_local! {
    static LOCAL: std::cell::RefCell<Option<Recorder>> = const { std::cell::RefCell::new(None) };
}

/// Record one end-to-end latency for an event of `step` (this thread's recorder).
#[cfg(test)]
pub fn record_latency(step: usize, us: u64) {
    LOCAL.with(|cell| {
        let mut slot = cell.borrow_mut();
        slot.get_or_insert_with(Recorder::new)
            .lock()
            .record(step, us);
    });
}

fn locals() -> Vec<Arc<Mutex<Local>>> {
    registry().lock().map(|r| r.clone()).unwrap_or_default()
}

/// All latencies recorded so far for `step`.
pub fn step_histogram(step: usize) -> Histogram<u64> {
    let mut out = new_hist();
    for l in locals() {
        if let Ok(l) = l.lock() {
            if let Some(h) = l.steps.get(step) {
                let _ = out.add(h);
            }
        }
    }
    out
}

/// Latencies recorded since the previous call (the progress line's window).
pub fn take_interval() -> Histogram<u64> {
    let mut out = new_hist();
    for l in locals() {
        if let Ok(mut l) = l.lock() {
            let _ = out.add(&l.interval);
            l.interval.reset();
        }
    }
    out
}

/// A histogram as the base64 of hdrhistogram's V2 serialization (`None` if the
/// serializer fails, which it does not for our bounds).
pub fn encode(h: &Histogram<u64>) -> Option<String> {
    use base64::Engine as _;
    use hdrhistogram::serialization::Serializer as _;
    let mut buf = Vec::new();
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut buf)
        .ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// The inverse of [`encode`].
pub fn decode(s: &str) -> anyhow::Result<Histogram<u64>> {
    use anyhow::Context as _;
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .context("histogram: not base64")?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(raw))
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))
}

fn ms(us: u64) -> f64 {
    (us as f64) / 1000.0
}

/// Percentile summaries (the result file's type) taken from a microsecond histogram.
pub trait FromHistogram {
    /// From a microsecond histogram; `with_mean` adds the mean.
    fn of(h: &Histogram<u64>, with_mean: bool) -> Self;
}

impl FromHistogram for Percentiles {
    fn of(h: &Histogram<u64>, with_mean: bool) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: Some(ms(h.value_at_quantile(0.5))),
            p90: Some(ms(h.value_at_quantile(0.9))),
            p99: Some(ms(h.value_at_quantile(0.99))),
            p999: Some(ms(h.value_at_quantile(0.999))),
            max: Some(ms(h.max())),
            mean: if with_mean {
                Some(h.mean() / 1000.0)
            } else {
                None
            },
            count: h.len(),
        }
    }
}

/// The percentile spectrum for the plot: (percentile, ms) at log-spaced points up
/// to the resolution the sample count allows.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    if h.is_empty() {
        return out;
    }
    let n = h.len() as f64;
    let mut x = 0.0f64; // x = log10(1 / (1 - q))
    while x <= 6.0 {
        let q = 1.0 - 10f64.powf(-x);
        if x > 0.0 && (1.0 - q) * n < 1.0 {
            break;
        }
        out.push((q * 100.0, ms(h.value_at_quantile(q))));
        x += 0.1;
    }
    out.push((100.0, ms(h.max())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_spectrum() {
        let mut h = new_hist();
        for v in 1..=10_000u64 {
            record_into(&mut h, v);
        }
        let p = Percentiles::of(&h, true);
        assert!((p.p50.unwrap_or(0.0) - 5.0).abs() < 0.01);
        assert!((p.p99.unwrap_or(0.0) - 9.9).abs() < 0.02);
        let s = spectrum(&h);
        assert!(s.len() > 30);
        assert!(s.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(Percentiles::of(&new_hist(), true).p50.is_none());
    }

    #[test]
    fn histograms_round_trip_through_base64() {
        let mut h = new_hist();
        for v in [1u64, 50, 1000, 123_456, 3_000_000] {
            record_into(&mut h, v);
        }
        let back = decode(&encode(&h).expect("encode")).expect("decode");
        assert_eq!(back.len(), h.len());
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert!(decode("not base64 !").is_err());
    }

    #[test]
    fn thread_local_histograms_merge() {
        record_latency(3, 1000);
        std::thread::spawn(|| record_latency(3, 3000))
            .join()
            .expect("thread");
        let h = step_histogram(3);
        assert_eq!(h.len(), 2);
        assert!(take_interval().len() >= 2);
    }
}
