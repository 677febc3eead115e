//! The live progress line on stderr: rewritten in place on a terminal, one line per
//! tick otherwise, at most once per `--progress-interval-s`; plain lines (`say`)
//! for the phase boundaries. It also samples the gateway for the line's RSS and CPU.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::procstat::{self, Sample};

/// The progress line.
pub(super) struct Progress {
    every: Option<Duration>,
    tty: bool,
    last: Instant,
    dirty: bool,
}

impl Progress {
    pub(super) fn new(every: Option<Duration>) -> Progress {
        Progress {
            every,
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
            dirty: false,
        }
    }

    /// Whether a tick is due now (and, if so, start the next interval).
    pub(super) fn due(&mut self) -> bool {
        match self.every {
            Some(e) if self.last.elapsed() >= e => {
                self.last = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Show `line` as the current progress.
    pub(super) fn show(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
            self.dirty = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Print `line` on a line of its own.
    pub(super) fn say(&mut self, line: &str) {
        self.end_line();
        eprintln!("{line}");
    }

    /// End a progress line left open on the terminal.
    pub(super) fn end_line(&mut self) {
        if self.dirty {
            eprintln!();
            self.dirty = false;
        }
    }
}

/// The gateway part of a progress line: its RSS, and its CPU since `prev`.
pub(super) fn gw_text(pid: Option<u32>, prev: &mut Option<(Instant, Sample)>) -> String {
    let Some(pid) = pid else {
        return String::new();
    };
    let s = procstat::sample(Some(pid));
    let now = Instant::now();
    let cpu = prev.as_ref().and_then(|(t, p)| {
        let dt = now.duration_since(*t).as_secs_f64();
        procstat::cpu_between(p, &s).map(|c| c / dt.max(1e-3) * 100.0)
    });
    *prev = Some((now, s));
    format!(
        " | gw rss {} cpu {}",
        s.rss_bytes
            .map_or("-".into(), |b| format!("{:.0}MiB", b as f64 / 1048576.0)),
        cpu.map_or("-".into(), |c| format!("{c:.0}%"))
    )
}
