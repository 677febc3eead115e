//! The `xcord-tune` command line: parses flags, runs one subcommand, prints text or
//! JSON, and sets the exit code (0 fine, 1 a FAIL or an incomplete plan, 2 bad input).

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xcord_common::units::parse_bytes;
use xcord_tune::shards::Shards;
use xcord_tune::{capacity, check, host, needs, profile, result, shards, units};

#[derive(Parser, Debug)]
#[command(
    name = "xcord-tune",
    version,
    about = "Per-host tuning and capacity planning for the XCORD Gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Grade this host's limits and sysctls against N connections (exit 1 on FAIL).
    Check(CheckArgs),
    /// Write the sysctl.d file, limits.d lines and systemd unit for a target.
    Profile(ProfileArgs),
    /// Per-host limits and hosts needed, from an xcord-loadtest result.
    Capacity(CapacityArgs),
    /// The recommended shard count (`xcord-gateway --shards auto`) and why.
    Shards(ShardsArgs),
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Connections the gateway on this host must hold.
    #[arg(long, default_value_t = 10_000)]
    target_connections: u64,
    /// Shards the gateway will run: a number or `auto`.
    #[arg(long, default_value = "auto")]
    shards: Shards,
    /// Read the host from this directory instead of /proc (same layout: cpuinfo,
    /// meminfo, self/limits, self/status, sys/...). Skips the live io_uring probe.
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// Read ulimits and the CPU mask of this process (a running gateway) instead
    /// of this shell's: what systemd actually gave it.
    #[arg(long)]
    pid: Option<u32>,
    /// Gateway + kernel memory per connection (e.g. 16KiB) for the memory row.
    #[arg(long, value_parser = parse_bytes, conflicts_with = "from")]
    bytes_per_connection: Option<u64>,
    /// Take memory per connection from an xcord-loadtest result (measured RSS + kernel).
    #[arg(long)]
    from: Option<PathBuf>,
    /// A load generator runs on this host too (checks ports and file-max for both ends).
    #[arg(long)]
    with_loadgen: bool,
    /// Do not call io_uring_setup to probe io_uring.
    #[arg(long)]
    no_probe: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ProfileArgs {
    /// Connections the gateway must hold.
    #[arg(long)]
    target_connections: u64,
    /// Shards: a number or `auto` (from --host-cores, else this host's cores).
    #[arg(long, default_value = "auto")]
    shards: Shards,
    /// Usable cores of the target host (default: this host's).
    #[arg(long)]
    host_cores: Option<u64>,
    /// Directory to write the three files into (created if needed); without it,
    /// the files are printed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The service user in limits.d and the unit.
    #[arg(long, default_value = "xcord")]
    user: String,
    /// ExecStart path in the unit.
    #[arg(long, default_value = profile::DEFAULT_BIN)]
    gateway_bin: String,
    /// Where to read this host's cores when --host-cores is not given.
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
}

