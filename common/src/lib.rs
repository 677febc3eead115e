//! What every program of the XCORD workspace shares, so that no two copies can
//! drift: the JWT claims and how a token is signed, the close and ERROR codes with
//! the reconnect advice that goes with each, the channel-name rules of SPEC §4,
//! byte and duration parsing, and the host sizing rules (shard count, open files).
//!
//! Nothing here does I/O or keeps state; the gateway, `xcord-loadtest`,
//! `xcord-tune`, the integration tests and the fuzz targets all link it.

pub mod channels;
pub mod claims;
pub mod clock;
pub mod codes;
pub mod host;
pub mod result;
pub mod units;

pub use claims::{Audience, Claims};
