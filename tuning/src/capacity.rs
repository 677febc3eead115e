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

use serde::Serialize;

use crate::result::Measurement;
use crate::shards::Shards;
use crate::units::{bytes, ceil_div, float, int};

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

/// Compute the plan. `Err` for input that makes planning meaningless (no host
/// size, out-of-range options); missing measurements go to `Plan::missing`.
pub fn plan(m: &Measurement, o: &Options) -> Result<Plan, String> {
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
    let mut assumptions = Vec::new();
    let mut warnings = Vec::new();
    let mut missing = Vec::new();
    let mut ar = Vec::new();

    // The host.
    let cores = match (o.host_cores, m.host_cores) {
        (Some(0), _) => return Err("--host-cores must be at least 1".into()),
        (Some(c), _) => c,
        (None, Some(c)) => {
            assumptions.push(format!(
                "Host cores from the result (the test host): {c}; pass --host-cores to plan for another host."
            ));
            c.round().max(1.0) as u64
        }
        (None, None) => {
            return Err(
                "host cores unknown: the result has no host.cores; pass --host-cores C".into(),
            )
        }
    };
    let mem_bytes = match (o.host_mem_gib, m.host_mem_bytes) {
        (Some(g), _) if !(g > 0.0 && g.is_finite()) => {
            return Err(format!("--host-mem must be above 0 GiB, got {g}"))
        }
        (Some(g), _) => (g * (1u64 << 30) as f64) as u64,
        (None, Some(b)) => {
            assumptions.push(format!(
                "Host memory from the result (the test host): {}; pass --host-mem G (GiB) to plan for another host.",
                bytes(b as u64)
            ));
            b as u64
        }
        (None, None) => {
            return Err(
                "host memory unknown: the result has no host.mem_bytes; pass --host-mem G (GiB)"
                    .into(),
            )
        }
    };
    let shards_arg = o.shards.unwrap_or(Shards::Auto);
    let shards = shards_arg.resolve(cores as usize) as u64;
    if o.shards.is_none() {
        assumptions.push(format!(
            "Shards: --shards auto on {cores} cores = {shards} ({}).",
            crate::shards::RULE
        ));
    }
    let nofile = o.nofile.unwrap_or(crate::needs::NR_OPEN_DEFAULT);
    if o.nofile.is_none() {
        assumptions.push(format!(
            "Open files: nofile = {} (the default fs.nr_open, which LimitNOFILE reaches with no sysctl change); pass --nofile for the host's real limit.",
            int(nofile)
        ));
    }
    let host = HostModel {
        cores,
        mem_bytes,
        shards,
        nofile,
    };

    // Cleanliness of the measurement.
    if m.schema.is_none() {
        warnings.push(format!(
            "The result has no `schema` field; read as {}.",
            crate::result::SCHEMA
        ));
    }
    let lost = [m.missing, m.duplicated, m.out_of_order]
        .iter()
        .any(|x| x.is_some_and(|v| v > 0.0));
    if m.passed == Some(false) || lost {
        warnings.push(format!(
            "The run was not clean (passed={}, missing={}, duplicated={}, out_of_order={}): a gateway that dropped work measured cheaper than it is; treat the CPU limit as optimistic.",
            m.passed.map(|b| b.to_string()).unwrap_or_else(|| "null".into()),
            opt(m.missing),
            opt(m.duplicated),
            opt(m.out_of_order)
        ));
    }
    if let (Some(t), Some(e)) = (m.connections_target, m.established) {
        if e < t {
            warnings.push(format!(
                "Only {} of {} connections were established.",
                int(e as u64),
                int(t as u64)
            ));
        }
    }
    if m.duration_s.is_some_and(|d| d < 10.0) {
        warnings.push(format!(
            "The measured phase lasted {} s: CPU figures from short runs are noisy.",
            opt(m.duration_s)
        ));
    }
    if !m.gateway_measured && (o.bytes_per_conn.is_none() || o.cpu_seconds_per_million.is_none()) {
        warnings.push(
            "The result has no gateway measurements (`gateway` is null: run xcord-loadtest with --gateway-pid), so memory and CPU per connection are unknown unless given with --bytes-per-connection and --cpu-seconds-per-million."
                .into(),
        );
    }

    // Limit 1: connections by memory.
    ar.push("Connections by memory".to_string());
    let usable = mem_bytes as f64 * (1.0 - o.mem_reserve);
    ar.push(format!(
        "  usable memory   = {} B x (1 - {} reserve) = {} B",
        int(mem_bytes),
        o.mem_reserve,
        float(usable, 0)
    ));
    assumptions.push(format!(
        "Memory reserve: {:.0}% of RAM stays free for the kernel, page cache and bursts (a slow consumer holds up to --send-queue-bytes before it is closed 4010).",
        o.mem_reserve * 100.0
    ));
    // With the marginal slope measured, the fixed cost is the line's intercept:
    // RSS after connect less the marginal cost of the connections it holds. It
    // includes what the first connections cost once (allocator segments, tables
    // grown by doubling), which RSS before connect does not.
    let settled = m.rss_end.or(m.rss_after);
    let intercept = match (
        o.bytes_per_conn,
        m.rss_per_connection_marginal,
        settled,
        m.established,
    ) {
        (None, Some(mc), Some(a), Some(e)) if mc > 0.0 && e > 0.0 => {
            Some(a - e * mc).filter(|i| m.rss_before.is_none_or(|b| *i >= b))
        }
        _ => None,
    };
    let (base, base_src) = match (intercept, m.rss_before) {
        (Some(i), _) => (
            i,
            "settled RSS at the end of the run less the marginal cost of its connections",
        ),
        (None, Some(b)) => (b, "measured RSS before connect"),
        (None, None) => {
            assumptions.push(format!(
                "Base RSS not measured: assumed {}.",
                bytes(crate::needs::BASE_RSS)
            ));
            (crate::needs::BASE_RSS as f64, "assumed base RSS")
        }
    };
    let replay = shards as f64 * o.replay_buffer_bytes as f64;
    let fixed = base + replay;
    ar.push(format!(
        "  fixed cost      = {} B {base_src} + {shards} shards x {} B replay buffer = {} B",
        float(base, 0),
        int(o.replay_buffer_bytes),
        float(fixed, 0)
    ));
    assumptions.push(format!(
        "Each shard's replay buffer (--replay-buffer-bytes, {}) is counted as full.",
        bytes(o.replay_buffer_bytes)
    ));
    let user_per_conn: Option<(f64, String)> = match (o.bytes_per_conn, m.rss_per_connection) {
        (Some(b), _) => Some((b, "RSS per connection (--bytes-per-connection)".into())),
        (None, _) if m.rss_per_connection_marginal.is_some_and(|b| b > 0.0) => Some((
            m.rss_per_connection_marginal.unwrap_or_default(),
            "RSS per connection (measured: slope over the last 3/4 of the connect phase)".into(),
        )),
        (None, Some(b)) if b > 0.0 => Some((b, "RSS per connection (measured)".into())),
        (None, Some(b)) => {
            warnings.push(format!(
                "gateway.rss_bytes_per_connection is {b}: RSS did not grow with connections; the measurement is unusable."
            ));
            None
        }
        (None, None) => match (m.rss_before, m.rss_after, m.established) {
            (Some(b), Some(a), Some(e)) if e > 0.0 && a > b => Some((
                (a - b) / e,
                format!(
                    "RSS per connection (({} - {}) / {} established)",
                    float(a, 0),
                    float(b, 0),
                    int(e as u64)
                ),
            )),
            _ => None,
        },
    };
    let kernel = o.kernel_bytes_per_conn as f64;
    assumptions.push(format!(
        "Kernel memory per connection (socket, file, queued skbs; not in the gateway's RSS): {}.",
        bytes(o.kernel_bytes_per_conn)
    ));
    let mut limits = Limits::default();
    match user_per_conn {
        Some((u, src)) => {
            let per = u + kernel;
            ar.push(format!(
                "  per connection  = {} B {src} + {} B kernel = {} B",
                float(u, 1),
                int(o.kernel_bytes_per_conn),
                float(per, 1)
            ));
            let l = ((usable - fixed) / per).floor().max(0.0) as u64;
            ar.push(format!(
                "  limit           = ({} - {}) / {} = {} connections",
                float(usable, 0),
                float(fixed, 0),
                float(per, 1),
                int(l)
            ));
            limits.connections_by_memory = Some(l);
            limits.bytes_per_connection = Some(per);
        }
        None => {
            ar.push("  per connection  = unknown".into());
            missing.push("connections by memory: no RSS per connection in the result (gateway.rss_bytes_per_connection, or rss before/after connect with connections.established); pass --bytes-per-connection B".into());
        }
    }

    // Limit 2: connections by fds.
    let by_fds = crate::needs::connections_for_nofile(nofile, shards);
    ar.push("Connections by file descriptors".to_string());
    ar.push(format!(
        "  limit           = {} nofile - {} - {} x {shards} shards = {} connections",
        int(nofile),
        crate::needs::FD_BASE,
        crate::needs::FD_PER_SHARD,
        int(by_fds)
    ));
    limits.connections_by_fds = by_fds;

    // Limit 3: deliveries/s by CPU.
    ar.push("Deliveries per second by CPU".to_string());
    let cost: Option<(f64, String)> = match (o.cpu_seconds_per_million, m.cpu_seconds_per_million) {
        (Some(c), _) => Some((c, "(--cpu-seconds-per-million)".into())),
        (None, Some(c)) if c > 0.0 => Some((c, "(measured)".into())),
        _ => match (m.cpu_seconds_measure, m.deliveries_received) {
            (Some(cpu), Some(r)) if r > 0.0 && cpu > 0.0 => {
                let c = cpu / r * 1e6;
                Some((
                    c,
                    format!(
                        "({} CPU-s / {} deliveries x 10^6)",
                        float(cpu, 3),
                        int(r as u64)
                    ),
                ))
            }
            _ => None,
        },
    };
    assumptions.push(format!(
        "CPU: the gateway may use {:.0}% of all {cores} cores (one gateway per host; the rest absorbs bursts). The measured cost counts every gateway thread (shards and bus), not the load generator, and is taken to be the same per delivery at any shard count.",
        o.cpu_target * 100.0
    ));
    match &cost {
        Some((c, src)) if *c > 0.0 => {
            let l = cores as f64 * o.cpu_target * 1e6 / c;
            ar.push(format!(
                "  cost            = {} CPU-s per 10^6 deliveries {src}",
                float(*c, 3)
            ));
            ar.push(format!(
                "  limit           = {cores} cores x {} x 10^6 / {} = {} deliveries/s",
                o.cpu_target,
                float(*c, 3),
                float(l, 0)
            ));
            limits.deliveries_per_sec_by_cpu = Some(l);
            limits.cpu_seconds_per_million_deliveries = Some(*c);
        }
        _ => {
            ar.push("  cost            = unknown".into());
            missing.push("deliveries/s by CPU: no CPU cost in the result (gateway.cpu_seconds_per_million_deliveries, or gateway.cpu_seconds_measure with deliveries.received); pass --cpu-seconds-per-million S".into());
        }
    }
    if let (Some(sat), Some(tc), Some((c, _))) =
        (m.saturation_deliveries_per_sec, m.host_cores, &cost)
    {
        let model = tc * 1e6 / c;
        ar.push(format!(
            "  cross-check     = ramp saturation measured {} deliveries/s on the {} test cores; the model at 100% of them gives {} (not used above)",
            float(sat, 0),
            float(tc, 0),
            float(model, 0)
        ));
    }

    // Fan-out and traffic per connection.
    let test_fanout = m.subscribers_per_channel.filter(|f| *f > 0.0).or_else(|| {
        match (m.per_sec_expected, m.rate_events_per_sec) {
            (Some(d), Some(r)) if r > 0.0 => Some(d / r),
            _ => None,
        }
    });
    let test_rate = m.per_sec_achieved.filter(|r| *r > 0.0).or_else(|| {
        match (m.deliveries_received, m.duration_s) {
            (Some(r), Some(d)) if d > 0.0 => Some(r / d),
            _ => None,
        }
    });
    let test_per_conn = match (test_rate, m.established) {
        (Some(r), Some(e)) if e > 0.0 => Some((r, e, r / e)),
        _ => None,
    };

    // The target's deliveries.
    let mut target_deliveries: Option<(f64, String)> = None;
    if let Some(r) = o.target_events_per_sec {
        match o.fanout.or(test_fanout) {
            Some(f) => {
                let src = if o.fanout.is_some() {
                    "--fanout"
                } else {
                    "the test's subscribers per channel"
                };
                target_deliveries = Some((
                    r * f,
                    format!(
                        "{} events/s x {} subscribers per event ({src})",
                        float(r, 1),
                        float(f, 1)
                    ),
                ));
                if let (Some(tf), Some(f)) = (test_fanout, o.fanout) {
                    if f < tf {
                        warnings.push(format!(
                            "Target fan-out {} is below the test's {}: per-event work (parse, route) is spread over fewer deliveries, so each delivery costs more than measured.",
                            float(f, 1),
                            float(tf, 1)
                        ));
                    }
                }
                assumptions.push("Every node receives every published event (Redis PSUBSCRIBE events:*), and subscribers are spread evenly over hosts, so each host delivers 1/H of the deliveries.".into());
            }
            None => missing.push("target deliveries: --target-events-per-sec needs a fan-out (subscribers per event): the result has no config.subscribers_per_channel; pass --fanout F".into()),
        }
    } else if let (Some(n), Some((_, _, d))) = (o.target_connections, test_per_conn) {
        target_deliveries = Some((
            n as f64 * d,
            format!(
                "{} connections x {} deliveries/s per connection (the test's traffic)",
                int(n),
                float(d, 3)
            ),
        ));
    }

    // CPU limit in connections, at the target's (or else the test's) traffic.
    let per_conn_traffic = match (&target_deliveries, o.target_connections) {
        (Some((d, _)), Some(n)) if n > 0 => Some((d / n as f64, "the target's")),
        _ => test_per_conn.map(|(_, _, d)| (d, "the test's")),
    };
    if let (Some(l), Some((d, whose))) = (limits.deliveries_per_sec_by_cpu, per_conn_traffic) {
        if d > 0.0 {
            let c = (l / d).floor() as u64;
            if let Some((r, e, _)) = test_per_conn.filter(|_| whose == "the test's") {
                ar.push(format!(
                    "  per connection  = {} deliveries/s / {} connections = {} deliveries/s ({whose} traffic)",
                    float(r, 1),
                    int(e as u64),
                    float(d, 3)
                ));
            } else {
                ar.push(format!(
                    "  per connection  = {} deliveries/s ({whose} traffic)",
                    float(d, 3)
                ));
            }
            ar.push(format!(
                "  as connections  = {} / {} = {} connections",
                float(l, 0),
                float(d, 3),
                int(c)
            ));
            limits.deliveries_per_sec_per_connection = Some(d);
            limits.connections_by_cpu = Some(c);
        }
    }

    // What one host holds.
    let candidates = [
        ("memory", limits.connections_by_memory),
        ("fds", Some(limits.connections_by_fds)),
        ("cpu", limits.connections_by_cpu),
    ];
    let host_capacity = candidates
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .min_by_key(|(_, v)| *v)
        .map(|(k, v)| HostCapacity {
            connections: v,
            binding: k,
        });
    if let Some(h) = &host_capacity {
        ar.push(format!(
            "One host holds   = min({}, {}, {}) = {} connections, bound by {}",
            opt_int(limits.connections_by_memory),
            int(limits.connections_by_fds),
            opt_int(limits.connections_by_cpu),
            int(h.connections),
            h.binding
        ));
    }

    // The target.
    let target = o.target_connections.map(|n| {
        let mut usage = Vec::new();
        ar.push(format!("Target: {} connections", int(n)));
        let mut add = |resource: &'static str, demand: f64, limit: Option<f64>, unit: &str, ar: &mut Vec<String>| {
            if let Some(l) = limit {
                if l > 0.0 {
                    let ratio = demand / l;
                    let hosts = ceil_div(demand, l).max(1);
                    ar.push(format!(
                        "  hosts by {resource:<6} = ceil({} / {} {unit}) = {hosts}",
                        float(demand, 0),
                        float(l, 0)
                    ));
                    usage.push(Usage { resource, ratio, hosts, utilisation: 0.0, headroom: 0.0 });
                } else {
                    ar.push(format!("  hosts by {resource:<6} = impossible: one host's limit is 0"));
                    usage.push(Usage { resource, ratio: f64::INFINITY, hosts: u64::MAX, utilisation: f64::INFINITY, headroom: f64::NEG_INFINITY });
                }
            }
        };
        add("memory", n as f64, limits.connections_by_memory.map(|v| v as f64), "connections", &mut ar);
        add("fds", n as f64, Some(limits.connections_by_fds as f64), "connections", &mut ar);
        if let Some((d, src)) = &target_deliveries {
            ar.push(format!("  deliveries/s    = {src} = {}", float(*d, 0)));
            add("cpu", *d, limits.deliveries_per_sec_by_cpu, "deliveries/s", &mut ar);
        } else if o.target_events_per_sec.is_none() {
            missing.push("hosts by CPU: no traffic for the target: pass --target-events-per-sec R (and --fanout F), or a result with deliveries.per_sec_achieved and connections.established".into());
        }
        let complete = usage.len() == 3;
        let worst = usage
            .iter()
            .max_by(|a, b| a.ratio.partial_cmp(&b.ratio).unwrap_or(std::cmp::Ordering::Equal))
            .map(|u| (u.hosts, u.resource));
        let hosts = worst.map(|(h, _)| h);
        if let Some(h) = hosts.filter(|h| *h != u64::MAX) {
            for u in usage.iter_mut() {
                u.utilisation = u.ratio / h as f64;
                u.headroom = 1.0 - u.utilisation;
            }
        }
        let per_host_connections = hosts.filter(|h| *h != u64::MAX).map(|h| n as f64 / h as f64);
        let per_host_deliveries = match (hosts, &target_deliveries) {
            (Some(h), Some((d, _))) if h != u64::MAX => Some(d / h as f64),
            _ => None,
        };
        if let (Some(h), Some((_, b))) = (hosts, worst) {
            if h != u64::MAX {
                ar.push(format!(
                    "  hosts needed    = {}{h} (bound by {b}{}); {} to survive losing one host",
                    if complete { "" } else { "at least " },
                    if complete { "" } else { "; a limit is unknown" },
                    h + 1
                ));
            }
        }
        Target {
            connections: n,
            deliveries_per_sec: target_deliveries.as_ref().map(|(d, _)| *d),
            deliveries_source: target_deliveries.as_ref().map(|(_, s)| s.clone()).unwrap_or_default(),
            hosts,
            binding: worst.map(|(_, b)| b),
            hosts_with_spare: hosts.map(|h| h.saturating_add(1)),
            usage,
            per_host_connections,
            per_host_deliveries_per_sec: per_host_deliveries,
        }
    });

    Ok(Plan {
        host,
        limits,
        host_capacity,
        target,
        assumptions,
        warnings,
        complete: missing.is_empty(),
        missing,
        arithmetic: ar,
    })
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| float(x, if x.fract() == 0.0 { 0 } else { 2 }))
        .unwrap_or_else(|| "null".into())
}

