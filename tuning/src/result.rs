//! Reading an `xcord-loadtest` result file (schema `xcord-loadtest/1`,
//! `loadtest/RESULT_SCHEMA.md`) into the few measurements capacity planning uses.
//!
//! The file is deserialised into the load tester's own result types
//! (`xcord_common::result`), so a field the two disagree on cannot slip through.
//! A missing or `null` field becomes `None` and the caller states the consequence.
//! A field of the wrong type, a negative count, a size that must be positive, or a
//! file that is not JSON is an error naming the field.

use serde_json::Value;
use xcord_common::result::RunResult;

pub use xcord_common::result::SCHEMA;

/// The measurements `capacity` reads, each `None` when the result lacks it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurement {
    pub schema: Option<String>,
    pub scenario: Option<String>,
    pub duration_s: Option<f64>,
    pub host_cores: Option<f64>,
    pub host_mem_bytes: Option<f64>,
    pub connections_target: Option<f64>,
    pub established: Option<f64>,
    pub subscribers_per_channel: Option<f64>,
    pub rate_events_per_sec: Option<f64>,
    pub gateway_shards: Option<f64>,
    pub deliveries_expected: Option<f64>,
    pub deliveries_received: Option<f64>,
    pub missing: Option<f64>,
    pub duplicated: Option<f64>,
    pub out_of_order: Option<f64>,
    pub per_sec_expected: Option<f64>,
    pub per_sec_achieved: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// False when the result's `gateway` object is absent or null.
    pub gateway_measured: bool,
    pub rss_before: Option<f64>,
    pub rss_after: Option<f64>,
    /// RSS at the end of the run (idle buffers given back): the settled state.
    pub rss_end: Option<f64>,
    pub rss_per_connection: Option<f64>,
    /// Growth over the second half of the connect phase (preferred: it extrapolates).
    pub rss_per_connection_marginal: Option<f64>,
    pub cpu_seconds_measure: Option<f64>,
    pub cpu_seconds_per_million: Option<f64>,
    pub saturation_deliveries_per_sec: Option<f64>,
    pub passed: Option<bool>,
}

/// Parse the text of a result file.
pub fn parse(text: &str) -> Result<Measurement, String> {
    let mut v: Value =
        serde_json::from_str(text).map_err(|e| format!("the result is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err("the result is not a JSON object".into());
    }
    if let Some(Value::String(s)) = v.get("schema") {
        if s != SCHEMA {
            return Err(format!(
                "the result has schema `{s}`; this xcord-tune reads `{SCHEMA}`"
            ));
        }
    }
    // `null` means "not measured", the same as an absent field.
    drop_nulls(&mut v);
    let r: RunResult = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        describe(&path, &e.into_inner().to_string())
    })?;
    let m = measurement(&r);
    check_ranges(&m)?;
    Ok(m)
}

/// The result as `capacity` reads it.
fn measurement(r: &RunResult) -> Measurement {
    let f = |v: Option<u64>| v.map(|x| x as f64);
    let z = |v: Option<usize>| v.map(|x| x as f64);
    let g = r.gateway.as_ref();
    let d = &r.deliveries;
    Measurement {
        schema: r.schema.clone(),
        scenario: r.scenario.clone(),
        duration_s: r.duration_s,
        host_cores: z(r.host.cores),
        host_mem_bytes: f(r.host.mem_bytes),
        connections_target: z(r.connections.target),
        established: z(r.connections.established),
        subscribers_per_channel: f(r.config.subscribers_per_channel),
        rate_events_per_sec: r.config.rate_events_per_sec,
        gateway_shards: r.config.gateway_shards.map(f64::from),
        deliveries_expected: f(d.expected),
        deliveries_received: f(d.received),
        missing: f(d.missing),
        duplicated: f(d.duplicated),
        out_of_order: f(d.out_of_order),
        per_sec_expected: d.per_sec_expected,
        per_sec_achieved: d.per_sec_achieved,
        latency_p99_ms: r.latency_ms.p99,
        gateway_measured: g.is_some(),
        rss_before: f(g.and_then(|g| g.rss_bytes_before_connect)),
        rss_after: f(g.and_then(|g| g.rss_bytes_after_connect)),
        rss_end: f(g.and_then(|g| g.rss_bytes_end)),
        // May be negative in a noisy run (RSS fell); the caller rejects that.
        rss_per_connection: g.and_then(|g| g.rss_bytes_per_connection),
        rss_per_connection_marginal: g.and_then(|g| g.rss_bytes_per_connection_marginal),
        cpu_seconds_measure: g.and_then(|g| g.cpu_seconds_measure),
        cpu_seconds_per_million: g.and_then(|g| g.cpu_seconds_per_million_deliveries),
        saturation_deliveries_per_sec: r.saturation_deliveries_per_sec,
        passed: r.passed,
    }
}

