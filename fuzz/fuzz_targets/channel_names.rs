//! Channel-name rules (SPEC §4) on arbitrary strings: `valid_channel`,
//! `parse_subscription`, `typing_target` and `prefixes`.
//!
//! Checks: never panics, and each function equals an independent byte-level model:
//! a valid name is <= 255 bytes of ':'-separated segments of 1..=128 bytes of
//! `[A-Za-z0-9_.@=+-]`; a subscription strips one trailing ":*", needs a valid name
//! with a known root (user/dm/server/live) and a second segment, whose bounds are
//! `id_start..id_end`; a typing target is exactly `dm:X` or `server:S:channel:C`;
//! `prefixes` yields every segment-boundary prefix, shortest first, ending with the
//! whole name.
//!
//! Input: the first byte picks how the rest becomes a string: raw UTF-8, a sequence
//! of name tokens, or runs of one letter (to reach the 128/255-byte limits).

#![no_main]

use libfuzzer_sys::fuzz_target;
use xcord_gateway::channels::name::{
    parse_subscription, prefixes, typing_target, valid_channel, Root, TypingTarget, MAX_NAME_LEN,
    MAX_SEGMENT_LEN,
};

const TOKENS: [&str; 24] = [
    "user", "dm", "server", "live", "channel", ":", ":", "*", ":*", "a", "b", "1", "_", "-", ".",
    "@", "=", "+", " ", "\u{e9}", "\u{0}", "Z", "voice", "::",
];

fn to_string(data: &[u8]) -> Option<String> {
    let (&mode, rest) = data.split_first()?;
    match mode % 3 {
        0 => std::str::from_utf8(rest).ok().map(str::to_owned),
        1 => Some(
            rest.iter()
                .map(|b| TOKENS[*b as usize % TOKENS.len()])
                .collect(),
        ),
        _ => {
            // Pairs (token, run length): a token then `len` letters, segments joined by ':'.
            let mut s = String::new();
            for pair in rest.chunks(2) {
                let tok = TOKENS[pair[0] as usize % TOKENS.len()];
                s.push_str(tok);
                if let Some(&n) = pair.get(1) {
                    s.extend(std::iter::repeat('x').take(n as usize));
                }
            }
            Some(s)
        }
    }
}

fn model_segment(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_uppercase()
                || b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b"_-.@=+".contains(&b)
        })
}

fn model_valid(name: &str) -> bool {
    name.len() <= 255 && name.split(':').all(model_segment)
}

fuzz_target!(|data: &[u8]| {
    let Some(s) = to_string(data) else { return };
    let s = s.as_str();
    assert_eq!(MAX_NAME_LEN, 255);
    assert_eq!(MAX_SEGMENT_LEN, 128);

    // valid_channel
    let valid = valid_channel(s);
    assert_eq!(valid, model_valid(s), "valid_channel({s:?})");

    // parse_subscription
    let name = s.strip_suffix(":*").unwrap_or(s);
    let segs: Vec<&str> = name.split(':').collect();
    let root = match segs[0] {
        "user" => Some(Root::User),
        "dm" => Some(Root::Dm),
        "server" => Some(Root::Server),
        "live" => Some(Root::Live),
        _ => None,
    };
    let want = model_valid(name) && root.is_some() && segs.len() >= 2;
    match parse_subscription(s) {
        None => assert!(
            !want,
            "parse_subscription({s:?}) refused a valid subscription"
        ),
        Some(sub) => {
            assert!(want, "parse_subscription({s:?}) accepted {sub:?}");
            assert_eq!(sub.name, name);
            assert_eq!(Some(sub.root), root);
            assert_eq!(sub.id_start, segs[0].len() + 1);
            assert_eq!(sub.id_end, sub.id_start + segs[1].len());
            assert_eq!(sub.id(), segs[1]);
            assert!(valid_channel(&sub.name));
            // Parsing is idempotent on the normalised name, and ":*" is the same subscription.
            assert_eq!(parse_subscription(&sub.name).as_ref(), Some(&sub));
            assert_eq!(
                parse_subscription(&format!("{}:*", sub.name)).as_ref(),
                Some(&sub)
            );
        }
    }

    // typing_target
    let all: Vec<&str> = s.split(':').collect();
    let want = if !model_valid(s) {
        None
    } else {
        match all.as_slice() {
            ["dm", c] => Some(TypingTarget::Dm {
                conversation: (*c).to_owned(),
            }),
            ["server", sid, "channel", cid] => Some(TypingTarget::ServerChannel {
                server: (*sid).to_owned(),
                channel: (*cid).to_owned(),
            }),
            _ => None,
        }
    };
    assert_eq!(typing_target(s), want, "typing_target({s:?})");

    // prefixes
    let got: Vec<&str> = prefixes(s).collect();
    let mut want = Vec::new();
    for i in 1..=all.len() {
        want.push(all[..i].join(":"));
    }
    assert_eq!(got, want, "prefixes({s:?})");
    assert_eq!(got.last().copied(), Some(s));
    for p in &got {
        assert!(s.starts_with(p));
        assert!(p.len() == s.len() || s.as_bytes()[p.len()] == b':');
    }
});
