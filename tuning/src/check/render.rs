//! The human report of `check`: the table (setting, value, need, status, fix),
//! the reason behind each row, what the host holds as configured, and the verdict.

use super::{Report, Status};
use crate::needs;
use crate::units::{bytes, int};

/// The human table, the "why" notes and the summary.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "xcord-tune check: {} connections, {} shard{} ({})\n\n",
        int(r.target_connections),
        r.shards,
        if r.shards == 1 { "" } else { "s" },
        r.shards_source
    ));
    let head = ["SETTING", "VALUE", "NEEDED", "STATUS", "FIX"];
    let cells: Vec<[String; 5]> = r
        .rows
        .iter()
        .map(|x| {
            [
                x.setting.clone(),
                x.value.clone(),
                x.needed.clone(),
                x.status.label().to_string(),
                x.fix.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut w = head.map(|h| h.len());
    for c in &cells {
        for i in 0..4 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |c: [&str; 5]| -> String {
        let mut s = String::new();
        for i in 0..4 {
            s.push_str(c[i]);
            s.push_str(&" ".repeat(w[i] - c[i].chars().count() + 2));
        }
        s.push_str(c[4]);
        s.push('\n');
        s
    };
    o.push_str(&line(head));
    for c in &cells {
        o.push_str(&line([&c[0], &c[1], &c[2], &c[3], &c[4]]));
    }
    o.push_str("\nWhy:\n");
    for x in &r.rows {
        o.push_str(&format!(
            "  {} [{}]: {}\n",
            x.setting,
            x.status.label(),
            x.why
        ));
    }
    o.push_str("\nAs configured this host holds:\n");
    let show = |v: Option<u64>| v.map(int).unwrap_or_else(|| "unknown".into());
    o.push_str(&format!(
        "  by fds     {} connections  (hard nofile - 64 - 8 x {} shards)\n",
        show(r.holds.by_fds),
        r.shards
    ));
    o.push_str(&format!(
        "  by memory  {} connections  (75% of MemTotal, {} per connection: {})\n",
        show(r.holds.by_memory),
        bytes(r.bytes_per_connection),
        r.bytes_per_connection_source
    ));
    o.push_str(&format!(
        "  by tcp_mem {} connections  (tcp_mem pressure at {} per connection)\n",
        show(r.holds.by_tcp_mem),
        bytes(needs::KERNEL_BYTES_PER_CONN)
    ));
    if let (Some(c), Some(b)) = (r.holds.connections, r.holds.binding) {
        o.push_str(&format!("  => about {} connections, bound by {b}; CPU (deliveries/s) needs a measurement: `xcord-tune capacity --from RESULT.json`\n", int(c)));
    }
    o.push_str(&format!(
        "\nShards: {} ({}). Rule: {}.\n",
        r.shards, r.shards_source, r.shard_rule
    ));
    for n in &r.notes {
        o.push_str(&format!("Note: {n}\n"));
    }
    let fails = r.rows.iter().filter(|x| x.status == Status::Fail).count();
    let warns = r.rows.iter().filter(|x| x.status == Status::Warn).count();
    o.push_str(&format!(
        "\nResult: {} ({fails} FAIL, {warns} WARN)\n",
        r.status.label()
    ));
    o
}
