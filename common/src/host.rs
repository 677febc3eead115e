//! Host sizing rules that both the gateway (at start) and `xcord-tune` (when it
//! plans a host) apply: how many shards `--shards auto` picks, the largest shard
//! count, and how many connections an open-file limit leaves room for.

/// The largest shard count: the router addresses shards with a 64-bit mask.
pub const MAX_SHARDS: usize = 64;

/// File descriptors the node keeps whatever the shard count: the admin listener and
/// its threads, Redis links, stdio, the signal pipe.
pub const FD_BASE: u64 = 64;
/// File descriptors per shard: its SO_REUSEPORT listener, io_uring rings, eventfds,
/// timers.
pub const FD_PER_SHARD: u64 = 8;

/// A `--shards` value: a count, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shards {
    Auto,
    Count(usize),
}

impl std::str::FromStr for Shards {
    type Err = String;
    fn from_str(s: &str) -> Result<Shards, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Shards::Auto);
        }
        s.parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_SHARDS).contains(n))
            .map(Shards::Count)
            .ok_or_else(|| format!("expected a number from 1 to {MAX_SHARDS} or `auto`, got `{s}`"))
    }
}

impl Shards {
    /// The shard count on a host with `cores` usable cores.
    pub fn resolve(self, cores: usize) -> usize {
        match self {
            Shards::Auto => auto_shards(cores),
            Shards::Count(n) => n,
        }
    }
}

/// The rule in one line, as `xcord-tune` prints it.
pub const AUTO_RULE: &str =
    "1 core -> 1 shard; 2-3 cores -> one shard per core; N >= 4 cores -> N - 1 shards (at most 64)";

/// `--shards auto`: every usable core, less one for the bus thread and the kernel's
/// network work once there are enough cores that one shard fewer costs little;
/// never more than [`MAX_SHARDS`].
pub fn auto_shards(cores: usize) -> usize {
    let n = match cores {
        0 | 1 => 1,
        2..=3 => cores,
        n => n - 1,
    };
    n.min(MAX_SHARDS)
}

/// The shard count when `--shards` is not given: one per usable core, at most
/// [`MAX_SHARDS`] (a host with more cores still starts).
pub fn default_shards(cores: usize) -> usize {
    cores.clamp(1, MAX_SHARDS)
}

/// The connections an open-file limit of `nofile` leaves room for with `shards`
/// shards (the default `--max-connections`).
pub fn connections_for_nofile(nofile: u64, shards: u64) -> u64 {
    nofile.saturating_sub(FD_BASE + FD_PER_SHARD.saturating_mul(shards))
}

/// The file descriptors `n` connections need with `shards` shards.
pub fn fds_for(n: u64, shards: u64) -> u64 {
    n.saturating_add(FD_BASE)
        .saturating_add(FD_PER_SHARD.saturating_mul(shards))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_rules() {
        assert_eq!(auto_shards(1), 1);
        assert_eq!(auto_shards(2), 2);
        assert_eq!(auto_shards(8), 7);
        assert_eq!(auto_shards(256), 64);
        assert_eq!(default_shards(0), 1);
        assert_eq!(default_shards(96), 64);
        assert_eq!("auto".parse::<Shards>(), Ok(Shards::Auto));
        assert_eq!("64".parse::<Shards>(), Ok(Shards::Count(64)));
        assert!("65".parse::<Shards>().is_err());
        assert!("0".parse::<Shards>().is_err());
    }

    #[test]
    fn fd_arithmetic() {
        assert_eq!(connections_for_nofile(20_000, 2), 19_920);
        assert_eq!(fds_for(19_920, 2), 20_000);
    }
}
