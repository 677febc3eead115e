//! The host being planned for — its cores, memory, shard count and open-file limit,
//! from the options or else from the test host the result describes — and the
//! warnings about how clean the measurement is.

use super::render::opt;
use super::{HostModel, Notes, Options};
use crate::result::Measurement;
use crate::shards::Shards;
use crate::units::{bytes, int};

/// The host model. `Err` when neither the options nor the result give its size.
pub(super) fn model(m: &Measurement, o: &Options, n: &mut Notes) -> Result<HostModel, String> {
    let assumptions = &mut n.assumptions;
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
    Ok(HostModel {
        cores,
        mem_bytes,
        shards,
        nofile,
    })
}

/// Warnings about the measurement itself: a missing schema, an unclean run, failed
/// connections, a short run, no gateway measurements.
pub(super) fn cleanliness(m: &Measurement, o: &Options, n: &mut Notes) {
    let warnings = &mut n.warnings;
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
}
