//! Small number helpers shared by every subcommand: thousands separators, binary
//! byte sizes, CPU-list parsing, integer rounding. Byte sizes are parsed as every
//! program of the workspace parses them, by `xcord_common::units::parse_bytes`.

/// `1048576` → `1,048,576`.
pub fn int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A float with thousands separators and `decimals` digits after the point.
pub fn float(x: f64, decimals: usize) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let neg = x < 0.0;
    let s = format!("{:.*}", decimals, x.abs());
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w.to_owned(), Some(f.to_owned())),
        None => (s.clone(), None),
    };
    let whole = match whole.parse::<u64>() {
        Ok(w) => int(w),
        Err(_) => whole,
    };
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    out.push_str(&whole);
    if let Some(f) = frac {
        out.push('.');
        out.push_str(&f);
    }
    out
}

/// Binary size: `268435456` → `256 MiB`, `25769803776` → `24.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n == u64::MAX {
        return "unlimited".into();
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{} {}", v.round() as u64, UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A limit value as `ulimit` prints it (`unlimited` for `u64::MAX`).
pub fn limit(n: u64) -> String {
    if n == u64::MAX {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

/// The number of CPUs in a list such as `0-3,8,10-11` (the kernel's cpulist format).
pub fn cpu_list_len(s: &str) -> Result<usize, String> {
    let mut n = 0usize;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad CPU list `{s}`"))?;
                let b: usize = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad CPU list `{s}`"))?;
                if b < a {
                    return Err(format!("bad CPU range `{part}`"));
                }
                n += b - a + 1;
            }
            None => {
                part.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad CPU list `{s}`"))?;
                n += 1;
            }
        }
    }
    if n == 0 {
        return Err(format!("empty CPU list `{s}`"));
    }
    Ok(n)
}

/// The smallest multiple of `m` that is `>= x` (`m > 0`).
pub fn round_up(x: u64, m: u64) -> u64 {
    if m == 0 {
        return x;
    }
    x.div_ceil(m).saturating_mul(m)
}

/// `ceil(a / b)` for positive floats, as an integer (0 when `a <= 0`).
pub fn ceil_div(a: f64, b: f64) -> u64 {
    if a <= 0.0 || b <= 0.0 || !a.is_finite() || !b.is_finite() {
        return 0;
    }
    let q = a / b;
    // Guard against 3.0000000000000004-style noise turning an exact ratio into +1.
    let r = q.round();
    if (q - r).abs() < 1e-9 {
        r as u64
    } else {
        q.ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xcord_common::units::parse_bytes;

    #[test]
    fn formats() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(1048576), "1,048,576");
        assert_eq!(float(140000.0, 0), "140,000");
        assert_eq!(float(1234.5678, 2), "1,234.57");
        assert_eq!(bytes(256 * 1024), "256 KiB");
        assert_eq!(bytes(25769803776), "24 GiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100), "100 B");
    }

    #[test]
    fn parses() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("16KiB"), Ok(16384));
        assert_eq!(parse_bytes("8m"), Ok(8 << 20));
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!(cpu_list_len("0-1"), Ok(2));
        assert_eq!(cpu_list_len("0-3,8,10-11\n"), Ok(7));
        assert!(cpu_list_len("3-1").is_err());
        assert!(cpu_list_len("").is_err());
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(1, 1024), 1024);
        assert_eq!(round_up(1024, 1024), 1024);
        assert_eq!(ceil_div(2_000_000.0, 1_048_496.0), 2);
        assert_eq!(ceil_div(500_000.0, 125_000.0), 4);
        assert_eq!(ceil_div(0.0, 5.0), 0);
    }
}
