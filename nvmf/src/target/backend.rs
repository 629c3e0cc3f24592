//! The namespace backend seam. The connection state machine never performs I/O itself:
//! it emits [`IoRequest`]s and the driver hands them to the namespace's [`Backend`], which
//! calls the completion exactly once from any thread. This lets the replication engine's
//! async block devices serve namespaces later; [`RamBackend`] serves tests.

use std::sync::{Arc, RwLock};

/// A block operation in blocks of the namespace's block size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOp {
    Read {
        lba: u64,
        nblocks: u32,
    },
    Write {
        lba: u64,
        data: Vec<u8>,
    },
    Flush,
    WriteZeroes {
        lba: u64,
        nblocks: u32,
    },
    /// Deallocate (unmap) ranges of (lba, nblocks).
    Deallocate {
        ranges: Vec<(u64, u32)>,
    },
}

/// Why a backend operation failed; each maps to an NVMe status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NsError {
    #[error("media error")]
    Io,
    #[error("LBA out of range")]
    OutOfRange,
    #[error("namespace not ready")]
    NotReady,
    #[error("capacity exceeded")]
    NoSpace,
    #[error("internal error")]
    Internal,
}

/// The result of an operation: read data (empty for the others) or an error.
pub type IoResult = Result<Vec<u8>, NsError>;

/// Called exactly once with the outcome of a submitted operation.
pub type IoDone = Box<dyn FnOnce(IoResult) + Send>;

pub trait Backend: Send + Sync + 'static {
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    /// Whether a volatile write cache exists (then Flush is advertised and meaningful).
    fn volatile_write_cache(&self) -> bool {
        false
    }
    /// Starts `op`; `done` may run before this returns (synchronous backends).
    fn submit(&self, op: IoOp, done: IoDone);
}

/// An I/O request emitted by a target connection; complete it with
/// [`crate::target::TargetConn::complete_io`] using the same tag.
pub struct IoRequest {
    pub tag: u64,
    pub nsid: u32,
    pub backend: Arc<dyn Backend>,
    pub op: IoOp,
}

impl std::fmt::Debug for IoRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoRequest")
            .field("tag", &self.tag)
            .field("nsid", &self.nsid)
            .field("op", &self.op)
            .finish()
    }
}

/// A RAM disk. Reads of never-written or deallocated blocks return zeroes.
pub struct RamBackend {
    block_size: u32,
    num_blocks: u64,
    vwc: bool,
    data: RwLock<Vec<u8>>,
}

impl RamBackend {
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        let len = usize::try_from(u64::from(block_size).saturating_mul(num_blocks)).unwrap_or(0);
        Self {
            block_size,
            num_blocks,
            vwc: false,
            data: RwLock::new(vec![0u8; len]),
        }
    }

    /// Advertise a volatile write cache (so hosts send Flush).
    pub fn with_write_cache(mut self, vwc: bool) -> Self {
        self.vwc = vwc;
        self
    }

    fn range(&self, lba: u64, nblocks: u64) -> Result<std::ops::Range<usize>, NsError> {
        let end = lba.checked_add(nblocks).ok_or(NsError::OutOfRange)?;
        if end > self.num_blocks {
            return Err(NsError::OutOfRange);
        }
        let bs = u64::from(self.block_size);
        let s = usize::try_from(lba * bs).map_err(|_| NsError::OutOfRange)?;
        let e = usize::try_from(end * bs).map_err(|_| NsError::OutOfRange)?;
        Ok(s..e)
    }

    fn run(&self, op: IoOp) -> IoResult {
        match op {
            IoOp::Read { lba, nblocks } => {
                let r = self.range(lba, u64::from(nblocks))?;
                let d = self.data.read().map_err(|_| NsError::Internal)?;
                Ok(d.get(r).ok_or(NsError::OutOfRange)?.to_vec())
            }
            IoOp::Write { lba, data } => {
                let n = data.len() as u64 / u64::from(self.block_size);
                let r = self.range(lba, n)?;
                let mut d = self.data.write().map_err(|_| NsError::Internal)?;
                let dst = d.get_mut(r).ok_or(NsError::OutOfRange)?;
                if dst.len() != data.len() {
                    return Err(NsError::Internal);
                }
                dst.copy_from_slice(&data);
                Ok(Vec::new())
            }
            IoOp::Flush => Ok(Vec::new()),
            IoOp::WriteZeroes { lba, nblocks } => {
                let r = self.range(lba, u64::from(nblocks))?;
                let mut d = self.data.write().map_err(|_| NsError::Internal)?;
                d.get_mut(r).ok_or(NsError::OutOfRange)?.fill(0);
                Ok(Vec::new())
            }
            IoOp::Deallocate { ranges } => {
                let mut d = self.data.write().map_err(|_| NsError::Internal)?;
                for (lba, n) in ranges {
                    let r = self.range(lba, u64::from(n))?;
                    d.get_mut(r).ok_or(NsError::OutOfRange)?.fill(0);
                }
                Ok(Vec::new())
            }
        }
    }
}

impl Backend for RamBackend {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn volatile_write_cache(&self) -> bool {
        self.vwc
    }
    fn submit(&self, op: IoOp, done: IoDone) {
        done(self.run(op));
    }
}
