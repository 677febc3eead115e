//! The rows of what the shards run on: locked memory for each executor's io_uring
//! buffers and rings, and io_uring itself (kernel version, the
//! `io_uring_disabled` sysctl, and a live probe when one was made).

use super::{unknown, Row, Status, LIMITS_FILE, SYSCTL_FILE, UNIT_FILE};
use crate::host::Host;
use crate::needs;
use crate::units::bytes;

/// `memlock` (soft): a shard that cannot lock its io memory does not start.
pub(super) fn memlock(host: &Host, s: u64) -> Row {
    let ml_need = needs::memlock(s);
    let ml_rec = needs::recommended_memlock(s);
    match &host.memlock {
        Err(e) => unknown(
            "memlock",
            "ulimit -l (memlock, soft)",
            format!(">= {}", bytes(ml_need)),
            e,
            "",
        ),
        Ok(l) => {
            let ok = l.soft >= ml_need;
            Row {
                key: "memlock",
                setting: "ulimit -l (memlock, soft)".into(),
                value: format!("{} (hard {})", bytes(l.soft), bytes(l.hard)),
                needed: format!(">= {} ({s} x {})", bytes(ml_need), bytes(needs::IO_MEMORY_PER_SHARD + needs::RING_MEMLOCK_PER_SHARD)),
                status: if ok { Status::Pass } else { Status::Fail },
                fix: (!ok).then(|| format!(
                    "{UNIT_FILE}: LimitMEMLOCK={}M  (shell: `xcord soft memlock {}` and `xcord hard memlock {}` (KiB) in {LIMITS_FILE})",
                    ml_rec >> 20, ml_rec >> 10, ml_rec >> 10
                )),
                why: format!(
                    "Each shard registers {} of io memory with io_uring (pinned pages) plus its rings on kernels before 5.12; a shard that cannot lock it does not start. io_uring charges the pages to the user, so one gateway per user.",
                    bytes(needs::IO_MEMORY_PER_SHARD)
                ),
            }
        }
    }
}

/// io_uring: no io_uring, no gateway.
pub(super) fn io_uring(host: &Host) -> Row {
    let mut status = Status::Pass;
    let mut value = Vec::new();
    let mut fix = None;
    let mut why = vec!["Every shard is a glommio executor on io_uring: no io_uring, no gateway (kernel >= 5.8 for the operations glommio uses).".to_string()];
    match &host.kernel {
        Ok(k) => {
            value.push(format!("kernel {}", k.release));
            if !k.at_least(5, 8) {
                status = Status::Fail;
                fix = Some("upgrade the kernel to 5.8 or later (5.15+ recommended)".to_string());
            }
        }
        Err(e) => {
            value.push("kernel unknown".into());
            status = status.max(Status::Warn);
            why.push(format!("Cannot read the kernel release: {e}."));
        }
    }
    match &host.io_uring_disabled {
        Ok(None) => {}
        Ok(Some(0)) => value.push("io_uring_disabled=0".into()),
        Ok(Some(1)) => {
            value.push("io_uring_disabled=1".into());
            status = status.max(Status::Warn);
            fix.get_or_insert_with(|| format!("{SYSCTL_FILE}: kernel.io_uring_disabled = 0  (or run the gateway in group kernel.io_uring_group)"));
            why.push("io_uring_disabled=1 allows io_uring only to root and the group in kernel.io_uring_group.".into());
        }
        Ok(Some(v)) => {
            value.push(format!("io_uring_disabled={v}"));
            status = Status::Fail;
            fix.get_or_insert_with(|| format!("{SYSCTL_FILE}: kernel.io_uring_disabled = 0"));
            why.push("io_uring_disabled=2 forbids io_uring to everyone.".into());
        }
        Err(e) => {
            value.push("io_uring_disabled unreadable".into());
            status = status.max(Status::Warn);
            why.push(format!("Cannot read kernel.io_uring_disabled: {e}."));
        }
    }
    match &host.io_uring_probe {
        None => {}
        Some(Ok(())) => value.push("probe ok".into()),
        Some(Err(e)) => {
            value.push("probe failed".into());
            status = Status::Fail;
            fix.get_or_insert_with(|| "allow io_uring: kernel.io_uring_disabled = 0, and a seccomp profile that permits io_uring_setup/io_uring_enter/io_uring_register".to_string());
            why.push(format!("A real io_uring_setup failed: {e}."));
        }
    }
    Row {
        key: "io_uring",
        setting: "io_uring".into(),
        value: value.join(", "),
        needed: "kernel >= 5.8, enabled".into(),
        status,
        fix,
        why: why.join(" "),
    }
}
