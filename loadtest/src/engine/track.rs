//! Per-connection accounting of what arrives: each load-test event is read in place
//! from the exact bytes the publisher wrote (a JSON parse only as the fallback) and
//! counted once as a first receipt, a duplicate, out of order or unexpected, with
//! its end-to-end latency. A connection keeps one bitmap of received `k` per
//! channel it covers, and checks that the frames' top-level `seq` grows. Counts go
//! to the worker thread's [`Acc`] (plain integers, flushed to the run's atomics
//! once per event-loop turn), latencies to the thread's own histograms.

use std::sync::atomic::Ordering::Relaxed;

use crate::clock::Clock;
use crate::plan::Plan;
use crate::stats::{Counters, Local};

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
pub fn parse_lt(b: &[u8]) -> Option<Lt> {
    static LT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"lt\""));
    let at = LT.find(b)?;
    lt_at(b, at + 4).or_else(|| parse_lt_json(b))
}

/// The `lt` object's fields from `b[p..]` = `:{"run":…}`.
#[inline]
fn lt_at(b: &[u8], mut p: usize) -> Option<Lt> {
    {
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
    }
}

/// The slow way: a JSON parse (a gateway that re-serialised the event).
fn parse_lt_json(b: &[u8]) -> Option<Lt> {
    {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
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
    }
}

/// The whole frame as the gateway writes it, read positionally without a search:
/// `{"type":"EVENT","seq":N,"payload":{"event":"E","channel":"C","payload":{"lt":{…}`.
/// `None` when the layout differs (the caller falls back to searching).
#[inline]
fn gateway_frame(b: &[u8]) -> Option<(u64, &[u8], Lt)> {
    const P: &[u8] = b"{\"type\":\"EVENT\",\"seq\":";
    let mut p = P.len();
    if !b.starts_with(P) {
        return None;
    }
    let seq = take_u64(b, &mut p)?;
    expect_lit(b, &mut p, b",\"payload\":{\"event\":\"")?;
    p += memchr::memchr(b'"', b.get(p..)?)?;
    expect_lit(b, &mut p, b"\",\"channel\":\"")?;
    let c0 = p;
    p += memchr::memchr(b'"', b.get(p..)?)?;
    let channel = &b[c0..p];
    expect_lit(b, &mut p, b"\",\"payload\":{\"lt\"")?;
    Some((seq, channel, lt_at(b, p)?))
}

/// The `channel` of an EVENT frame (channel names never need escaping).
fn event_channel(b: &[u8]) -> Option<&[u8]> {
    static CH: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"channel\":\""));
    let at = CH.find(b)? + 11;
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

/// One worker thread's counts since its last flush.
#[derive(Default)]
pub struct Acc {
    pub received: u64,
    pub distinct: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub stale: u64,
    pub other_events: u64,
    pub seq_regressions: u64,
    pub pongs: u64,
    pub pings: u64,
    pub typing_sent: u64,
    /// Wire bytes (frame headers included) of this run's deliveries, and how many
    /// of them came compressed.
    pub wire_bytes: u64,
    pub compressed: u64,
    pub step_distinct: Vec<u64>,
    /// Nanoseconds since the clock's base of the latest first receipt.
    pub last_receive_ns: u64,
}

impl Acc {
    /// Add the counts to the run's atomics and start again from zero.
    pub fn flush(&mut self, c: &Counters) {
        for (n, a) in [
            (&mut self.received, &c.received),
            (&mut self.distinct, &c.distinct),
            (&mut self.duplicated, &c.duplicated),
            (&mut self.out_of_order, &c.out_of_order),
            (&mut self.unexpected, &c.unexpected),
            (&mut self.stale, &c.stale),
            (&mut self.other_events, &c.other_events),
            (&mut self.seq_regressions, &c.seq_regressions),
            (&mut self.pongs, &c.pongs),
            (&mut self.pings, &c.pings),
            (&mut self.typing_sent, &c.typing_sent),
            (&mut self.wire_bytes, &c.wire_bytes),
            (&mut self.compressed, &c.compressed),
        ] {
            if *n > 0 {
                a.fetch_add(*n, Relaxed);
                *n = 0;
            }
        }
        for (i, n) in self.step_distinct.iter_mut().enumerate() {
            if *n > 0 {
                if let Some(a) = c.step_distinct.get(i) {
                    a.fetch_add(*n, Relaxed);
                }
                *n = 0;
            }
        }
        if self.last_receive_ns > 0 {
            c.last_receive_ns.fetch_max(self.last_receive_ns, Relaxed);
        }
    }
}

