//! COLO block replication for SPDK.
//!
//! [`engine`] holds the replication rules (stages, copy-before-write, checkpoint, failover
//! merge, primary forwarding) in plain Rust with no SPDK types; [`control`] is the control plane
//! both hosts share (RPC params, validation, errors, status, saved config); the SPDK host
//! maps bdev I/O, channels, pollers and RPCs onto them.

pub mod control;
pub mod engine;
pub mod native;

#[cfg(spdk)]
pub mod host;

/// Whether this build found SPDK (and so has the SPDK host and a working
/// `replication_tgt`).
pub const SPDK_FOUND: bool = cfg!(spdk);

/// SPDK's install prefix as found at build time (where `bdevperf`, `spdk_dd` live in
/// `bin/`), if any.
pub const SPDK_PREFIX: Option<&str> = option_env!("SPDK_PREFIX");
