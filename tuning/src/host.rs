//! Reading the host from `/proc`-style files under a root directory: the real
//! `/proc` by default, a fixture directory in tests (`--proc-root DIR`).
//!
//! Layout read under the root (the same as `/proc`; `self` may be a pid):
//! `cpuinfo`, `meminfo`, `self/status` (`Cpus_allowed_list`), `self/limits`
//! (`Max open files`, `Max locked memory`), `sys/fs/{nr_open,file-max}`,
//! `sys/net/core/{somaxconn,netdev_max_backlog}`,
//! `sys/net/ipv4/{tcp_max_syn_backlog,tcp_syncookies,ip_local_port_range,tcp_mem,tcp_rmem,tcp_wmem}`,
//! `sys/kernel/{osrelease,io_uring_disabled}`. Every value is read on its own: a
//! missing or unparsable file makes that one value unknown, with the reason.

use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

/// One value read from the host, or why it could not be.
pub type Reading<T> = Result<T, String>;

/// A resource limit; `u64::MAX` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

/// A kernel release such as `6.18.44-fc-v669`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kernel {
    pub major: u32,
    pub minor: u32,
    pub release: String,
}

impl Kernel {
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

/// Everything `check` looks at.
#[derive(Debug, Clone)]
pub struct Host {
    pub root: PathBuf,
    /// True when `root` is the live `/proc`.
    pub live: bool,
    /// Whose limits and CPU mask were read: `self` or a process id.
    pub process: String,
    pub cpus_online: Reading<usize>,
    pub cpus_usable: Reading<usize>,
    pub mem_total: Reading<u64>,
    pub mem_available: Reading<u64>,
    pub nofile: Reading<Limit>,
    pub memlock: Reading<Limit>,
    pub nr_open: Reading<u64>,
    pub file_max: Reading<u64>,
    pub somaxconn: Reading<u64>,
    pub syn_backlog: Reading<u64>,
    pub syncookies: Reading<u64>,
    pub port_range: Reading<(u64, u64)>,
    pub tcp_mem: Reading<[u64; 3]>,
    pub tcp_rmem: Reading<[u64; 3]>,
    pub tcp_wmem: Reading<[u64; 3]>,
    pub netdev_max_backlog: Reading<u64>,
    pub kernel: Reading<Kernel>,
    /// `kernel.io_uring_disabled`; `Ok(None)` when the knob does not exist (kernels
    /// before 6.6 have none: io_uring is then on whenever it is compiled in).
    pub io_uring_disabled: Reading<Option<u64>>,
    /// The result of a real `io_uring_setup` call (live host only).
    pub io_uring_probe: Option<Result<(), String>>,
}

impl Host {
    /// Read the host under `root`, with the limits and CPU mask of `process`
    /// (`self`, or the pid of a running gateway). Fails only when `root` is not a
    /// directory; each value that cannot be read is recorded as unknown.
    pub fn read(root: &Path, process: &str, probe: bool) -> Result<Host, String> {
        if !root.is_dir() {
            return Err(format!("--proc-root {}: not a directory", root.display()));
        }
        if process != "self" && !root.join(process).is_dir() {
            return Err(format!("no process {process} under {}", root.display()));
        }
        let live = fs::canonicalize(root)
            .map(|p| p == Path::new("/proc"))
            .unwrap_or(false);
        let r = Reader { root };
        let mem = r.text("meminfo");
        let limits = r.text(&format!("{process}/limits"));
        let status_file = format!("{process}/status");
        Ok(Host {
            root: root.to_path_buf(),
            live,
            process: process.to_string(),
            cpus_online: r.text("cpuinfo").and_then(|t| {
                let n = t
                    .lines()
                    .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
                    .count();
                if n == 0 {
                    Err(format!("{}: no `processor` lines", r.path("cpuinfo")))
                } else {
                    Ok(n)
                }
            }),
            cpus_usable: r.text(&status_file).and_then(|t| {
                let line = t
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .ok_or_else(|| format!("{}: no Cpus_allowed_list", r.path(&status_file)))?;
                crate::units::cpu_list_len(line)
            }),
            mem_total: mem.clone().and_then(|t| meminfo(&t, "MemTotal")),
            mem_available: mem.and_then(|t| meminfo(&t, "MemAvailable")),
            nofile: limits
                .clone()
                .and_then(|t| limit_line(&t, "Max open files")),
            memlock: limits.and_then(|t| limit_line(&t, "Max locked memory")),
            nr_open: r.number("sys/fs/nr_open"),
            file_max: r.number("sys/fs/file-max"),
            somaxconn: r.number("sys/net/core/somaxconn"),
            syn_backlog: r.number("sys/net/ipv4/tcp_max_syn_backlog"),
            syncookies: r.number("sys/net/ipv4/tcp_syncookies"),
            port_range: r
                .numbers::<2>("sys/net/ipv4/ip_local_port_range")
                .and_then(|[a, b]| {
                    if a > b {
                        Err(format!("ip_local_port_range `{a} {b}`: low above high"))
                    } else {
                        Ok((a, b))
                    }
                }),
            tcp_mem: r.numbers::<3>("sys/net/ipv4/tcp_mem"),
            tcp_rmem: r.numbers::<3>("sys/net/ipv4/tcp_rmem"),
            tcp_wmem: r.numbers::<3>("sys/net/ipv4/tcp_wmem"),
            netdev_max_backlog: r.number("sys/net/core/netdev_max_backlog"),
            kernel: r
                .text("sys/kernel/osrelease")
                .and_then(|t| parse_kernel(&t)),
            io_uring_disabled: match fs::read_to_string(root.join("sys/kernel/io_uring_disabled")) {
                Ok(t) => t.trim().parse::<u64>().map(Some).map_err(|_| {
                    format!("sys/kernel/io_uring_disabled: not a number: `{}`", t.trim())
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", r.path("sys/kernel/io_uring_disabled"))),
            },
            io_uring_probe: if probe && live {
                Some(probe_io_uring())
            } else {
                None
            },
        })
    }

    /// Usable cores: the affinity mask when known, else the online count.
    pub fn usable_cores(&self) -> Option<usize> {
        self.cpus_usable
            .clone()
            .ok()
            .or_else(|| self.cpus_online.clone().ok())
    }
}

struct Reader<'a> {
    root: &'a Path,
}

impl Reader<'_> {
    fn path(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
    fn text(&self, rel: &str) -> Reading<String> {
        fs::read_to_string(self.root.join(rel)).map_err(|e| format!("{}: {e}", self.path(rel)))
    }
    fn number(&self, rel: &str) -> Reading<u64> {
        let [n] = self.numbers::<1>(rel)?;
        Ok(n)
    }
    fn numbers<const K: usize>(&self, rel: &str) -> Reading<[u64; K]> {
        let t = self.text(rel)?;
        let v: Vec<u64> = t
            .split_whitespace()
            .map(|w| w.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                format!(
                    "{}: expected {K} number(s), got `{}`",
                    self.path(rel),
                    t.trim()
                )
            })?;
        <[u64; K]>::try_from(v).map_err(|_| {
            format!(
                "{}: expected {K} number(s), got `{}`",
                self.path(rel),
                t.trim()
            )
        })
    }
}

/// `MemTotal:       24684084 kB` → bytes.
fn meminfo(text: &str, key: &str) -> Reading<u64> {
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(key))
        .ok_or_else(|| format!("meminfo: no {key}"))?;
    let mut words = line
        .split(':')
        .nth(1)
        .unwrap_or_default()
        .split_whitespace();
    let n: u64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("meminfo: bad {key} line `{line}`"))?;
    Ok(match words.next() {
        Some("kB") => n.saturating_mul(1024),
        _ => n,
    })
}

