//! Channel names and the rules of who may subscribe (SPEC §4), and the
//! channel-prefix trie that maps a published channel to its subscribers.

pub mod name;
pub mod trie;

pub use name::{parse_subscription, typing_target, Root, Subscription, TypingTarget};
pub use trie::Trie;
