//! What a gateway holding N connections with S shards needs from its host: the
//! formulas and constants that `check` tests against and `profile` writes out, in
//! one place so the two never disagree. Each constant says where it comes from;
//! the open-file arithmetic is the gateway's own (`xcord_common::host`), which
//! derives its default `--max-connections` from it.

use crate::units::round_up;

pub use xcord_common::host::{connections_for_nofile, fds_for, FD_BASE, FD_PER_SHARD};

/// `listen(4096)` on each shard's socket (`src/node.rs`); the kernel caps it at
/// `net.core.somaxconn`, so a larger somaxconn buys nothing.
pub const LISTEN_BACKLOG: u64 = 4096;
/// io memory each glommio executor registers with io_uring (`src/node.rs`): pinned,
/// charged against RLIMIT_MEMLOCK.
pub const IO_MEMORY_PER_SHARD: u64 = 256 * 1024;
/// Allowance for the rings themselves, which kernels before 5.12 also charge to
/// RLIMIT_MEMLOCK (three rings per executor, 128 entries each).
pub const RING_MEMLOCK_PER_SHARD: u64 = 64 * 1024;
/// The memlock floor this workplace gives every process (and what we recommend at least).
pub const MEMLOCK_FLOOR: u64 = 8 << 20;
/// Page size assumed for `net.ipv4.tcp_mem` (pages): 4 KiB, as on x86-64.
pub const PAGE: u64 = 4096;
/// Kernel socket memory assumed per connection on average: a fan-out socket is
/// mostly idle, with a few small frames in flight (struct sock, file, epoll/io_uring
/// bookkeeping and the queued skbs). Used for tcp_mem and the memory estimate.
pub const KERNEL_BYTES_PER_CONN: u64 = 4096;
/// Gateway (user-space) memory assumed per connection when no measurement is given:
/// tungstenite context, connection state, subscription entries, small buffers.
pub const USER_BYTES_PER_CONN: u64 = 12 * 1024;
/// Fixed gateway memory assumed when not measured: binary, allocator, metrics.
pub const BASE_RSS: u64 = 64 << 20;
/// `--replay-buffer-bytes` default, per shard (SPEC §8).
pub const REPLAY_PER_SHARD: u64 = 8 << 20;
/// Share of RAM left for the kernel, page cache and bursts (slow consumers can
/// each hold up to `--send-queue-bytes` before they are closed 4010).
pub const MEM_RESERVE: f64 = 0.25;
/// `fs.nr_open`'s kernel default: LimitNOFILE can reach it with no sysctl change.
pub const NR_OPEN_DEFAULT: u64 = 1 << 20;
/// Above this many connections the kernel's default netdev backlog (1000) is small.
pub const NETDEV_BUSY_CONNECTIONS: u64 = 10_000;
pub const NETDEV_RECOMMENDED: u64 = 16_384;
/// Default (middle) tcp_rmem/tcp_wmem we recommend: clients send small commands,
/// and the gateway bounds what it queues per connection in user space.
pub const SOCKET_BUFFER_DEFAULT: u64 = 16_384;

/// The `LimitNOFILE` / `nofile` we recommend: the need plus 25%, in steps of 64 Ki,
/// at least 65,536 (fds cost nothing until used; running out costs connections).
pub fn recommended_nofile(n: u64, s: u64) -> u64 {
    let need = fds_for(n, s);
    round_up(need.saturating_add(need / 4), 65_536).max(65_536)
}

/// `fs.nr_open` we recommend: never below the kernel default, and enough for the
/// recommended `nofile`.
pub fn recommended_nr_open(n: u64, s: u64) -> u64 {
    recommended_nofile(n, s).max(NR_OPEN_DEFAULT)
}

/// System-wide descriptors: the gateway's, doubled when a load generator runs on
/// the same host (it holds the other end of every connection).
pub fn file_max(n: u64, s: u64, with_loadgen: bool) -> u64 {
    let one = fds_for(n, s);
    if with_loadgen {
        one.saturating_add(fds_for(n, 0))
    } else {
        one
    }
}

/// Room for the rest of the host on top of the gateway's descriptors.
pub const FILE_MAX_MARGIN: u64 = 65_536;

/// `fs.file-max` we recommend: twice the recommended nofile, at least 2 Mi.
pub fn recommended_file_max(n: u64, s: u64) -> u64 {
    recommended_nofile(n, s).saturating_mul(2).max(2 << 20)
}

/// Locked memory the gateway needs with `s` shards.
pub fn memlock(s: u64) -> u64 {
    s.saturating_mul(IO_MEMORY_PER_SHARD + RING_MEMLOCK_PER_SHARD)
}

