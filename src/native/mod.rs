//! The native host: the same product as the SPDK host (same RPCs, JSON config files and
//! NVMe-oF/TCP exports) without SPDK. Reactors on io_uring, RAM/file/NVMe-oF bdevs, the
//! project's NVMe-oF/TCP target and initiator, vhost-user-blk, and an SPDK-compatible
//! JSON-RPC server; the replication RPCs go through the shared control plane.

pub mod app;
pub mod bdev;
pub mod buf;
pub mod config;
pub mod framework;
pub mod host;
pub mod node;
pub mod nvmf;
pub mod nvmf_tcp;
pub mod reactor;
pub mod rpc;
pub mod rpc_server;
pub mod vhost;
