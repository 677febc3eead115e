//! The chaos run's accounting, done after the run from exact records: every
//! event the publisher tried (channel, per-channel `k`, when it was sent and
//! acknowledged, how many gateway nodes Redis handed it to) and every client's
//! receipts and history (sessions, drops with their cause, resumes, invalid
//! sessions).
//!
//! A missed event `k` of a channel is judged by what happened to the client
//! between its neighbours: the receipt of the closest earlier `k` it got (or
//! its first SUBSCRIBED) and of the closest later one (or the end of the run).
//! - Published while Redis was down (the PUBLISH failed) or while a node had not
//!   re-subscribed after the restart (Redis handed it to fewer nodes than were
//!   live): **missed across the Redis outage**, reported.
//! - An INVALID_SESSION between the neighbours, and the event was sent before
//!   the new session's SUBSCRIBED: **missed across INVALID_SESSION**, reported
//!   and charged to the reconnect (its cause: reset, drain, other).
//! - Otherwise — the client stayed attached, or every drop ended in a successful
//!   RESUME — **missed while attached or across RESUME**: must be 0.
//!
//! Events sent before a client's first SUBSCRIBED are not owed to it. A client
//! still reconnecting when the run stops has its trailing events reported as
//! unresolved, not judged.

use serde::Serialize;
use std::collections::BTreeMap;

use super::client::{Cause, Log, Mark};

/// One event the publisher tried.
#[derive(Debug, Clone, Copy)]
pub struct Pub {
    /// When the PUBLISH was sent and answered (seconds since the run's base).
    pub t_send: f64,
    /// Redis's answer: how many subscribers got it; `None` = the PUBLISH failed.
    pub receivers: Option<u64>,
    /// How many nodes should have got it then.
    pub want: u64,
}

impl Pub {
    fn lost_to_outage(&self) -> bool {
        self.receivers.is_none_or(|n| n < self.want)
    }
}

/// Per fault kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultStats {
    pub injected: u64,
    /// Connections that ended for this cause.
    pub reconnects: u64,
    pub resumes_ok: u64,
    /// Events the nodes replayed in those resumes.
    pub events_replayed: u64,
    pub invalid_sessions: u64,
    /// Events missed across this kind's INVALID_SESSIONs (or, for `redis`, the
    /// outage's events).
    pub events_missed: u64,
    /// Per reconnect across INVALID_SESSION: events missed and seconds from the
    /// drop to the new SUBSCRIBED (mean and max).
    pub gap_events_mean: f64,
    pub gap_events_max: u64,
    pub gap_seconds_mean: f64,
    pub gap_seconds_max: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Deliveries owed (events sent after each client's first SUBSCRIBED, on its channels).
    pub owed: u64,
    pub delivered: u64,
    pub missed_attached_or_resumed: u64,
    pub missed_invalid_session: u64,
    pub missed_redis_outage: u64,
    pub unresolved_at_end: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

/// One reconnect across INVALID_SESSION: the client, the cause of the drop, the
/// seconds from the drop to the new SUBSCRIBED, the events it missed.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub client: usize,
    pub cause: Cause,
    pub seconds: f64,
    pub events: u64,
}

/// A client's history: (time of the INVALID_SESSION, cause of the drop before it,
/// time of that drop, time of the new SUBSCRIBED after it).
fn invalids(marks: &[Mark]) -> Vec<(f64, Cause, f64, f64)> {
    let mut out = Vec::new();
    let mut last_drop = (0.0, Cause::Other);
    let mut pending: Option<(f64, Cause, f64)> = None;
    for m in marks {
        match *m {
            Mark::Dropped(t, c) => last_drop = (t, c),
            Mark::Invalid(t) => pending = Some((t, last_drop.1, last_drop.0)),
            Mark::NewSession(t) => {
                if let Some((ti, c, td)) = pending.take() {
                    out.push((ti, c, td, t));
                }
            }
            Mark::Resumed(..) => {}
        }
    }
    if let Some((ti, c, td)) = pending {
        out.push((ti, c, td, f64::INFINITY));
    }
    out
}

