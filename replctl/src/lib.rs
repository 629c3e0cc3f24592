//! Client library behind `replctl`: a JSON-RPC 2.0 client for the SPDK
//! application's Unix socket, typed params and results of the
//! `bdev_replication_*` methods, and the CLI's argument-to-request mapping.
//!
//! It speaks only the wire protocol, so it builds and runs without SPDK.

pub mod api;
pub mod cli;
pub mod client;
pub mod report;

pub use client::{Client, DEFAULT_SOCKET, Error};
