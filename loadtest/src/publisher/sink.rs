//! Where a batch of events goes: Redis (`PUBLISH events:{channel}` by pattern,
//! or `SPUBLISH xcord:{ROOT}` by root, pipelined), a Redis Cluster (by root,
//! through the cluster-aware client, which routes each SPUBLISH by its slot), the
//! admin route, or nowhere (a `--connect-only` process replays the schedule to
//! know what it is owed).

use std::time::Duration;

use super::admin::AdminClient;
use super::RoutingKind;
use crate::plan::Plan;

pub(super) enum Sink {
    Redis {
        client: redis::Client,
        conn: Option<redis::Connection>,
        routing: RoutingKind,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        conn: Option<Box<redis::cluster::ClusterConnection>>,
    },
    Admin(AdminClient),
    /// Publishes nothing and never fails.
    Dry,
}

/// The root of a channel: its first two segments (`server:s1:channel:c2` →
/// `server:s1`), SPEC §9.
pub fn root(channel: &str) -> &str {
    match channel.match_indices(':').nth(1) {
        Some((i, _)) => &channel[..i],
        None => channel,
    }
}

/// The Redis channel an event of `channel` is published on.
pub fn redis_channel(routing: RoutingKind, channel: &str) -> String {
    match routing {
        RoutingKind::Pattern => format!("events:{channel}"),
        RoutingKind::Roots => format!("xcord:{{{}}}", root(channel)),
    }
}

impl Sink {
    /// Send a batch in order. Returns how many failed and the first error.
    pub(super) fn send(&mut self, batch: &[(u32, String)], plan: &Plan) -> (u64, Option<String>) {
        let n = batch.len() as u64;
        match self {
            Sink::Dry => (0, None),
            Sink::Redis {
                client,
                conn,
                routing,
            } => {
                if conn.is_none() {
                    match client.get_connection_with_timeout(Duration::from_secs(5)) {
                        Ok(c) => *conn = Some(c),
                        Err(e) => return (n, Some(format!("redis: {e}"))),
                    }
                }
                let Some(c) = conn.as_mut() else {
                    return (n, Some("redis: no connection".into()));
                };
                let cmd = match routing {
                    RoutingKind::Pattern => "PUBLISH",
                    RoutingKind::Roots => "SPUBLISH",
                };
                let mut pipe = redis::pipe();
                for (ch, body) in batch {
                    let name = &plan.channel_names[*ch as usize];
                    pipe.cmd(cmd)
                        .arg(redis_channel(*routing, name))
                        .arg(body.as_str())
                        .ignore();
                }
                match pipe.query::<()>(c) {
                    Ok(()) => (0, None),
                    Err(e) => {
                        *conn = None;
                        (n, Some(format!("redis {cmd}: {e}")))
                    }
                }
            }
            Sink::Cluster { client, conn } => {
                if conn.is_none() {
                    match client.get_connection() {
                        Ok(c) => *conn = Some(Box::new(c)),
                        Err(e) => return (n, Some(format!("redis cluster: {e}"))),
                    }
                }
                let Some(c) = conn.as_mut() else {
                    return (n, Some("redis cluster: no connection".into()));
                };
                let mut pipe = redis::cluster::cluster_pipe();
                for (ch, body) in batch {
                    let name = &plan.channel_names[*ch as usize];
                    pipe.cmd("SPUBLISH")
                        .arg(redis_channel(RoutingKind::Roots, name))
                        .arg(body.as_str())
                        .ignore();
                }
                match pipe.query::<()>(c) {
                    Ok(()) => (0, None),
                    Err(e) => {
                        *conn = None;
                        (n, Some(format!("redis cluster SPUBLISH: {e}")))
                    }
                }
            }
            Sink::Admin(a) => {
                let mut failed = 0;
                let mut first = None;
                for (_, body) in batch {
                    match a.post(body) {
                        Ok(202) => {}
                        Ok(s) => {
                            failed += 1;
                            first.get_or_insert_with(|| format!("admin publish: HTTP {s}"));
                        }
                        Err(e) => {
                            failed += 1;
                            first.get_or_insert_with(|| format!("admin publish: {e:#}"));
                        }
                    }
                }
                (failed, first)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_and_redis_channels() {
        assert_eq!(root("server:lt3:channel:main"), "server:lt3");
        assert_eq!(root("dm:c9"), "dm:c9");
        assert_eq!(root("live:lt0:chat"), "live:lt0");
        assert_eq!(
            redis_channel(RoutingKind::Roots, "server:lt3:channel:main"),
            "xcord:{server:lt3}"
        );
        assert_eq!(redis_channel(RoutingKind::Pattern, "dm:c9"), "events:dm:c9");
    }
}