/// `Max open files            20000                20000                files`.
fn limit_line(text: &str, label: &str) -> Reading<Limit> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .ok_or_else(|| format!("limits: no `{label}` line"))?;
    let mut w = rest.split_whitespace();
    let parse = |x: Option<&str>| -> Reading<u64> {
        match x {
            Some("unlimited") => Ok(u64::MAX),
            Some(v) => v
                .parse()
                .map_err(|_| format!("limits: bad `{label}` value `{v}`")),
            None => Err(format!("limits: `{label}` line is short")),
        }
    };
    Ok(Limit {
        soft: parse(w.next())?,
        hard: parse(w.next())?,
    })
}

fn parse_kernel(text: &str) -> Reading<Kernel> {
    let release = text.trim().to_string();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok());
    let minor = parts.next().and_then(|p| p.parse().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => Ok(Kernel {
            major,
            minor,
            release,
        }),
        _ => Err(format!("osrelease: cannot read a version from `{release}`")),
    }
}

/// Ask the kernel for a tiny io_uring and close it again: this is what tells a
/// seccomp profile or `kernel.io_uring_disabled` apart from a kernel that has it.
#[cfg(target_os = "linux")]
pub fn probe_io_uring() -> Result<(), String> {
    // struct io_uring_params is 120 bytes of u32/u64 fields; zeroed means defaults.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes `params` (120 bytes, 8-aligned) only.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => "io_uring_setup: ENOSYS (kernel without io_uring)".into(),
            Some(libc::EPERM) => {
                "io_uring_setup: EPERM (kernel.io_uring_disabled, or a seccomp/container policy)"
                    .into()
            }
            Some(libc::ENOMEM) => "io_uring_setup: ENOMEM (locked-memory limit too low)".into(),
            _ => format!("io_uring_setup: {e}"),
        });
    }
    // SAFETY: `fd` is the descriptor the kernel just returned to us.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn probe_io_uring() -> Result<(), String> {
    Err("io_uring exists only on Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max open files            1024                 20000                files     \n\
                 Max locked memory         unlimited            unlimited            bytes     \n";
        assert_eq!(
            limit_line(t, "Max open files"),
            Ok(Limit {
                soft: 1024,
                hard: 20000
            })
        );
        assert_eq!(
            limit_line(t, "Max locked memory"),
            Ok(Limit {
                soft: u64::MAX,
                hard: u64::MAX
            })
        );
        assert!(limit_line(t, "Max processes").is_err());
        assert!(limit_line("Max open files  x 3", "Max open files").is_err());
    }

    #[test]
    fn parses_meminfo_and_kernel() {
        let t = "MemTotal:       24684084 kB\nMemFree: 1 kB\nMemAvailable:   24276124 kB\n";
        assert_eq!(meminfo(t, "MemTotal"), Ok(24684084 * 1024));
        assert_eq!(meminfo(t, "MemAvailable"), Ok(24276124 * 1024));
        assert!(meminfo(t, "SwapTotal").is_err());
        let k = parse_kernel("6.18.44-fc-v669\n");
        assert_eq!(k.as_ref().map(|k| (k.major, k.minor)), Ok((6, 18)));
        assert!(k.map(|k| k.at_least(5, 8)).unwrap_or(false));
        assert!(parse_kernel("garbage").is_err());
    }

    #[test]
    fn missing_root_is_an_error() {
        assert!(Host::read(Path::new("/nonexistent/xcord"), "self", false).is_err());
    }
}
