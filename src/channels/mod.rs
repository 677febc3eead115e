//! Channel names and the rules of who may subscribe (SPEC §4) — shared with the
//! other programs through `xcord_common::channels` — and the channel-prefix trie
//! that maps a published channel to its subscribers.

pub mod trie;

pub use trie::Trie;
pub use xcord_common::channels::{
    self as name, parse_subscription, prefixes, root_of, typing_target, user_channel,
    valid_channel, Root, Subscription, TypingTarget,
};
