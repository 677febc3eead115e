//! Just enough Redis for `PSUBSCRIBE events:*`: the URL, commands in RESP, and a
//! reader of replies and `pmessage` pushes that works on whatever bytes have
//! arrived (a partial message is left for the next read).

/// Where Redis is, and how to log in.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// HOST:PORT.
    pub addr: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Parse `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (the DB does not matter to
/// pub/sub).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("--redis {url:?}: want redis://HOST[:PORT][/DB]"))?;
    let rest = rest.split(['/', '?']).next().unwrap_or("");
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    if host.is_empty() {
        return Err(format!("--redis {url:?}: no host"));
    }
    let addr = if host.starts_with('[') {
        if host.contains("]:") {
            host.to_owned()
        } else {
            format!("{host}:6379")
        }
    } else if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:6379")
    };
    if addr
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(format!("--redis {url:?}: bad port"));
    }
    let (user, password) = match auth.map(|a| a.split_once(':').unwrap_or(("", a))) {
        None => (None, None),
        Some((u, p)) => (
            (!u.is_empty()).then(|| u.to_owned()),
            (!p.is_empty()).then(|| p.to_owned()),
        ),
    };
    Ok(Target {
        addr,
        user,
        password,
    })
}

/// Append a command (an array of bulk strings) to `out`.
pub fn command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One complete message from Redis.
#[derive(Debug, PartialEq)]
pub enum Msg<'a> {
    /// A `pmessage` push: the Redis channel and the body.
    Event { channel: &'a [u8], body: &'a [u8] },
    /// The PSUBSCRIBE confirmation.
    Subscribed,
    /// An error reply.
    Error(&'a [u8]),
    /// Anything else (`+OK` to AUTH).
    Other,
}

/// The line at `at` (without CRLF) and where the next one starts.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..i], at + i + 2))
}

fn number(b: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad RESP length {:?}", String::from_utf8_lossy(b)))
}

/// One value at `at`: its bytes (bulk or simple string; `None` for others) and
/// where it ends. `Ok(None)`: incomplete.
#[allow(clippy::type_complexity)]
fn value(buf: &[u8], at: usize, depth: u8) -> Result<Option<(Option<&[u8]>, usize)>, String> {
    let Some((l, next)) = line(buf, at) else {
        return Ok(None);
    };
    let (&kind, l) = l.split_first().ok_or("empty RESP line")?;
    match kind {
        b'+' | b'-' => Ok(Some((Some(l), next))),
        b':' => Ok(Some((None, next))),
        b'$' => {
            let n = number(l)?;
            if n < 0 {
                return Ok(Some((None, next)));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Some(&buf[next..end]), end + 2)))
        }
        b'*' if depth < 4 => {
            let mut at = next;
            for _ in 0..number(l)?.max(0) {
                match value(buf, at, depth + 1)? {
                    Some((_, n)) => at = n,
                    None => return Ok(None),
                }
            }
            Ok(Some((None, at)))
        }
        k => Err(format!("unexpected RESP type byte {k:#x}")),
    }
}

/// The message at the start of `buf` and its length; `Ok(None)`: incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<(Msg<'_>, usize)>, String> {
    match buf.first() {
        None => Ok(None),
        Some(b'-') => Ok(line(buf, 0).map(|(l, n)| (Msg::Error(&l[1..]), n))),
        Some(b'*') => {
            let Some((l, mut at)) = line(buf, 0) else {
                return Ok(None);
            };
            let count = number(&l[1..])?;
            let mut items: [Option<&[u8]>; 4] = [None; 4];
            for i in 0..count.max(0) as usize {
                match value(buf, at, 1)? {
                    Some((v, n)) => {
                        if let Some(slot) = items.get_mut(i) {
                            *slot = v;
                        }
                        at = n;
                    }
                    None => return Ok(None),
                }
            }
            let msg = match items {
                [Some(b"pmessage"), _, Some(channel), Some(body)] if count == 4 => {
                    Msg::Event { channel, body }
                }
                [Some(b"psubscribe"), ..] => Msg::Subscribed,
                _ => Msg::Other,
            };
            Ok(Some((msg, at)))
        }
        Some(_) => Ok(value(buf, 0, 0)?.map(|(_, n)| (Msg::Other, n))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("redis://127.0.0.1:7000/").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.user, t.password),
            ("127.0.0.1:7000", None, None)
        );
        let t = parse_url("redis://:pw@h").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.password.as_deref()),
            ("h:6379", Some("pw"))
        );
        let t = parse_url("redis://u:pw@h:1/0").unwrap();
        assert_eq!(t.user.as_deref(), Some("u"));
        assert!(parse_url("http://h").is_err());
        assert!(parse_url("redis://h:x").is_err());
    }

    #[test]
    fn pushes_in_pieces() {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"*3\r\n$10\r\npsubscribe\r\n$8\r\nevents:*\r\n:1\r\n");
        command(
            &[
                b"pmessage",
                b"events:*",
                b"events:dm:c",
                b"{\"type\":\"t\"}",
            ],
            &mut wire,
        );
        wire.extend_from_slice(b"-ERR nope\r\n");
        for cut in 0..wire.len() {
            let mut at = 0;
            let mut seen = Vec::new();
            while let Some((m, n)) = parse(&wire[at..cut]).unwrap() {
                seen.push(format!("{m:?}"));
                at += n;
            }
            assert!(seen.len() <= 3);
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((m, n)) = parse(&wire[at..]).unwrap() {
            got.push(format!("{m:?}"));
            at += n;
        }
        assert_eq!(at, wire.len());
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], "Subscribed");
        let first = parse(&wire).unwrap().unwrap().1;
        match parse(&wire[first..]).unwrap() {
            Some((Msg::Event { channel, body }, _)) => {
                assert_eq!(channel, b"events:dm:c");
                assert_eq!(body, b"{\"type\":\"t\"}");
            }
            other => panic!("{other:?}"),
        }
        assert!(got[2].starts_with("Error"));
    }
}
