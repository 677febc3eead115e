//! `xcord-tune`: per-host tuning and capacity planning for the XCORD Gateway.
//!
//! - [`check`]: reads the host (`/proc`, or a fixture with the same layout) and
//!   grades each setting against what N connections need.
//! - [`profile`]: writes the sysctl.d file, limits.d lines and systemd unit for a target.
//! - [`capacity`]: per-host limits and host counts from an `xcord-loadtest` result.
//! - [`shards`]: the `--shards auto` rule and its reasoning.
//!
//! [`needs`] holds the formulas shared by `check` and `profile`; [`host`] reads the
//! host; [`result`] reads load-test results; [`units`] formats numbers.

pub mod capacity;
pub mod check;
pub mod host;
pub mod needs;
pub mod profile;
pub mod result;
pub mod shards;
pub mod units;
