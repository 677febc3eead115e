//! The little of RESP (the Redis protocol) a pub/sub link needs: encode a command,
//! and parse replies and pushes incrementally from a read buffer — arrays, bulk and
//! simple strings, integers, errors (RESP2), and RESP3's push and null forms, so a
//! server speaking either is understood.

/// A parsed reply or push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(Vec<u8>),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Resp>),
}

impl Resp {
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Resp::Bulk(b) | Resp::Simple(b) => Some(b),
            _ => None,
        }
    }

    pub fn text(&self) -> Option<&str> {
        self.bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// Append a command (`*N` of bulk strings) to `out`.
pub fn encode<'a>(out: &mut Vec<u8>, args: impl IntoIterator<Item = &'a [u8]>) {
    let args: Vec<&[u8]> = args.into_iter().collect();
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Deeper than any reply a link expects (a guard, not a limit that matters).
const MAX_DEPTH: usize = 8;

/// Parse one value from the front of `buf`: `Ok(Some((value, used)))`,
/// `Ok(None)` when more bytes are needed, `Err` on bytes that are not RESP.
pub fn parse(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..i], at + i + 2))
}

fn number(b: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad RESP number {:?}", String::from_utf8_lossy(b)))
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Resp, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err("RESP nested too deeply".into());
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((head, next)) = line(buf, at + 1) else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Resp::Simple(head.to_vec()), next))),
        b'-' => Ok(Some((
            Resp::Error(String::from_utf8_lossy(head).into_owned()),
            next,
        ))),
        b':' => Ok(Some((Resp::Int(number(head)?), next))),
        b'_' => Ok(Some((Resp::Null, next))),
        b'$' => {
            let n = number(head)?;
            if n < 0 {
                return Ok(Some((Resp::Null, next)));
            }
            let n = usize::try_from(n).map_err(|e| e.to_string())?;
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Resp::Bulk(buf[next..end].to_vec()), end + 2)))
        }
        b'*' | b'>' => {
            let n = number(head)?;
            if n < 0 {
                return Ok(Some((Resp::Null, next)));
            }
            let mut items = Vec::with_capacity(usize::try_from(n.min(64)).unwrap_or(0));
            let mut at = next;
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some((v, used)) => {
                        items.push(v);
                        at = used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(items), at)))
        }
        other => Err(format!("unexpected RESP type byte {other:#x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_waits_for_more() {
        let mut out = Vec::new();
        encode(&mut out, [&b"SSUBSCRIBE"[..], b"xcord:{server:s1}"]);
        assert_eq!(
            out,
            b"*2\r\n$10\r\nSSUBSCRIBE\r\n$17\r\nxcord:{server:s1}\r\n"
        );
        let msg = b"*3\r\n$8\r\nsmessage\r\n$3\r\nabc\r\n$2\r\nhi\r\n:1\r\n";
        let (v, used) = parse(msg).unwrap().unwrap();
        assert_eq!(
            v,
            Resp::Array(vec![
                Resp::Bulk(b"smessage".to_vec()),
                Resp::Bulk(b"abc".to_vec()),
                Resp::Bulk(b"hi".to_vec())
            ])
        );
        assert_eq!(parse(&msg[used..]).unwrap(), Some((Resp::Int(1), 4)));
        for cut in 0..used {
            assert_eq!(parse(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(
            parse(b"-MOVED 3999 127.0.0.1:7002\r\n").unwrap(),
            Some((Resp::Error("MOVED 3999 127.0.0.1:7002".into()), 28))
        );
        assert!(parse(b">3\r\n").unwrap().is_none());
        assert!(parse(b"?x\r\n").is_err());
    }
}
