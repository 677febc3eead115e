//! Channel names: colon-separated segments (SPEC §4), and the rules every program
//! applies to them.
//!
//! A subscription `X` (or `X:*`, the same thing) covers `X` and every channel below
//! it on segment boundaries. The first two segments — the *root* — decide who may
//! subscribe (`user:{id}`, `dm:{conv}`, `server:{sid}`, `live:{stream}`; any other
//! kind is `INVALID_CHANNEL`) and, with `--routing roots`, which Redis channel
//! carries the events (SPEC §9).
//!
//! Segment alphabet (our choice, SPEC is silent): ASCII letters, digits and `_ - . @ = +`,
//! 1..=128 bytes a segment, 255 bytes a name. `*` is allowed only as a whole last
//! segment (the explicit "and below" form).

pub const MAX_NAME_LEN: usize = 255;
pub const MAX_SEGMENT_LEN: usize = 128;

/// The root of a channel name, which decides authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    User,
    Dm,
    Server,
    Live,
}

/// A parsed, normalised subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The name with any trailing `:*` removed: the key in the tries.
    pub name: String,
    pub root: Root,
    /// The second segment: user id, conversation id, server id or stream id.
    pub id_start: usize,
    pub id_end: usize,
}

impl Subscription {
    pub fn id(&self) -> &str {
        &self.name[self.id_start..self.id_end]
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SEGMENT_LEN
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b'=' | b'+')
        })
}

/// Whether `name` is a syntactically valid concrete channel (no wildcard): used for
/// backend publishes and typing targets.
pub fn valid_channel(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && name.split(':').all(valid_segment)
}

/// Parse a SUBSCRIBE/UNSUBSCRIBE entry. `None` means `INVALID_CHANNEL`.
pub fn parse_subscription(raw: &str) -> Option<Subscription> {
    let name = raw.strip_suffix(":*").unwrap_or(raw);
    if name.len() > MAX_NAME_LEN || !valid_channel(name) {
        return None;
    }
    let mut segs = name.split(':');
    let root = match segs.next()? {
        "user" => Root::User,
        "dm" => Root::Dm,
        "server" => Root::Server,
        "live" => Root::Live,
        _ => return None,
    };
    let id = segs.next()?;
    let id_start = name.find(':')? + 1;
    Some(Subscription {
        name: name.to_owned(),
        root,
        id_start,
        id_end: id_start + id.len(),
    })
}

/// A channel on which TYPING_START/STOP may be sent (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypingTarget {
    Dm { conversation: String },
    ServerChannel { server: String, channel: String },
}

/// `dm:{conv}` or `server:{sid}:channel:{cid}`, exactly; anything else is `None`.
pub fn typing_target(name: &str) -> Option<TypingTarget> {
    if !valid_channel(name) {
        return None;
    }
    let segs: Vec<&str> = name.split(':').collect();
    match segs.as_slice() {
        ["dm", conv] => Some(TypingTarget::Dm {
            conversation: (*conv).to_owned(),
        }),
        ["server", sid, "channel", cid] => Some(TypingTarget::ServerChannel {
            server: (*sid).to_owned(),
            channel: (*cid).to_owned(),
        }),
        _ => None,
    }
}

/// Iterate the segment-boundary prefixes of `channel`, shortest first:
/// `a:b:c` yields `a`, `a:b`, `a:b:c`.
pub fn prefixes(channel: &str) -> impl Iterator<Item = &str> {
    channel
        .match_indices(':')
        .map(move |(i, _)| &channel[..i])
        .chain(std::iter::once(channel))
}

/// `user:{sub}`: the channel tree every session is subscribed to after HELLO.
pub fn user_channel(sub: &str) -> String {
    format!("user:{sub}")
}

/// The root of a channel: its first two segments (`server:s1:channel:c2` →
/// `server:s1`), or `None` when the name has fewer than two segments.
pub fn root_of(channel: &str) -> Option<&str> {
    let first = channel.find(':')?;
    let rest = &channel[first + 1..];
    if rest.is_empty() {
        return None;
    }
    match rest.find(':') {
        Some(i) => Some(&channel[..first + 1 + i]),
        None => Some(channel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roots_and_wildcards() {
        let s = parse_subscription("server:srv_1:*").unwrap();
        assert_eq!(s.name, "server:srv_1");
        assert_eq!(s.root, Root::Server);
        assert_eq!(s.id(), "srv_1");
        assert_eq!(
            parse_subscription("user:alice:notifications").unwrap().id(),
            "alice"
        );
        assert_eq!(parse_subscription("live:x:chat").unwrap().root, Root::Live);
        assert!(parse_subscription("server").is_none());
        assert!(parse_subscription("server:").is_none());
        assert!(parse_subscription("server:*").is_none());
        assert!(parse_subscription("foo:bar").is_none());
        assert!(parse_subscription("server:a*b").is_none());
        assert!(parse_subscription("server:a::b").is_none());
        assert!(parse_subscription("server:a b").is_none());
        assert!(parse_subscription("").is_none());
        assert!(parse_subscription(&format!("live:{}", "x".repeat(300))).is_none());
    }

    #[test]
    fn typing_targets() {
        assert_eq!(
            typing_target("dm:c1"),
            Some(TypingTarget::Dm {
                conversation: "c1".into()
            })
        );
        assert!(matches!(
            typing_target("server:s:channel:c"),
            Some(TypingTarget::ServerChannel { .. })
        ));
        assert_eq!(typing_target("server:s"), None);
        assert_eq!(typing_target("server:s:voice:c"), None);
        assert_eq!(typing_target("live:x:chat"), None);
    }

    #[test]
    fn roots() {
        assert_eq!(root_of("server:s1:channel:c2"), Some("server:s1"));
        assert_eq!(root_of("dm:c9"), Some("dm:c9"));
        assert_eq!(root_of("user"), None);
        assert_eq!(root_of("user:"), None);
        assert_eq!(user_channel("alice"), "user:alice");
    }

    #[test]
    fn prefix_walk() {
        assert_eq!(
            prefixes("a:b:c").collect::<Vec<_>>(),
            vec!["a", "a:b", "a:b:c"]
        );
        assert_eq!(prefixes("a").collect::<Vec<_>>(), vec!["a"]);
    }
}