/// Account every client against the publisher's records; `pubs[ch][k]`.
pub fn account(
    pubs: &[Vec<Pub>],
    logs: &[Log],
    t_end: f64,
) -> (Totals, BTreeMap<&'static str, FaultStats>, Vec<Gap>) {
    let mut t = Totals::default();
    let mut faults: BTreeMap<&'static str, FaultStats> = BTreeMap::new();
    let mut gaps: Vec<Gap> = Vec::new();
    for (client, log) in logs.iter().enumerate() {
        let first_sub = log.marks.iter().find_map(|m| match m {
            Mark::NewSession(t) => Some(*t),
            _ => None,
        });
        let Some(first_sub) = first_sub else { continue };
        let inv = invalids(&log.marks);
        let mut my_gaps: Vec<Gap> = inv
            .iter()
            .map(|&(_, c, td, ts)| Gap {
                client,
                cause: c,
                seconds: if ts.is_finite() { ts - td } else { t_end - td },
                events: 0,
            })
            .collect();
        // Detached at the end: from its last drop on, nothing is judged.
        let unresolved_from = (!log.attached_at_end)
            .then(|| {
                log.marks.iter().rev().find_map(|m| match m {
                    Mark::Dropped(t, _) => Some(*t),
                    _ => None,
                })
            })
            .flatten();
        for (ci, &ch) in log.channels.iter().enumerate() {
            let chan = &pubs[ch as usize];
            let mut got: Vec<Option<f64>> = vec![None; chan.len()];
            let mut max_k: Option<u64> = None;
            for &(k, at) in &log.receipts[ci] {
                let Some(slot) = got.get_mut(k as usize) else {
                    continue;
                };
                if slot.is_some() {
                    t.duplicated += 1;
                    continue;
                }
                *slot = Some(at);
                if max_k.is_some_and(|m| k < m) {
                    t.out_of_order += 1;
                }
                max_k = max_k.max(Some(k));
            }
            for (k, p) in chan.iter().enumerate() {
                if p.t_send < first_sub {
                    continue;
                }
                t.owed += 1;
                if got[k].is_some() {
                    t.delivered += 1;
                    continue;
                }
                if p.lost_to_outage() {
                    t.missed_redis_outage += 1;
                    continue;
                }
                if unresolved_from.is_some_and(|d| p.t_send >= d) {
                    t.unresolved_at_end += 1;
                    continue;
                }
                let prev = got[..k].iter().rev().find_map(|x| *x).unwrap_or(first_sub);
                let next = got[k + 1..].iter().find_map(|x| *x).unwrap_or(t_end);
                // The reconnect across INVALID_SESSION in between whose new
                // session began after this event was sent.
                let across = inv
                    .iter()
                    .position(|&(ti, _, _, ts)| ti > prev && ti <= next && p.t_send < ts);
                match across {
                    Some(i) => {
                        t.missed_invalid_session += 1;
                        my_gaps[i].events += 1;
                    }
                    None => t.missed_attached_or_resumed += 1,
                }
            }
        }
        tally_marks(&log.marks, &mut faults);
        gaps.extend(my_gaps);
    }
    for (kind, f) in faults.iter_mut() {
        let mine: Vec<&Gap> = gaps
            .iter()
            .filter(|g| cause_name(g.cause) == *kind)
            .collect();
        if !mine.is_empty() {
            let n = mine.len() as f64;
            f.events_missed += mine.iter().map(|g| g.events).sum::<u64>();
            f.gap_events_mean = mine.iter().map(|g| g.events as f64).sum::<f64>() / n;
            f.gap_events_max = mine.iter().map(|g| g.events).max().unwrap_or(0);
            f.gap_seconds_mean = mine.iter().map(|g| g.seconds).sum::<f64>() / n;
            f.gap_seconds_max = mine.iter().map(|g| g.seconds).fold(0.0, f64::max);
        }
    }
    faults.entry("redis").or_default().events_missed += t.missed_redis_outage;
    (t, faults, gaps)
}