/// What the types cannot say: sizes that must be above zero, and rates and times
/// that must not be negative (counts are unsigned already).
fn check_ranges(m: &Measurement) -> Result<(), String> {
    for (field, v) in [
        ("duration_s", m.duration_s),
        ("host.cores", m.host_cores),
        ("host.mem_bytes", m.host_mem_bytes),
    ] {
        if let Some(x) = v.filter(|x| *x <= 0.0) {
            return Err(format!("field `{field}` must be above zero ({x})"));
        }
    }
    for (field, v) in [
        ("config.rate_events_per_sec", m.rate_events_per_sec),
        ("deliveries.per_sec_expected", m.per_sec_expected),
        ("deliveries.per_sec_achieved", m.per_sec_achieved),
        ("latency_ms.p99", m.latency_p99_ms),
        ("gateway.cpu_seconds_measure", m.cpu_seconds_measure),
        (
            "gateway.cpu_seconds_per_million_deliveries",
            m.cpu_seconds_per_million,
        ),
        (
            "saturation_deliveries_per_sec",
            m.saturation_deliveries_per_sec,
        ),
    ] {
        if let Some(x) = v.filter(|x| *x < 0.0) {
            return Err(format!("field `{field}` is negative ({x})"));
        }
    }
    Ok(())
}

/// The error for the field at `path`, from serde's message about it
/// ("invalid type: string \"two\", expected usize").
fn describe(path: &str, msg: &str) -> String {
    if msg.contains("expected struct") || msg.contains("expected a map") {
        return format!("field `{path}` is not an object");
    }
    let found_expected = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
        .and_then(|rest| rest.rsplit_once(", expected "));
    match found_expected {
        Some((found, expected)) => format!("field `{path}` should be {expected}, found {found}"),
        None => format!("field `{path}`: {msg}"),
    }
}

/// Remove every `null` member of every object, however deep.
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_and_missing_are_none() {
        let m = parse(r#"{"schema":"xcord-loadtest/1","gateway":null,"host":{"cores":2}}"#);
        let m = m.expect("parses");
        assert!(!m.gateway_measured);
        assert_eq!(m.host_cores, Some(2.0));
        assert_eq!(m.host_mem_bytes, None);
        assert_eq!(m.rss_per_connection, None);
        assert_eq!(m.passed, None);
    }

    #[test]
    fn wrong_types_are_errors_naming_the_field() {
        let e = parse(r#"{"host":{"cores":"two"}}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("host.cores"), "{e}");
        let e = parse(r#"{"host":3}"#).err().unwrap_or_default();
        assert!(e.contains("`host` is not an object"), "{e}");
        let e = parse(r#"{"deliveries":{"received":-1}}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("deliveries.received"), "{e}");
        let e = parse(r#"{"schema":"xcord-loadtest/2"}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("xcord-loadtest/2"), "{e}");
        assert!(parse("not json").is_err());
        assert!(parse("[1,2]").is_err());
        let e = parse(r#"{"passed":"yes"}"#).err().unwrap_or_default();
        assert!(e.contains("passed"), "{e}");
    }
}
