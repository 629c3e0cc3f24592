//! The native host's block devices behind the engine's [`BlockDevice`]: RAM (`malloc`),
//! files through io_uring (`uring`/`aio`), NVMe-oF/TCP namespaces (`nvme`), and SPDK's test
//! bdevs (`delay`, `error`). [`Dev`] dispatches statically; only the stacked test bdevs box
//! their inner future.

mod delay;
mod error;
mod file;
mod malloc;
mod nvme;

pub use delay::{Delay, DelayParams};
pub use error::{ErrorBdev, InjectParams, IoType};
pub use file::FileBdev;
pub use malloc::Malloc;
pub use nvme::{AttachParams, NvmeController, NvmeNs};

use super::buf::NativeBuf;
use crate::engine::{BlockDevice, IoError};
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;

#[derive(Clone)]
pub enum Dev {
    Malloc(Arc<Malloc>),
    File(Arc<FileBdev>),
    Nvme(Arc<NvmeNs>),
    Delay(Arc<Delay>),
    Error(Arc<ErrorBdev>),
}

impl Dev {
    pub fn same(&self, other: &Dev) -> bool {
        match (self, other) {
            (Dev::Malloc(a), Dev::Malloc(b)) => Arc::ptr_eq(a, b),
            (Dev::File(a), Dev::File(b)) => Arc::ptr_eq(a, b),
            (Dev::Nvme(a), Dev::Nvme(b)) => Arc::ptr_eq(a, b),
            (Dev::Delay(a), Dev::Delay(b)) => Arc::ptr_eq(a, b),
            (Dev::Error(a), Dev::Error(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// A volatile write cache in front of the medium (then flush matters).
    pub fn write_cache(&self) -> bool {
        match self {
            Dev::Malloc(_) => false,
            Dev::File(_) => true,
            Dev::Nvme(n) => n.write_cache(),
            Dev::Delay(d) => d.inner().write_cache(),
            Dev::Error(e) => e.inner().write_cache(),
        }
    }

    pub fn product_name(&self) -> &'static str {
        match self {
            Dev::Malloc(_) => "Malloc disk",
            Dev::File(_) => "URING bdev",
            Dev::Nvme(_) => "NVMe disk",
            Dev::Delay(_) => "delay",
            Dev::Error(_) => "Error disk",
        }
    }

    pub fn driver_specific(&self) -> Value {
        match self {
            Dev::Malloc(_) => json!({}),
            Dev::File(f) => json!({ "uring": { "filename": f.path() } }),
            Dev::Nvme(n) => n.driver_specific(),
            Dev::Delay(d) => json!({ "delay": { "base_bdev_name": d.base_name() } }),
            Dev::Error(e) => json!({ "error": { "base_bdev_name": e.base_name() } }),
        }
    }
}

fn boxed<'a, T>(
    f: impl Future<Output = T> + 'a,
) -> std::pin::Pin<Box<dyn Future<Output = T> + 'a>> {
    Box::pin(f)
}

impl BlockDevice for Dev {
    type Buf = NativeBuf;

    fn block_size(&self) -> u32 {
        match self {
            Dev::Malloc(d) => d.block_size(),
            Dev::File(d) => d.block_size(),
            Dev::Nvme(d) => d.block_size(),
            Dev::Delay(d) => d.inner().block_size(),
            Dev::Error(d) => d.inner().block_size(),
        }
    }

    fn num_blocks(&self) -> u64 {
        match self {
            Dev::Malloc(d) => d.num_blocks(),
            Dev::File(d) => d.num_blocks(),
            Dev::Nvme(d) => d.num_blocks(),
            Dev::Delay(d) => d.inner().num_blocks(),
            Dev::Error(d) => d.inner().num_blocks(),
        }
    }

    fn alloc_buf(&self, len: usize) -> Result<NativeBuf, IoError> {
        NativeBuf::alloc_uninit(len).ok_or(IoError::NoMem)
    }

    async fn read(&self, lba: u64, buf: NativeBuf) -> Result<(), IoError> {
        match self {
            Dev::Malloc(d) => d.read(lba, &buf),
            Dev::File(d) => d.read(lba, buf).await,
            Dev::Nvme(d) => d.read(lba, buf).await,
            Dev::Delay(d) => d.op(IoType::Read, |i| boxed(i.read(lba, buf))).await,
            Dev::Error(d) => d.op(IoType::Read, |i| boxed(i.read(lba, buf))).await,
        }
    }

    async fn write(&self, lba: u64, buf: NativeBuf) -> Result<(), IoError> {
        match self {
            Dev::Malloc(d) => d.write(lba, &buf),
            Dev::File(d) => d.write(lba, buf).await,
            Dev::Nvme(d) => d.write(lba, buf).await,
            Dev::Delay(d) => d.op(IoType::Write, |i| boxed(i.write(lba, buf))).await,
            Dev::Error(d) => d.op(IoType::Write, |i| boxed(i.write(lba, buf))).await,
        }
    }

    async fn write_zeroes(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        match self {
            Dev::Malloc(d) => d.zero(lba, nblocks),
            Dev::File(d) => d.write_zeroes(lba, nblocks).await,
            Dev::Nvme(d) => d.write_zeroes(lba, nblocks).await,
            Dev::Delay(d) => {
                d.op(IoType::WriteZeroes, |i| boxed(i.write_zeroes(lba, nblocks)))
                    .await
            }
            Dev::Error(d) => {
                d.op(IoType::WriteZeroes, |i| boxed(i.write_zeroes(lba, nblocks)))
                    .await
            }
        }
    }

    async fn unmap(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        match self {
            Dev::Malloc(d) => d.zero(lba, nblocks),
            Dev::File(d) => d.unmap(lba, nblocks).await,
            Dev::Nvme(d) => d.unmap(lba, nblocks).await,
            Dev::Delay(d) => d.op(IoType::Unmap, |i| boxed(i.unmap(lba, nblocks))).await,
            Dev::Error(d) => d.op(IoType::Unmap, |i| boxed(i.unmap(lba, nblocks))).await,
        }
    }

    async fn flush(&self) -> Result<(), IoError> {
        match self {
            Dev::Malloc(_) => Ok(()),
            Dev::File(d) => d.flush().await,
            Dev::Nvme(d) => d.flush().await,
            Dev::Delay(d) => d.op(IoType::Flush, |i| boxed(i.flush())).await,
            Dev::Error(d) => d.op(IoType::Flush, |i| boxed(i.flush())).await,
        }
    }

    fn supports_flush(&self) -> bool {
        true
    }
}

/// Checks `lba..lba+nblocks` against a device of `num_blocks`.
pub(crate) fn check_range(lba: u64, nblocks: u64, num_blocks: u64) -> Result<(), IoError> {
    match lba.checked_add(nblocks) {
        Some(end) if end <= num_blocks => Ok(()),
        _ => Err(IoError::OutOfRange),
    }
}