pub fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::Reset => "reset",
        Cause::Drain => "drain",
        Cause::Other => "other",
    }
}

/// Reconnects, resumes and invalid sessions by the cause of the drop before them.
fn tally_marks(marks: &[Mark], faults: &mut BTreeMap<&'static str, FaultStats>) {
    let mut cause = Cause::Other;
    for m in marks {
        match *m {
            Mark::Dropped(_, c) => {
                cause = c;
                faults.entry(cause_name(c)).or_default().reconnects += 1;
            }
            Mark::Resumed(n) => {
                let f = faults.entry(cause_name(cause)).or_default();
                f.resumes_ok += 1;
                f.events_replayed += n;
            }
            Mark::Invalid(_) => {
                faults
                    .entry(cause_name(cause))
                    .or_default()
                    .invalid_sessions += 1;
            }
            Mark::NewSession(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubs(n: usize, dt: f64) -> Vec<Pub> {
        (0..n)
            .map(|i| Pub {
                t_send: 1.0 + i as f64 * dt,
                receivers: Some(1),
                want: 1,
            })
            .collect()
    }

    #[test]
    fn a_gap_while_attached_counts_against_the_gateway() {
        let p = vec![pubs(10, 0.1)];
        let log = Log {
            channels: vec![0],
            receipts: vec![(0..10)
                .filter(|k| *k != 4)
                .map(|k| (k, 1.05 + k as f64 * 0.1))
                .collect()],
            marks: vec![Mark::NewSession(0.5)],
            attached_at_end: true,
        };
        let (t, _, _) = account(&p, &[log], 5.0);
        assert_eq!(
            (t.owed, t.delivered, t.missed_attached_or_resumed),
            (10, 9, 1)
        );
    }

    #[test]
    fn a_gap_across_invalid_session_is_reported_not_failed() {
        let p = vec![pubs(10, 0.1)];
        // Dropped at 1.32 (after k=3), INVALID at 1.5, new session at 1.65: k 4..=6
        // were sent before it; k 7 on arrive again.
        let log = Log {
            channels: vec![0],
            receipts: vec![[0u64, 1, 2, 3, 7, 8, 9]
                .iter()
                .map(|&k| (k, 1.05 + k as f64 * 0.1))
                .collect()],
            marks: vec![
                Mark::NewSession(0.5),
                Mark::Dropped(1.32, Cause::Drain),
                Mark::Invalid(1.5),
                Mark::NewSession(1.65),
            ],
            attached_at_end: true,
        };
        let (t, f, g) = account(&p, &[log], 5.0);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].events, 3);
        assert_eq!(t.missed_invalid_session, 3);
        assert_eq!(t.missed_attached_or_resumed, 0);
        let d = &f["drain"];
        assert_eq!(
            (d.invalid_sessions, d.events_missed, d.gap_events_max),
            (1, 3, 3)
        );
        assert!((d.gap_seconds_max - 0.33).abs() < 1e-9);
    }

    #[test]
    fn outage_events_and_duplicates() {
        let mut ch = pubs(5, 0.1);
        ch[2].receivers = None;
        ch[3].receivers = Some(0);
        let log = Log {
            channels: vec![0],
            receipts: vec![vec![(0, 1.0), (1, 1.2), (1, 1.21), (4, 1.5)]],
            marks: vec![
                Mark::NewSession(0.5),
                Mark::Dropped(1.25, Cause::Reset),
                Mark::Resumed(0),
            ],
            attached_at_end: true,
        };
        let (t, f, _) = account(&[ch], &[log], 5.0);
        assert_eq!(t.missed_redis_outage, 2);
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.missed_attached_or_resumed, 0);
        assert_eq!(f["reset"].resumes_ok, 1);
        assert_eq!(f["redis"].events_missed, 2);
    }
}