/// `LimitMEMLOCK` we recommend: twice the need in MiB steps, at least 8 MiB.
pub fn recommended_memlock(s: u64) -> u64 {
    round_up(memlock(s).saturating_mul(2), 1 << 20).max(MEMLOCK_FLOOR)
}

/// tcp_mem pages that `n` connections hold at `KERNEL_BYTES_PER_CONN` each.
pub fn tcp_mem_pages(n: u64) -> u64 {
    n.saturating_mul(KERNEL_BYTES_PER_CONN).div_ceil(PAGE)
}

/// `net.ipv4.tcp_mem` (low, pressure, high) we recommend: pressure at twice the
/// average need, high at three times, never below typical defaults of a 16 GiB host.
pub fn recommended_tcp_mem(n: u64) -> [u64; 3] {
    let p = tcp_mem_pages(n);
    [
        p.max(196_608),
        p.saturating_mul(2).max(262_144),
        p.saturating_mul(3).max(393_216),
    ]
}

/// `net.core.netdev_max_backlog` that `n` connections want.
pub fn netdev_backlog(n: u64) -> u64 {
    if n >= NETDEV_BUSY_CONNECTIONS {
        NETDEV_RECOMMENDED
    } else {
        1000
    }
}

/// `net.ipv4.tcp_max_syn_backlog` we recommend (twice the accept backlog).
pub const SYN_BACKLOG_RECOMMENDED: u64 = 2 * LISTEN_BACKLOG;

/// Gateway memory for `n` connections on `s` shards at `per_conn` bytes each.
pub fn memory(n: u64, s: u64, per_conn: u64) -> u64 {
    BASE_RSS
        .saturating_add(REPLAY_PER_SHARD.saturating_mul(s))
        .saturating_add(n.saturating_mul(per_conn))
}

/// Connections that fit in `mem_total` after the reserve, at `per_conn` bytes each.
pub fn connections_for_memory(mem_total: u64, s: u64, per_conn: u64) -> u64 {
    let usable = (mem_total as f64 * (1.0 - MEM_RESERVE)) as u64;
    let fixed = BASE_RSS.saturating_add(REPLAY_PER_SHARD.saturating_mul(s));
    usable.saturating_sub(fixed) / per_conn.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_arithmetic_matches_the_gateway() {
        // The gateway: max_connections = nofile − 64 − 8 × shards.
        assert_eq!(connections_for_nofile(20_000, 2), 19_920);
        assert_eq!(fds_for(19_920, 2), 20_000);
        assert_eq!(fds_for(1_000_000, 15), 1_000_184);
        assert_eq!(connections_for_nofile(10, 2), 0);
    }

    #[test]
    fn recommendations() {
        // 1,000,184 × 1.25 = 1,250,230 → next 64 Ki step: 20 × 65,536 = 1,310,720.
        assert_eq!(recommended_nofile(1_000_000, 15), 1_310_720);
        assert_eq!(recommended_nr_open(1_000_000, 15), 1_310_720);
        assert_eq!(recommended_nofile(1_000, 2), 65_536);
        assert_eq!(recommended_nr_open(1_000, 2), 1_048_576);
        assert_eq!(recommended_file_max(1_000_000, 15), 2_621_440);
        // 2 shards × 320 KiB = 640 KiB; doubled 1,280 KiB → 2 MiB → floor 8 MiB.
        assert_eq!(memlock(2), 655_360);
        assert_eq!(recommended_memlock(2), 8 << 20);
        // 64 shards × 320 KiB = 20 MiB; doubled 40 MiB.
        assert_eq!(recommended_memlock(64), 40 << 20);
        assert_eq!(tcp_mem_pages(1_000_000), 1_000_000);
        assert_eq!(
            recommended_tcp_mem(1_000_000),
            [1_000_000, 2_000_000, 3_000_000]
        );
        assert_eq!(recommended_tcp_mem(10_000), [196_608, 262_144, 393_216]);
        assert_eq!(netdev_backlog(9_999), 1000);
        assert_eq!(netdev_backlog(10_000), 16_384);
        assert_eq!(file_max(10_000, 2, true), 10_080 + 10_064);
    }

    #[test]
    fn memory_arithmetic() {
        // 64 MiB + 2 × 8 MiB + 10,000 × 16 KiB = 83,886,080 + 163,840,000.
        assert_eq!(memory(10_000, 2, 16_384), 247_726_080);
        // 24 GiB × 0.75 = 19,327,352,832; − 80 MiB = 19,243,466,752; / 16 KiB.
        assert_eq!(connections_for_memory(24 << 30, 2, 16_384), 1_174_528);
    }
}
