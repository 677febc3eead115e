//! Process sampling from /proc: resident memory (VmRSS, VmHWM) and CPU time
//! (utime + stime of all threads) of the gateway (given its PID) and of this tool.

use serde::Serialize;

/// One sample of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l[key.len()..].split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// utime + stime in seconds from the text of /proc/PID/stat.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Sample `/proc/{pid}`; `None` for `pid` means this process.
pub fn sample(pid: Option<u32>) -> Sample {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
    Sample {
        rss_bytes: status_kb(&status, "VmRSS:"),
        peak_rss_bytes: status_kb(&status, "VmHWM:"),
        cpu_seconds: parse_stat_cpu(&stat),
    }
}

/// Whether a process with this PID exists now.
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
}

/// Total memory of the host, from /proc/meminfo.
pub fn host_mem_bytes() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    status_kb(&m, "MemTotal:")
}

/// CPUs this process may run on (its affinity mask, as set by taskset).
pub fn affinity_cpus() -> usize {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return n as usize;
            }
        }
    }
    host_cores()
}

pub fn host_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// CPU seconds used between two samples (`None` when either is unknown).
pub fn cpu_between(a: &Sample, b: &Sample) -> Option<f64> {
    Some(b.cpu_seconds? - a.cpu_seconds?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (xcord gw) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100";
        let cpu = parse_stat_cpu(stat).expect("parse");
        assert!((cpu - 300.0 / clock_ticks()).abs() < 1e-9);
    }

    #[test]
    fn samples_self() {
        let s = sample(None);
        assert!(s.rss_bytes.unwrap_or(0) > 0);
        assert!(s.cpu_seconds.is_some());
        assert!(host_mem_bytes().unwrap_or(0) > 0);
    }
}
