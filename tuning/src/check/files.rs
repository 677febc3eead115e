//! The open-file rows: the process's hard and soft `nofile`, the kernel's
//! `fs.nr_open` ceiling, and the system-wide `fs.file-max`. The gateway needs one
//! descriptor per connection plus its fixed and per-shard ones
//! (`xcord_common::host`), and derives its default `--max-connections` from the
//! hard limit.

use super::{threshold, unknown, Options, Row, Status, LIMITS_FILE, SYSCTL_FILE, UNIT_FILE};
use crate::host::Host;
use crate::needs;
use crate::units::{int, limit};

/// `nofile` (hard, soft) and `fs.nr_open`.
pub(super) fn nofile(host: &Host, o: &Options, s: u64) -> Vec<Row> {
    let n = o.target;
    let fd_need = needs::fds_for(n, s);
    let rec_nofile = needs::recommended_nofile(n, s);
    let mut rows = Vec::new();
    let nofile_fix_hard = format!(
        "{UNIT_FILE}: LimitNOFILE={rec_nofile}  (shell: `xcord hard nofile {rec_nofile}` in {LIMITS_FILE})"
    );
    let nofile_fix_soft = format!(
        "{UNIT_FILE}: LimitNOFILE={rec_nofile}  (shell: `xcord soft nofile {rec_nofile}` in {LIMITS_FILE})"
    );
    match &host.nofile {
        Err(e) => {
            rows.push(unknown(
                "nofile_hard",
                "ulimit -n (hard)",
                format!(">= {}", int(fd_need)),
                e,
                "",
            ));
            rows.push(unknown(
                "nofile_soft",
                "ulimit -n (soft)",
                format!(">= {}", int(fd_need)),
                e,
                "",
            ));
        }
        Ok(l) => {
            let hard_ok = l.hard >= fd_need;
            rows.push(Row {
                key: "nofile_hard",
                setting: "ulimit -n (hard)".into(),
                value: limit(l.hard),
                needed: format!(">= {}", int(fd_need)),
                status: if hard_ok { Status::Pass } else { Status::Fail },
                fix: (!hard_ok).then(|| nofile_fix_hard.clone()),
                why: format!(
                    "One fd per connection + {} + {} per shard: N + 64 + 8 x {s}. The gateway raises its soft limit to this hard limit and sets --max-connections = nofile - 64 - 8 x shards = {} here.",
                    needs::FD_BASE,
                    needs::FD_PER_SHARD,
                    int(needs::connections_for_nofile(l.hard, s))
                ),
            });
            let soft_ok = l.soft >= fd_need;
            rows.push(Row {
                key: "nofile_soft",
                setting: "ulimit -n (soft)".into(),
                value: limit(l.soft),
                needed: format!(">= {}", int(fd_need)),
                status: if soft_ok { Status::Pass } else { Status::Warn },
                fix: (!soft_ok).then(|| nofile_fix_soft.clone()),
                why: "The gateway raises soft to hard at start, so a low soft limit alone does not stop it; xcord-loadtest and other tools on the host may not.".into(),
            });
        }
    }
    rows.push(threshold(
        "fs.nr_open",
        "fs.nr_open",
        &host.nr_open,
        fd_need,
        Status::Fail,
        format!(
            "{SYSCTL_FILE}: fs.nr_open = {}",
            needs::recommended_nr_open(n, s)
        ),
        "The kernel's ceiling for any process's nofile: LimitNOFILE above it fails to apply."
            .into(),
    ));
    rows
}

/// `fs.file-max`: the gateway's descriptors (and a local load generator's) plus
/// room for the rest of the host.
pub(super) fn file_max(host: &Host, o: &Options, s: u64) -> Row {
    let n = o.target;
    let fm_need = needs::file_max(n, s, o.with_loadgen);
    match &host.file_max {
        Err(e) => unknown(
            "fs.file-max",
            "fs.file-max",
            format!(">= {}", int(fm_need)),
            e,
            "",
        ),
        Ok(v) => {
            let status = if *v < fm_need {
                Status::Fail
            } else if *v < fm_need.saturating_add(needs::FILE_MAX_MARGIN) {
                Status::Warn
            } else {
                Status::Pass
            };
            Row {
                key: "fs.file-max",
                setting: "fs.file-max".into(),
                value: v.to_string(),
                needed: format!(
                    ">= {} + {} for the rest",
                    int(fm_need),
                    int(needs::FILE_MAX_MARGIN)
                ),
                status,
                fix: (status != Status::Pass).then(|| {
                    format!(
                        "{SYSCTL_FILE}: fs.file-max = {}",
                        needs::recommended_file_max(n, s)
                    )
                }),
                why: if o.with_loadgen {
                    "System-wide open files: the gateway's plus the load generator's (it holds the other end of every connection), plus the rest of the host.".into()
                } else {
                    "System-wide open files: the gateway's plus the rest of the host.".into()
                },
            }
        }
    }
}
