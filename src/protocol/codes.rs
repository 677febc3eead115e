//! Close codes and ERROR codes of SPEC §3. The table lives in `xcord_common::codes`
//! (shared with the load tester and checked against the README); this module is
//! its name inside the gateway.

pub use xcord_common::codes::*;