#[derive(Args, Debug)]
struct CapacityArgs {
    /// An xcord-loadtest result file (schema xcord-loadtest/1).
    #[arg(long)]
    from: PathBuf,
    /// Cores of the host to plan for (default: the result's host.cores).
    #[arg(long)]
    host_cores: Option<u64>,
    /// Memory of the host to plan for, in GiB (default: the result's host.mem_bytes).
    #[arg(long)]
    host_mem: Option<f64>,
    /// Connections the fleet must hold.
    #[arg(long)]
    target_connections: Option<u64>,
    /// Events published per second, fleet-wide (each reaches --fanout subscribers).
    #[arg(long, requires = "target_connections")]
    target_events_per_sec: Option<f64>,
    /// Subscribers per event for the target (default: the test's subscribers per channel).
    #[arg(long)]
    fanout: Option<f64>,
    /// Shards on the planned host: a number or `auto` (default: auto).
    #[arg(long)]
    shards: Option<Shards>,
    /// The planned host's open-file limit (default 1048576, the default fs.nr_open).
    #[arg(long)]
    nofile: Option<u64>,
    /// Share of RAM kept free, 0..1.
    #[arg(long, default_value_t = 0.25)]
    mem_reserve: f64,
    /// Share of all cores the gateway may use, 0..1.
    #[arg(long, default_value_t = 0.7)]
    cpu_target: f64,
    /// Kernel socket memory per connection (not in the gateway's RSS).
    #[arg(long, default_value = "4096", value_parser = parse_bytes)]
    kernel_bytes_per_connection: u64,
    /// Gateway RSS per connection, instead of the result's.
    #[arg(long)]
    bytes_per_connection: Option<f64>,
    /// Gateway CPU-seconds per million deliveries, instead of the result's.
    #[arg(long)]
    cpu_seconds_per_million: Option<f64>,
    /// The gateway's --replay-buffer-bytes (per shard).
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    replay_buffer_bytes: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ShardsArgs {
    /// Usable cores (default: this host's).
    #[arg(long)]
    cores: Option<usize>,
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Check(a) => run_check(a),
        Command::Profile(a) => run_profile(a),
        Command::Capacity(a) => run_capacity(a),
        Command::Shards(a) => run_shards(a),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xcord-tune: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map_err(|e| format!("cannot write JSON: {e}"))
}

fn read_result(path: &Path) -> Result<result::Measurement, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    result::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn run_check(a: CheckArgs) -> Result<u8, String> {
    let process = a
        .pid
        .map(|p| p.to_string())
        .unwrap_or_else(|| "self".into());
    let h = host::Host::read(&a.proc_root, &process, !a.no_probe)?;
    let (bpc, src) = match (a.bytes_per_connection, &a.from) {
        (Some(b), _) => (b, "--bytes-per-connection".to_string()),
        (None, Some(p)) => {
            let m = read_result(p)?;
            let user = m
                .rss_per_connection
                .filter(|v| *v > 0.0)
                .or_else(|| match (m.rss_before, m.rss_after, m.established) {
                    (Some(b), Some(a), Some(e)) if e > 0.0 && a > b => Some((a - b) / e),
                    _ => None,
                })
                .ok_or_else(|| {
                    format!(
                        "{}: no RSS per connection (gateway measurements missing); use --bytes-per-connection",
                        p.display()
                    )
                })?;
            (
                user.ceil() as u64 + needs::KERNEL_BYTES_PER_CONN,
                format!(
                    "measured {} RSS + {} kernel",
                    units::bytes(user.ceil() as u64),
                    units::bytes(needs::KERNEL_BYTES_PER_CONN)
                ),
            )
        }
        (None, None) => (
            needs::USER_BYTES_PER_CONN + needs::KERNEL_BYTES_PER_CONN,
            format!(
                "assumed {} gateway + {} kernel; measure with xcord-loadtest and pass --from",
                units::bytes(needs::USER_BYTES_PER_CONN),
                units::bytes(needs::KERNEL_BYTES_PER_CONN)
            ),
        ),
    };
    let opts = check::Options {
        target: a.target_connections,
        shards: a.shards,
        bytes_per_conn: bpc,
        bytes_per_conn_source: src,
        with_loadgen: a.with_loadgen,
    };
    let report = check::evaluate(&h, &opts);
    if a.json {
        println!("{}", to_json(&report)?);
    } else {
        print!("{}", check::render(&report));
    }
    Ok(if report.status == check::Status::Fail {
        1
    } else {
        0
    })
}

fn host_cores(proc_root: &Path) -> Result<u64, String> {
    let h = host::Host::read(proc_root, "self", false)?;
    h.usable_cores()
        .map(|c| c as u64)
        .ok_or_else(|| "cannot read this host's cores; pass --host-cores".to_string())
}

fn run_profile(a: ProfileArgs) -> Result<u8, String> {
    if a.target_connections == 0 {
        return Err("--target-connections must be at least 1".into());
    }
    let cores = match a.host_cores {
        Some(0) => return Err("--host-cores must be at least 1".into()),
        Some(c) => c,
        None => host_cores(&a.proc_root)?,
    };
    if a.user.is_empty() || a.user.contains(char::is_whitespace) {
        return Err(format!("--user `{}` is not a user name", a.user));
    }
    let p = profile::Params {
        target: a.target_connections,
        shards: a.shards.resolve(cores as usize) as u64,
        cores,
        shards_auto: a.shards == Shards::Auto,
        user: a.user,
        gateway_bin: a.gateway_bin,
    };
    let files = profile::generate(&p);
    match a.out {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for f in &files {
                let path = dir.join(f.name);
                std::fs::write(&path, &f.contents)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                println!("wrote {}  (install as {})", path.display(), f.install);
            }
            println!(
                "profile: {} connections, {} shards, CPUAffinity={}",
                units::int(p.target),
                p.shards,
                profile::cpu_affinity(p.shards, p.cores)
            );
        }
        None => {
            for f in &files {
                println!("==> {} (install as {}) <==", f.name, f.install);
                println!("{}", f.contents);
            }
        }
    }
    Ok(0)
}

fn run_capacity(a: CapacityArgs) -> Result<u8, String> {
    let m = read_result(&a.from)?;
    let o = capacity::Options {
        host_cores: a.host_cores,
        host_mem_gib: a.host_mem,
        target_connections: a.target_connections,
        target_events_per_sec: a.target_events_per_sec,
        fanout: a.fanout,
        shards: a.shards,
        nofile: a.nofile,
        mem_reserve: a.mem_reserve,
        cpu_target: a.cpu_target,
        kernel_bytes_per_conn: a.kernel_bytes_per_connection,
        bytes_per_conn: a.bytes_per_connection,
        cpu_seconds_per_million: a.cpu_seconds_per_million,
        replay_buffer_bytes: a.replay_buffer_bytes,
    };
    for (flag, v) in [
        ("--target-events-per-sec", a.target_events_per_sec),
        ("--fanout", a.fanout),
        ("--bytes-per-connection", a.bytes_per_connection),
        ("--cpu-seconds-per-million", a.cpu_seconds_per_million),
    ] {
        if let Some(x) = v {
            if !(x.is_finite() && x > 0.0) {
                return Err(format!("{flag} must be above 0, got {x}"));
            }
        }
    }
    let p = capacity::plan(&m, &o)?;
    if a.json {
        println!("{}", to_json(&p)?);
    } else {
        print!("{}", capacity::render(&p, &m));
    }
    Ok(if p.complete() { 0 } else { 1 })
}

fn run_shards(a: ShardsArgs) -> Result<u8, String> {
    let cores = match a.cores {
        Some(0) => return Err("--cores must be at least 1".into()),
        Some(c) => c,
        None => host_cores(&a.proc_root)? as usize,
    };
    let c = shards::explain(cores);
    if a.json {
        println!("{}", to_json(&c)?);
    } else {
        println!(
            "--shards auto on {} usable cores: {} shards ({} spare)",
            c.cores, c.shards, c.spare_cores
        );
        println!("Rule: {}.", c.rule);
        for r in &c.reasons {
            println!("- {r}");
        }
    }
    Ok(0)
}
