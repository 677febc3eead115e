//! The client wire protocol of SPEC §3: what a client may send (`messages`), the
//! close and ERROR codes (`codes`), and the WebSocket frame bytes (`frame`).
//!
//! Invariant: decoding never panics on any input; every malformed input maps to a
//! close code or an `ERROR` reply, as SPEC §3 lists them.

pub mod codes;
pub mod deflate;
pub mod depth;
pub mod frame;
pub mod messages;

pub use codes::{CloseCode, ErrorCode};
pub use messages::{decode, ClientMsg, CommandKind, DecodeError};
