//! A vhost-user-blk device backend on rust-vmm's `vhost-user-backend`, generic over the
//! block device behind it ([`BlockBackend`]).
//!
//! The vring worker thread drains the available ring, parses and validates each request
//! and hands it to the backend; the backend completes it from any thread, and the
//! completion writes the data and status byte into guest memory, adds the chain to the
//! used ring and signals the guest. Nothing the guest puts in a ring can panic the
//! device: malformed chains and out-of-range or unaligned requests are answered with
//! `VIRTIO_BLK_S_IOERR` / `VIRTIO_BLK_S_UNSUPP`.

mod device;
mod request;
mod server;

pub use request::{MAX_REQUEST_BYTES, SECTOR_SIZE};
pub use server::{Controller, ControllerOptions};

/// A block request as the device hands it to the backend, in blocks of `block_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Read {
        lba: u64,
        nblocks: u64,
    },
    Write {
        lba: u64,
        data: Vec<u8>,
    },
    Flush,
    /// Ranges of (lba, nblocks).
    Discard {
        ranges: Vec<(u64, u64)>,
    },
    /// Ranges of (lba, nblocks); `unmap` is the guest's hint that the range may be
    /// deallocated (the result must read as zeroes either way).
    WriteZeroes {
        ranges: Vec<(u64, u64)>,
        unmap: bool,
    },
}

/// How a request failed, as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    IoErr,
    Unsupp,
}

impl Status {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Status::IoErr => virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8,
            Status::Unsupp => virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8,
        }
    }
}

/// Called exactly once per request, from any thread: read data (`Request::Read`; empty
/// otherwise) or the failure.
pub type Done = Box<dyn FnOnce(Result<Vec<u8>, Status>) + Send>;

/// The block device a controller serves.
pub trait BlockBackend: Send + Sync + 'static {
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    /// A volatile write cache (VIRTIO_BLK_F_FLUSH is offered only then).
    fn write_cache(&self) -> bool;
    fn read_only(&self) -> bool;
    /// Runs `req` asynchronously; `done` may be called on any thread, even before
    /// `submit` returns.
    fn submit(&self, req: Request, done: Done);
}

/// Errors creating or running a controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("socket {0} already exists")]
    SocketExists(String),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot start controller thread: {0}")]
    Thread(std::io::Error),
}
