//! The recommended shard count: the same rule as `xcord-gateway --shards auto`
//! (`src/config.rs::auto_shards`), with the reasoning `xcord-tune` prints.

use serde::Serialize;
use std::str::FromStr;

/// The rule in one line, as printed by `check` and `shards`.
pub const RULE: &str =
    "1 core -> 1 shard; 2-3 cores -> one shard per core; N >= 4 cores -> N - 1 shards";

/// `xcord-gateway --shards auto` on a host with `cores` usable cores.
pub fn auto_shards(cores: usize) -> usize {
    match cores {
        0 | 1 => 1,
        2..=3 => cores,
        n => n - 1,
    }
}

/// A `--shards` value: `auto` or a count from 1 to 64 (the gateway's range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardsArg {
    Auto,
    Count(usize),
}

impl FromStr for ShardsArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ShardsArg::Auto);
        }
        s.parse::<usize>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .map(ShardsArg::Count)
            .ok_or_else(|| format!("expected a number from 1 to 64 or `auto`, got `{s}`"))
    }
}

impl ShardsArg {
    /// The shard count on a host with `cores` usable cores.
    pub fn resolve(self, cores: usize) -> usize {
        match self {
            ShardsArg::Auto => auto_shards(cores),
            ShardsArg::Count(n) => n,
        }
    }
}

/// The choice for one host, with the reasons behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub cores: usize,
    pub shards: usize,
    pub rule: &'static str,
    pub spare_cores: usize,
    pub reasons: Vec<String>,
}

/// Explain `--shards auto` on a host with `cores` usable cores.
pub fn explain(cores: usize) -> Choice {
    let shards = auto_shards(cores);
    let mut reasons = vec![
        "Each shard is one glommio (io_uring) executor pinned to one core; it accepts, \
         reads and writes its own connections, so fan-out capacity grows with shards."
            .to_string(),
        "Besides the shards the gateway runs one bus thread, xcord-bus (Redis PSUBSCRIBE \
         or the in-process bus: parses each event once, stamps its seq, pushes it into \
         the shard inboxes), with --redis a command thread, xcord-redis, and the kernel \
         does the TCP work (softirq: ACKs, retransmits, NIC interrupts) on some core. \
         None of these is pinned."
            .to_string(),
    ];
    match cores {
        0 | 1 => reasons.push(
            "With one core there is no choice: 1 shard; the bus thread and the kernel \
             share that core with it."
                .to_string(),
        ),
        2..=3 => reasons.push(format!(
            "With {cores} cores, leaving one out would cost 1/{cores} of the fan-out \
             capacity, more than the bus thread and the network softirqs take at this \
             size: all {cores} cores get a shard and the bus thread shares them."
        )),
        n => reasons.push(format!(
            "With {n} cores, one core out costs at most 1/{n} of the shard capacity and \
             gives the bus thread (on the path of every event: if it lags, Redis buffers \
             grow and shard inboxes back up) and the kernel's network work a core that no \
             pinned executor competes for, which keeps delivery latency steady: {n} - 1 = \
             {shards} shards."
        )),
    }
    reasons.push(
        "The gateway without --shards uses every usable core; --shards auto applies this \
         rule. The systemd unit from `xcord-tune profile` passes XCORD_SHARDS explicitly \
         and sets CPUAffinity to the shard cores plus the spare one, so the pinning and \
         the rule agree."
            .to_string(),
    );
    Choice {
        cores,
        shards,
        rule: RULE,
        spare_cores: cores.saturating_sub(shards),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_rule_as_the_gateway() {
        assert_eq!(auto_shards(0), 1);
        assert_eq!(auto_shards(1), 1);
        assert_eq!(auto_shards(2), 2);
        assert_eq!(auto_shards(3), 3);
        assert_eq!(auto_shards(4), 3);
        assert_eq!(auto_shards(8), 7);
        assert_eq!(auto_shards(64), 63);
    }

    #[test]
    fn parses_the_flag() {
        assert_eq!("auto".parse(), Ok(ShardsArg::Auto));
        assert_eq!("AUTO".parse(), Ok(ShardsArg::Auto));
        assert_eq!("4".parse(), Ok(ShardsArg::Count(4)));
        assert!("0".parse::<ShardsArg>().is_err());
        assert!("65".parse::<ShardsArg>().is_err());
        assert!("x".parse::<ShardsArg>().is_err());
        assert_eq!(ShardsArg::Auto.resolve(16), 15);
        assert_eq!(ShardsArg::Count(4).resolve(16), 4);
    }

    #[test]
    fn explains() {
        let c = explain(8);
        assert_eq!(c.shards, 7);
        assert_eq!(c.spare_cores, 1);
        assert!(c.reasons.iter().any(|r| r.contains("8 - 1 = 7")));
        assert_eq!(explain(2).spare_cores, 0);
    }
}
