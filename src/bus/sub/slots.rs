//! Redis Cluster's key space: the slot of a key or channel (CRC16/XMODEM of its
//! hash tag, mod 16384, as the cluster spec defines), and the map from slots to
//! masters learned from `CLUSTER SLOTS`.

use super::node::Auth;
use super::resp::{self, Resp};
use crate::limits::{REDIS_CONNECT_TIMEOUT, REDIS_IO_TIMEOUT};

pub const SLOTS: u16 = 16384;

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster uses.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: only the part inside the first non-empty `{…}` counts.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % SLOTS
}

/// Which master serves each slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    /// (first slot, last slot, master "host:port"), sorted by first slot.
    ranges: Vec<(u16, u16, String)>,
}

impl SlotMap {
    /// From a `CLUSTER SLOTS` reply.
    pub fn from_cluster_slots(v: &Resp) -> Option<SlotMap> {
        let Resp::Array(entries) = v else { return None };
        let mut ranges = Vec::new();
        for e in entries {
            let Resp::Array(parts) = e else { continue };
            let (Some(Resp::Int(a)), Some(Resp::Int(b)), Some(Resp::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            let host = master.first().and_then(Resp::text).unwrap_or("");
            let Some(Resp::Int(port)) = master.get(1) else {
                continue;
            };
            let (Ok(a), Ok(b)) = (u16::try_from(*a), u16::try_from(*b)) else {
                continue;
            };
            ranges.push((a, b, format!("{host}:{port}")));
        }
        ranges.sort();
        Some(SlotMap { ranges })
    }

    /// The master of `slot`.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let i = self.ranges.partition_point(|(a, _, _)| *a <= slot);
        let (a, b, addr) = self.ranges.get(i.checked_sub(1)?)?;
        (*a <= slot && slot <= *b).then_some(addr.as_str())
    }

    /// Every master, once.
    pub fn masters(&self) -> Vec<String> {
        let mut m: Vec<String> = self.ranges.iter().map(|r| r.2.clone()).collect();
        m.sort();
        m.dedup();
        m
    }

    /// After `-MOVED slot addr`: that slot is served by `addr` now.
    pub fn moved(&mut self, slot: u16, addr: &str) {
        let mut out = Vec::with_capacity(self.ranges.len() + 2);
        for (a, b, m) in self.ranges.drain(..) {
            if a <= slot && slot <= b {
                if a < slot {
                    out.push((a, slot - 1, m.clone()));
                }
                if slot < b {
                    out.push((slot + 1, b, m));
                }
            } else {
                out.push((a, b, m));
            }
        }
        out.push((slot, slot, addr.to_owned()));
        out.sort();
        self.ranges = out;
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// Read `CLUSTER SLOTS` from `url` (a blocking connection, bounded by the
/// connect and read timeouts).
pub fn read_slots(url: &str, auth: &Auth) -> Option<SlotMap> {
    let client = redis::Client::open(url).ok()?;
    let mut c = client
        .get_connection_with_timeout(REDIS_CONNECT_TIMEOUT)
        .ok()?;
    c.set_read_timeout(Some(REDIS_IO_TIMEOUT)).ok()?;
    if let Some(p) = &auth.password {
        let mut cmd = redis::cmd("AUTH");
        if let Some(u) = &auth.username {
            cmd.arg(u);
        }
        let _: redis::RedisResult<()> = cmd.arg(p).query(&mut c);
    }
    let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).ok()?;
    SlotMap::from_cluster_slots(&to_resp(&v))
}

fn to_resp(v: &redis::Value) -> resp::Resp {
    use redis::Value as V;
    use resp::Resp as R;
    match v {
        V::Int(i) => R::Int(*i),
        V::BulkString(b) => R::Bulk(b.clone()),
        V::SimpleString(s) => R::Simple(s.clone().into_bytes()),
        V::Array(a) | V::Set(a) => R::Array(a.iter().map(to_resp).collect()),
        _ => R::Null,
    }
}

/// `MOVED <slot> <host:port>`.
pub fn parse_moved(e: &str) -> Option<(u16, String)> {
    let mut it = e.split_whitespace();
    if it.next()? != "MOVED" {
        return None;
    }
    let slot = it.next()?.parse().ok()?;
    Some((slot, it.next()?.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_as_redis_computes_them() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"xcord:{server:s1}"), slot(b"server:s1"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "empty tag: whole key"
        );
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn a_map_from_cluster_slots_and_a_move() {
        let node =
            |port: i64| Resp::Array(vec![Resp::Bulk(b"127.0.0.1".to_vec()), Resp::Int(port)]);
        let v = Resp::Array(vec![
            Resp::Array(vec![Resp::Int(5461), Resp::Int(10922), node(7001)]),
            Resp::Array(vec![Resp::Int(0), Resp::Int(5460), node(7000)]),
            Resp::Array(vec![
                Resp::Int(10923),
                Resp::Int(16383),
                node(7002),
                node(7005),
            ]),
        ]);
        let mut m = SlotMap::from_cluster_slots(&v).unwrap();
        assert_eq!(m.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(m.owner(5461), Some("127.0.0.1:7001"));
        assert_eq!(m.owner(16383), Some("127.0.0.1:7002"));
        assert_eq!(m.masters().len(), 3);
        m.moved(6000, "127.0.0.1:7002");
        assert_eq!(m.owner(6000), Some("127.0.0.1:7002"));
        assert_eq!(m.owner(5999), Some("127.0.0.1:7001"));
        assert_eq!(m.owner(6001), Some("127.0.0.1:7001"));
    }
}
