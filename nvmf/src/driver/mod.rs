//! Thin drivers running the sans-I/O state machines on std::net sockets with threads:
//! [`TargetServer`] for the target (a reader and a worker thread per connection),
//! [`Controller`] for the host (a reader thread per queue, or the caller's runtime through
//! an [`RxDriver`]; submitters send themselves, a writer thread takes only what the socket
//! does not). The native host serves its
//! target connections on its io_uring reactors instead (`src/native/nvmf_tcp.rs`), which
//! saves the thread handoffs per request.

mod block_on;
mod bringup;
mod controller;
mod listener;
mod poller;
mod qpair;
mod target;

pub use block_on::{block_on, block_on_timeout};
pub use controller::{
    Blocking, ConnectOptions, Controller, ControllerInfo, NamespaceInfo, discover,
};
pub use listener::Listener;
pub use poller::{PollState, PollThread, Poller};
pub use qpair::{QueueRx, QueueTx, RxDriver};
pub use target::{TargetServer, serve_connection};

use crate::nvme::cmd::Status;

/// What a host operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("socket: {0}")]
    Io(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("NVMe status {0}")]
    Status(Status),
    #[error("Connect rejected: {0}")]
    Connect(Status),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("controller lost (ctrlr_loss_timeout passed)")]
    ControllerLost,
    #[error("I/O failed fast while reconnecting (fast_io_fail_timeout passed)")]
    FastIoFail,
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("controller closed")]
    Closed,
    #[error("controller misbehaved: {0}")]
    Protocol(String),
}
