//! COLO block replication for SPDK.
//!
//! [`engine`] holds the replication rules (stages, copy-before-write, checkpoint, failover
//! merge, primary forwarding) in plain Rust with no SPDK types; the SPDK host maps bdev I/O,
//! channels, pollers and RPCs onto it.

pub mod engine;

#[cfg(spdk)]
pub mod host;