fn known(v: Option<f64>) -> String {
    match v {
        Some(_) => opt(v),
        None => "unknown".into(),
    }
}

fn opt_int(v: Option<u64>) -> String {
    v.map(int).unwrap_or_else(|| "unknown".into())
}

/// The human report.
pub fn render(p: &Plan, m: &Measurement) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "xcord-tune capacity: host of {} cores, {}, {} shards, nofile {}\n",
        p.host.cores,
        bytes(p.host.mem_bytes),
        p.host.shards,
        int(p.host.nofile)
    ));
    o.push_str(&format!(
        "from: scenario {}, {} connections, {} deliveries/s, p99 {} ms, passed {}\n\n",
        m.scenario.clone().unwrap_or_else(|| "unknown".into()),
        known(m.established),
        known(m.per_sec_achieved),
        known(m.latency_p99_ms),
        m.passed
            .map(|b| b.to_string())
            .unwrap_or_else(|| "unknown".into())
    ));
    o.push_str("Per-host limits\n");
    o.push_str(&format!(
        "  connections by memory  {}\n",
        opt_int(p.limits.connections_by_memory)
    ));
    o.push_str(&format!(
        "  connections by fds     {}\n",
        int(p.limits.connections_by_fds)
    ));
    o.push_str(&format!(
        "  deliveries/s by CPU    {}{}\n",
        p.limits
            .deliveries_per_sec_by_cpu
            .map(|v| float(v, 0))
            .unwrap_or_else(|| "unknown".into()),
        match (
            p.limits.connections_by_cpu,
            p.limits.deliveries_per_sec_per_connection
        ) {
            (Some(c), Some(d)) => format!(
                "  (= {} connections at {} deliveries/s each)",
                int(c),
                float(d, 3)
            ),
            _ => String::new(),
        }
    ));
    if let Some(h) = &p.host_capacity {
        o.push_str(&format!(
            "  binds first: {} -> one host holds {} connections\n",
            h.binding,
            int(h.connections)
        ));
    }
    if let Some(t) = &p.target {
        o.push_str(&format!(
            "\nTarget: {} connections{}\n",
            int(t.connections),
            t.deliveries_per_sec
                .map(|d| format!(", {} deliveries/s", float(d, 0)))
                .unwrap_or_default()
        ));
        match (t.hosts, t.binding) {
            (Some(h), Some(b)) if h != u64::MAX => {
                o.push_str(&format!(
                    "  hosts needed: {}{h} (bound by {b}); {} to survive losing one\n",
                    if p.complete { "" } else { "at least " },
                    h + 1
                ));
                if let Some(c) = t.per_host_connections {
                    o.push_str(&format!(
                        "  at {h} host{} each carries {} connections{}\n",
                        if h == 1 { "" } else { "s" },
                        float(c, 0),
                        t.per_host_deliveries_per_sec
                            .map(|d| format!(" and {} deliveries/s", float(d, 0)))
                            .unwrap_or_default()
                    ));
                }
                for u in &t.usage {
                    o.push_str(&format!(
                        "    {:<6} {:>6.1}% of the host limit, headroom {:.1}%\n",
                        u.resource,
                        u.utilisation * 100.0,
                        u.headroom * 100.0
                    ));
                }
            }
            (Some(_), _) => o.push_str("  impossible: a per-host limit is 0\n"),
            _ => o.push_str("  hosts needed: unknown\n"),
        }
    }
    o.push_str("\nArithmetic\n");
    for l in &p.arithmetic {
        o.push_str(&format!("  {l}\n"));
    }
    o.push_str("\nAssumptions\n");
    for a in &p.assumptions {
        o.push_str(&format!("  - {a}\n"));
    }
    if !p.warnings.is_empty() {
        o.push_str("\nWarnings\n");
        for w in &p.warnings {
            o.push_str(&format!("  ! {w}\n"));
        }
    }
    if !p.missing.is_empty() {
        o.push_str("\nNot computed (incomplete plan)\n");
        for w in &p.missing {
            o.push_str(&format!("  x {w}\n"));
        }
    }
    o
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
