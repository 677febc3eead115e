//! The recommended shard count and the reasoning `xcord-tune` prints for it. The
//! rule itself (`--shards auto`, the `--shards` flag and its range) is the
//! gateway's own, from `xcord_common::host`, so the two cannot drift.

use serde::Serialize;

pub use xcord_common::host::{auto_shards, Shards, AUTO_RULE as RULE, MAX_SHARDS};

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
             {}{}.",
            n - 1,
            if n - 1 > shards {
                format!(", capped at {shards} shards")
            } else {
                " shards".to_string()
            }
        )),
    }
    if cores > MAX_SHARDS + 1 {
        reasons.push(format!(
            "The router addresses shards with a {MAX_SHARDS}-bit mask, so the gateway runs \
             at most {MAX_SHARDS} shards: on {cores} cores it starts with {shards} and \
             leaves {} cores to the bus thread, the kernel and the rest of the host.",
            cores - shards
        ));
    }
    reasons.push(
        "The gateway without --shards uses every usable core (at most 64); --shards \
         auto applies this rule. The systemd unit from `xcord-tune profile` passes \
         XCORD_SHARDS explicitly and sets CPUAffinity to the shard cores plus the spare \
         one, so the pinning and the rule agree."
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
        assert_eq!("auto".parse(), Ok(Shards::Auto));
        assert_eq!("AUTO".parse(), Ok(Shards::Auto));
        assert_eq!("4".parse(), Ok(Shards::Count(4)));
        assert!("0".parse::<Shards>().is_err());
        assert!("65".parse::<Shards>().is_err());
        assert!("x".parse::<Shards>().is_err());
        assert_eq!(Shards::Auto.resolve(16), 15);
        assert_eq!(Shards::Count(4).resolve(16), 4);
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