/// What accounting an event needs besides the connection's own state.
pub struct Sink<'a> {
    pub acc: &'a mut Acc,
    pub hist: &'a mut Local,
    pub plan: &'a Plan,
    pub clock: &'a Clock,
    pub run_id: u64,
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

    /// Account for one text frame (its payload, in place).
    #[inline]
    pub fn on_text(&mut self, b: &[u8], s: &mut Sink<'_>) {
        let (seq, channel, ev) = match gateway_frame(b) {
            Some((seq, ch, ev)) => (Some(seq), Some(ch), Some(ev)),
            None => (top_seq(b), event_channel(b), parse_lt(b)),
        };
        if let Some(seq) = seq {
            if self.last_seq.is_some_and(|last| seq <= last) {
                s.acc.seq_regressions += 1;
            }
            self.last_seq = Some(seq);
        }
        let Some(ev) = ev else {
            if memchr::memmem::find(b, b"\"type\":\"EVENT\"").is_some() {
                s.acc.other_events += 1;
            } else if memchr::memmem::find(b, b"\"type\":\"PONG\"").is_some() {
                s.acc.pongs += 1;
            }
            return;
        };
        if ev.run != s.run_id {
            s.acc.stale += 1;
            return;
        }
        s.acc.received += 1;
        let Ok(idx) = self.tracks.binary_search_by_key(&ev.ch, |t| t.ch) else {
            s.acc.unexpected += 1;
            return;
        };
        if let Some(name) = channel {
            let want = s.plan.channel_names.get(ev.ch as usize);
            if want.map(|w| w.as_bytes()) != Some(name) {
                s.acc.unexpected += 1;
                return;
            }
        }
        if ev.k >= MAX_K {
            s.acc.unexpected += 1;
            return;
        }
        let tr = &mut self.tracks[idx];
        let word = (ev.k / 64) as usize;
        let bit = 1u64 << (ev.k % 64);
        if tr.bits.len() <= word {
            tr.bits.resize(word + 1, 0);
        }
        if tr.bits[word] & bit != 0 {
            s.acc.duplicated += 1;
            return;
        }
        tr.bits[word] |= bit;
        s.acc.distinct += 1;
        let step = ev.step as usize;
        if step < crate::stats::MAX_STEPS {
            if s.acc.step_distinct.len() <= step {
                s.acc.step_distinct.resize(step + 1, 0);
            }
            s.acc.step_distinct[step] += 1;
        }
        match tr.max_k {
            Some(m) if ev.k < m => s.acc.out_of_order += 1,
            _ => tr.max_k = Some(ev.k),
        }
        let now = s.clock.now_unix_ns();
        s.hist.record(step, now.saturating_sub(ev.t) / 1000);
        s.acc.last_receive_ns = s.acc.last_receive_ns.max(s.clock.since_base_ns(now));
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
        assert_eq!(parse_lt(frame.as_bytes()), Some(want));
        let (seq, ch, lt) = gateway_frame(frame.as_bytes()).expect("positional");
        assert_eq!((seq, ch, lt), (9, &b"live:lt0:chat"[..], want));
        assert!(gateway_frame(br#"{"type":"EVENT","seq":9,"payload":{"channel":"x"}}"#).is_none());
        assert_eq!(top_seq(frame.as_bytes()), Some(9));
        assert_eq!(event_channel(frame.as_bytes()), Some(&b"live:lt0:chat"[..]));
        // Re-serialised with spaces: the JSON fallback still reads it.
        let spaced = r#"{"type": "EVENT", "payload": {"event": "x", "channel": "c", "payload": {"lt": {"t": 123456789, "run": 7, "seq": 3, "ch": 0, "k": 2, "s": 1}}}}"#;
        assert_eq!(parse_lt(spaced.as_bytes()), Some(want));
        assert_eq!(parse_lt(br#"{"type":"PONG","payload":{}}"#), None);
    }
}
