//! Reading an `xcord-loadtest` result file (schema `xcord-loadtest/1`,
//! `loadtest/RESULT_SCHEMA.md`) into the few measurements capacity planning uses.
//!
//! Every field is optional here: a missing or `null` field becomes `None` and the
//! caller states the consequence. A field of the wrong type, a negative count, or a
//! file that is not JSON is an error naming the field.

use serde_json::Value;

pub const SCHEMA: &str = "xcord-loadtest/1";

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
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("the result is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err("the result is not a JSON object".into());
    }
    let schema = string(&v, &["schema"])?;
    if let Some(s) = &schema {
        if s != SCHEMA {
            return Err(format!(
                "the result has schema `{s}`; this xcord-tune reads `{SCHEMA}`"
            ));
        }
    }
    let gateway_measured = matches!(v.get("gateway"), Some(Value::Object(_)));
    Ok(Measurement {
        schema,
        scenario: string(&v, &["scenario"])?,
        duration_s: positive(&v, &["duration_s"])?,
        host_cores: positive(&v, &["host", "cores"])?,
        host_mem_bytes: positive(&v, &["host", "mem_bytes"])?,
        connections_target: count(&v, &["connections", "target"])?,
        established: count(&v, &["connections", "established"])?,
        subscribers_per_channel: count(&v, &["config", "subscribers_per_channel"])?,
        rate_events_per_sec: count(&v, &["config", "rate_events_per_sec"])?,
        gateway_shards: count(&v, &["config", "gateway_shards"])?,
        deliveries_expected: count(&v, &["deliveries", "expected"])?,
        deliveries_received: count(&v, &["deliveries", "received"])?,
        missing: count(&v, &["deliveries", "missing"])?,
        duplicated: count(&v, &["deliveries", "duplicated"])?,
        out_of_order: count(&v, &["deliveries", "out_of_order"])?,
        per_sec_expected: count(&v, &["deliveries", "per_sec_expected"])?,
        per_sec_achieved: count(&v, &["deliveries", "per_sec_achieved"])?,
        latency_p99_ms: count(&v, &["latency_ms", "p99"])?,
        gateway_measured,
        rss_before: count(&v, &["gateway", "rss_bytes_before_connect"])?,
        rss_after: count(&v, &["gateway", "rss_bytes_after_connect"])?,
        rss_end: count(&v, &["gateway", "rss_bytes_end"])?,
        // May be negative in a noisy run (RSS fell); the caller rejects that.
        rss_per_connection: number(&v, &["gateway", "rss_bytes_per_connection"])?,
        rss_per_connection_marginal: number(&v, &["gateway", "rss_bytes_per_connection_marginal"])?,
        cpu_seconds_measure: count(&v, &["gateway", "cpu_seconds_measure"])?,
        cpu_seconds_per_million: count(&v, &["gateway", "cpu_seconds_per_million_deliveries"])?,
        saturation_deliveries_per_sec: count(&v, &["saturation_deliveries_per_sec"])?,
        passed: boolean(&v, &["passed"])?,
    })
}

/// Walk `path`; `Ok(None)` when any step is missing or null.
fn walk<'a>(v: &'a Value, path: &[&str]) -> Result<Option<&'a Value>, String> {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        match cur {
            Value::Object(m) => match m.get(*key) {
                None | Some(Value::Null) => return Ok(None),
                Some(next) => cur = next,
            },
            Value::Null => return Ok(None),
            _ => return Err(format!("field `{}` is not an object", path[..i].join("."))),
        }
    }
    Ok(Some(cur))
}

fn number(v: &Value, path: &[&str]) -> Result<Option<f64>, String> {
    match walk(v, path)? {
        None => Ok(None),
        Some(x) => x
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("field `{}` should be a number, found {x}", path.join("."))),
    }
}

/// A number that must not be negative.
fn count(v: &Value, path: &[&str]) -> Result<Option<f64>, String> {
    match number(v, path)? {
        Some(f) if f < 0.0 => Err(format!("field `{}` is negative ({f})", path.join("."))),
        other => Ok(other),
    }
}

/// A number that must be above zero.
fn positive(v: &Value, path: &[&str]) -> Result<Option<f64>, String> {
    match number(v, path)? {
        Some(f) if f <= 0.0 => Err(format!(
            "field `{}` must be above zero ({f})",
            path.join(".")
        )),
        other => Ok(other),
    }
}

fn string(v: &Value, path: &[&str]) -> Result<Option<String>, String> {
    match walk(v, path)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(x) => Err(format!(
            "field `{}` should be a string, found {x}",
            path.join(".")
        )),
    }
}

fn boolean(v: &Value, path: &[&str]) -> Result<Option<bool>, String> {
    match walk(v, path)? {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(x) => Err(format!(
            "field `{}` should be true or false, found {x}",
            path.join(".")
        )),
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
