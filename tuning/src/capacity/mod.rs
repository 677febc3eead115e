//! `xcord-tune capacity`: per-host limits from an `xcord-loadtest` result —
//! connections by memory, connections by file descriptors, deliveries/s by CPU —
//! which binds first, the headroom, and how many hosts a target needs. Every
//! assumption is listed and every number is shown with the arithmetic behind it.
//!
//! The model, per host (one gateway per host):
//! - memory:  (RAM × (1 − reserve) − base RSS − shards × replay buffer)
//!   / (measured RSS per connection + kernel socket bytes per connection)
//! - fds:     nofile − 64 − 8 × shards (the gateway's own `--max-connections`)
//! - CPU:     cores × target utilisation × 10⁶ / (measured CPU-seconds per 10⁶ deliveries)
//!
//! A target of N connections and D deliveries/s needs
//! `max(N / L_mem, N / L_fds, D / L_cpu)` hosts, rounded up; the largest ratio is
//! the binding limit.
//!
//! The plan is built in that order: the host ([`host`]), the three limits
//! ([`limits`]), the traffic and the target ([`target`]); [`render`] prints it.
//! A measurement the result lacks never stops the plan: the limit it feeds is
//! listed in `missing` and host counts become lower bounds.

mod host;
mod limits;
mod render;
mod target;

use serde::Serialize;

use crate::result::Measurement;
use crate::shards::Shards;

pub use render::render;

/// What the caller asks, with the defaults of the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub host_cores: Option<u64>,
    pub host_mem_gib: Option<f64>,
    pub target_connections: Option<u64>,
    pub target_events_per_sec: Option<f64>,
    pub fanout: Option<f64>,
    pub shards: Option<Shards>,
    pub nofile: Option<u64>,
    pub mem_reserve: f64,
    pub cpu_target: f64,
    pub kernel_bytes_per_conn: u64,
    pub bytes_per_conn: Option<f64>,
    pub cpu_seconds_per_million: Option<f64>,
    pub replay_buffer_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host_cores: None,
            host_mem_gib: None,
            target_connections: None,
            target_events_per_sec: None,
            fanout: None,
            shards: None,
            nofile: None,
            mem_reserve: 0.25,
            cpu_target: 0.7,
            kernel_bytes_per_conn: crate::needs::KERNEL_BYTES_PER_CONN,
            bytes_per_conn: None,
            cpu_seconds_per_million: None,
            replay_buffer_bytes: crate::needs::REPLAY_PER_SHARD,
        }
    }
}

/// The host being planned for.
#[derive(Debug, Clone, Serialize)]
pub struct HostModel {
    pub cores: u64,
    pub mem_bytes: u64,
    pub shards: u64,
    pub nofile: u64,
}

/// Per-host limits; `None` where the input lacks what the limit needs.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Limits {
    pub connections_by_memory: Option<u64>,
    pub connections_by_fds: u64,
    pub deliveries_per_sec_by_cpu: Option<f64>,
    /// The traffic per connection used to turn the CPU limit into connections.
    pub deliveries_per_sec_per_connection: Option<f64>,
    pub connections_by_cpu: Option<u64>,
    pub bytes_per_connection: Option<f64>,
    pub cpu_seconds_per_million_deliveries: Option<f64>,
}

/// What one host holds, and the limit that stops it.
#[derive(Debug, Clone, Serialize)]
pub struct HostCapacity {
    pub connections: u64,
    pub binding: &'static str,
}

/// Load on one resource at the planned host count.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub resource: &'static str,
    /// Target over one host's limit: the hosts this resource alone needs, unrounded.
    pub ratio: f64,
    pub hosts: u64,
    /// Share of one host's limit used at the planned host count.
    pub utilisation: f64,
    pub headroom: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub connections: u64,
    pub deliveries_per_sec: Option<f64>,
    pub deliveries_source: String,
    pub usage: Vec<Usage>,
    pub hosts: Option<u64>,
    pub binding: Option<&'static str>,
    /// Hosts to survive losing one (its clients reconnect to the others).
    pub hosts_with_spare: Option<u64>,
    pub per_host_connections: Option<f64>,
    pub per_host_deliveries_per_sec: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub host: HostModel,
    pub limits: Limits,
    pub host_capacity: Option<HostCapacity>,
    pub target: Option<Target>,
    pub assumptions: Vec<String>,
    pub warnings: Vec<String>,
    /// Limits that could not be computed, and why. Non-empty means incomplete.
    pub missing: Vec<String>,
    /// The arithmetic, line by line.
    pub arithmetic: Vec<String>,
    /// False when a limit is missing: host counts are then lower bounds.
    pub complete: bool,
}

