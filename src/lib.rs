//! XCORD Gateway: the real-time edge of a Discord-like chat platform.
//!
//! One shard per core owns the sockets it accepted and a channel-prefix trie of
//! their subscriptions (`shard`); one bus thread receives every event once (Redis
//! PSUBSCRIBE `events:*`, or the in-process bus) and routes it only to the shards
//! that want it (`bus`); presence has a thread of its own (`presence`); the admin
//! listener serves metrics and publishing (`admin`); `node` wires them together.
//! See README.md for the shape and SPEC.md for the contract.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod bus;
pub mod channels;
pub mod config;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod shard;
pub mod throttle;