impl Plan {
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// What the plan says besides its numbers, each list in the order it was found.
#[derive(Debug, Default)]
struct Notes {
    assumptions: Vec<String>,
    warnings: Vec<String>,
    missing: Vec<String>,
    /// The arithmetic, line by line.
    ar: Vec<String>,
}

/// Compute the plan. `Err` for input that makes planning meaningless (no host
/// size, out-of-range options); missing measurements go to `Plan::missing`.
pub fn plan(m: &Measurement, o: &Options) -> Result<Plan, String> {
    check_options(o)?;
    let mut n = Notes::default();
    let host = host::model(m, o, &mut n)?;
    host::cleanliness(m, o, &mut n);
    let mut limits = Limits::default();
    limits::memory(m, o, &host, &mut limits, &mut n);
    limits::fds(&host, &mut limits, &mut n);
    limits::cpu(m, o, &host, &mut limits, &mut n);
    let traffic = target::Traffic::of(m);
    let deliveries = target::deliveries(o, &traffic, &mut n);
    target::cpu_in_connections(o, &traffic, &deliveries, &mut limits, &mut n);
    let host_capacity = target::host_capacity(&limits, &mut n);
    let target = o
        .target_connections
        .map(|c| target::hosts(c, o, &limits, deliveries, &mut n));
    Ok(Plan {
        host,
        limits,
        host_capacity,
        target,
        assumptions: n.assumptions,
        warnings: n.warnings,
        complete: n.missing.is_empty(),
        missing: n.missing,
        arithmetic: n.ar,
    })
}

/// The options no plan can be made with.
fn check_options(o: &Options) -> Result<(), String> {
    if !(0.0..1.0).contains(&o.mem_reserve) {
        return Err(format!(
            "--mem-reserve must be at least 0 and below 1, got {}",
            o.mem_reserve
        ));
    }
    if !(o.cpu_target > 0.0 && o.cpu_target <= 1.0) {
        return Err(format!(
            "--cpu-target must be above 0 and at most 1, got {}",
            o.cpu_target
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture's numbers (tests/fixtures/result-fanout.json), as a Measurement.
    fn fixture() -> Measurement {
        Measurement {
            schema: Some("xcord-loadtest/1".into()),
            scenario: Some("fanout".into()),
            duration_s: Some(30.0),
            host_cores: Some(2.0),
            host_mem_bytes: Some(25_769_803_776.0),
            connections_target: Some(10_000.0),
            established: Some(10_000.0),
            subscribers_per_channel: Some(100.0),
            rate_events_per_sec: Some(200.0),
            gateway_shards: None,
            deliveries_expected: Some(600_000.0),
            deliveries_received: Some(600_000.0),
            missing: Some(0.0),
            duplicated: Some(0.0),
            out_of_order: Some(0.0),
            per_sec_expected: Some(20_000.0),
            per_sec_achieved: Some(20_000.0),
            latency_p99_ms: Some(2.1),
            gateway_measured: true,
            rss_before: Some(12_000_000.0),
            rss_after: Some(52_000_000.0),
            rss_end: None,
            rss_per_connection: Some(4_000.0),
            rss_per_connection_marginal: None,
            cpu_seconds_measure: Some(6.0),
            cpu_seconds_per_million: Some(10.0),
            saturation_deliveries_per_sec: None,
            passed: Some(true),
        }
    }

    #[test]
    fn limits_on_the_test_host() {
        let p = plan(&fixture(), &Options::default()).expect("plan");
        assert_eq!(p.host.cores, 2);
        assert_eq!(p.host.shards, 2);
        assert_eq!(p.host.mem_bytes, 25_769_803_776);
        // usable 25,769,803,776 × 0.75 = 19,327,352,832
        // fixed 12,000,000 + 2 × 8,388,608 = 28,777,216
        // per connection 4,000 + 4,096 = 8,096
        // (19,327,352,832 − 28,777,216) / 8,096 = 2,383,717.3…
        assert_eq!(p.limits.connections_by_memory, Some(2_383_717));
        // 1,048,576 − 64 − 16
        assert_eq!(p.limits.connections_by_fds, 1_048_496);
        // 2 × 0.7 × 10^6 / 10
        assert_eq!(p.limits.deliveries_per_sec_by_cpu, Some(140_000.0));
        // 20,000 deliveries/s over 10,000 connections = 2 each → 70,000 connections
        assert_eq!(p.limits.deliveries_per_sec_per_connection, Some(2.0));
        assert_eq!(p.limits.connections_by_cpu, Some(70_000));
        let h = p.host_capacity.clone().expect("capacity");
        assert_eq!((h.connections, h.binding), (70_000, "cpu"));
        assert!(p.complete());
        assert!(p.target.is_none());
    }

    #[test]
    fn hosts_for_a_target() {
        let o = Options {
            target_connections: Some(2_000_000),
            target_events_per_sec: Some(5_000.0),
            ..Options::default()
        };
        let p = plan(&fixture(), &o).expect("plan");
        let t = p.target.clone().expect("target");
        // 5,000 events/s × 100 subscribers = 500,000 deliveries/s
        assert_eq!(t.deliveries_per_sec, Some(500_000.0));
        let hosts: Vec<(&str, u64)> = t.usage.iter().map(|u| (u.resource, u.hosts)).collect();
        // memory: ceil(2,000,000 / 2,383,717) = 1; fds: ceil(2,000,000 / 1,048,496) = 2;
        // cpu: ceil(500,000 / 140,000) = ceil(3.57) = 4
        assert_eq!(hosts, vec![("memory", 1), ("fds", 2), ("cpu", 4)]);
        assert_eq!(t.hosts, Some(4));
        assert_eq!(t.binding, Some("cpu"));
        assert_eq!(t.hosts_with_spare, Some(5));
        assert_eq!(t.per_host_connections, Some(500_000.0));
        assert_eq!(t.per_host_deliveries_per_sec, Some(125_000.0));
        let cpu = &t.usage[2];
        // 125,000 / 140,000 = 0.892857…
        assert!((cpu.utilisation - 125_000.0 / 140_000.0).abs() < 1e-12);
        assert!((cpu.headroom - (1.0 - 125_000.0 / 140_000.0)).abs() < 1e-12);
        let fds = &t.usage[1];
        assert!((fds.utilisation - 500_000.0 / 1_048_496.0).abs() < 1e-12);
        // The CPU limit in connections now uses the target's 0.25 deliveries/s each.
        assert_eq!(p.limits.deliveries_per_sec_per_connection, Some(0.25));
        assert_eq!(p.limits.connections_by_cpu, Some(560_000));
        assert!(p.complete());
    }

    #[test]
    fn target_without_rate_uses_the_tests_traffic() {
        let o = Options {
            target_connections: Some(2_000_000),
            ..Options::default()
        };
        let p = plan(&fixture(), &o).expect("plan");
        let t = p.target.clone().expect("target");
        // 2,000,000 × 2 deliveries/s = 4,000,000; / 140,000 = 28.57 → 29 hosts.
        assert_eq!(t.deliveries_per_sec, Some(4_000_000.0));
        assert_eq!(t.hosts, Some(29));
        assert_eq!(t.binding, Some("cpu"));
    }

    #[test]
    fn another_host_and_overrides() {
        let o = Options {
            host_cores: Some(16),
            host_mem_gib: Some(64.0),
            nofile: Some(1_310_720),
            cpu_target: 0.5,
            ..Options::default()
        };
        let p = plan(&fixture(), &o).expect("plan");
        assert_eq!(p.host.shards, 15);
        // 64 GiB × 0.75 = 51,539,607,552; fixed 12,000,000 + 15 × 8,388,608 = 137,829,120;
        // (51,539,607,552 − 137,829,120) / 8,096 = 6,349,033.89… → 6,349,033
        assert_eq!(p.limits.connections_by_memory, Some(6_349_033));
        // 1,310,720 − 64 − 120
        assert_eq!(p.limits.connections_by_fds, 1_310_536);
        // 16 × 0.5 × 10^6 / 10 = 800,000
        assert_eq!(p.limits.deliveries_per_sec_by_cpu, Some(800_000.0));
        assert_eq!(p.limits.connections_by_cpu, Some(400_000));
    }

    #[test]
    fn derived_measurements_when_summaries_are_null() {
        let mut m = fixture();
        m.rss_per_connection = None;
        m.cpu_seconds_per_million = None;
        m.per_sec_achieved = None;
        let p = plan(&m, &Options::default()).expect("plan");
        // (52,000,000 − 12,000,000) / 10,000 = 4,000 → same memory limit.
        assert_eq!(p.limits.connections_by_memory, Some(2_383_717));
        // 6 CPU-s / 600,000 deliveries × 10^6 = 10 → same CPU limit.
        let l = p.limits.deliveries_per_sec_by_cpu.unwrap_or_default();
        assert!((l - 140_000.0).abs() < 1e-6, "{l}");
        // 600,000 / 30 s = 20,000 deliveries/s → 2 per connection.
        assert_eq!(p.limits.deliveries_per_sec_per_connection, Some(2.0));
        assert!(p.complete());
    }

    #[test]
    fn no_gateway_measurements_is_incomplete_not_a_panic() {
        let mut m = fixture();
        m.gateway_measured = false;
        m.rss_before = None;
        m.rss_after = None;
        m.rss_per_connection = None;
        m.cpu_seconds_measure = None;
        m.cpu_seconds_per_million = None;
        let o = Options {
            target_connections: Some(100_000),
            ..Options::default()
        };
        let p = plan(&m, &o).expect("plan");
        assert!(!p.complete());
        assert_eq!(p.missing.len(), 2, "{:?}", p.missing);
        assert_eq!(p.limits.connections_by_memory, None);
        assert_eq!(p.limits.deliveries_per_sec_by_cpu, None);
        assert_eq!(p.limits.connections_by_fds, 1_048_496);
        let t = p.target.clone().expect("target");
        assert_eq!(t.hosts, Some(1)); // by fds alone, flagged as "at least"
                                      // With stated figures it completes.
        let o = Options {
            bytes_per_conn: Some(4_000.0),
            cpu_seconds_per_million: Some(10.0),
            ..o
        };
        let p = plan(&m, &o).expect("plan");
        assert!(p.complete(), "{:?}", p.missing);
        // Base RSS is then the 64 MiB assumption: (19,327,352,832 − 67,108,864 − 16,777,216) / 8,096
        assert_eq!(p.limits.connections_by_memory, Some(2_376_910));
    }

    #[test]
    fn bad_options_and_missing_host_are_errors() {
        let m = fixture();
        for o in [
            Options {
                mem_reserve: 1.0,
                ..Options::default()
            },
            Options {
                cpu_target: 0.0,
                ..Options::default()
            },
            Options {
                host_cores: Some(0),
                ..Options::default()
            },
            Options {
                host_mem_gib: Some(-1.0),
                ..Options::default()
            },
        ] {
            assert!(plan(&m, &o).is_err());
        }
        let mut m = fixture();
        m.host_cores = None;
        assert!(plan(&m, &Options::default()).is_err());
        let o = Options {
            host_cores: Some(2),
            ..Options::default()
        };
        assert!(plan(&m, &o).is_ok());
        let mut m = fixture();
        m.host_mem_bytes = None;
        assert!(plan(&m, &Options::default()).is_err());
    }

    #[test]
    fn unclean_runs_warn() {
        let mut m = fixture();
        m.missing = Some(12.0);
        m.passed = Some(false);
        let p = plan(&m, &Options::default()).expect("plan");
        assert!(p.warnings.iter().any(|w| w.contains("not clean")));
    }

    #[test]
    fn events_without_fanout_is_incomplete() {
        let mut m = fixture();
        m.subscribers_per_channel = None;
        m.per_sec_expected = None;
        let o = Options {
            target_connections: Some(10_000),
            target_events_per_sec: Some(100.0),
            ..Options::default()
        };
        let p = plan(&m, &o).expect("plan");
        assert!(p.missing.iter().any(|x| x.contains("--fanout")));
        let o = Options {
            fanout: Some(50.0),
            ..o
        };
        let p = plan(&m, &o).expect("plan");
        assert_eq!(p.target.and_then(|t| t.deliveries_per_sec), Some(5_000.0));
    }
}
