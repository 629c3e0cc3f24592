use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// A failed block I/O, as a host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum IoError {
    #[error("I/O error")]
    Io,
    #[error("request outside the device")]
    OutOfRange,
    #[error("out of memory for the request")]
    NoMem,
}

impl IoError {
    /// Negative errno, as SPDK reports it.
    pub fn errno(self) -> i32 {
        match self {
            IoError::Io => -5,
            IoError::OutOfRange => -22,
            IoError::NoMem => -12,
        }
    }
}

/// A host's data buffer: a cheap, clonable handle to DMA-style memory. Devices fill it on
/// read and take data from it on write, through `&self`, as DMA does. The engine never lets
/// two operations write one region at once. Keeping a clone keeps the memory valid, which
/// is how a timed-out remote write keeps its data alive until it really ends.
pub trait IoBuf: Clone + 'static {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A view of `len` bytes from `offset` sharing the same memory.
    fn slice(&self, offset: usize, len: usize) -> Self;
    fn fill_zero(&self);
    /// Whether both buffers hold the same bytes (online verify). Only called on buffers
    /// no device is using.
    fn bytes_equal(&self, other: &Self) -> bool;
}

/// What the engine needs from a block device (the base disk, an overlay, a primary leg).
/// Offsets and lengths are in blocks; a buffer's length gives the block count.
pub trait BlockDevice: 'static {
    type Buf: IoBuf;
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    /// A buffer suitable for I/O to this device (DMA-able memory on SPDK), its contents
    /// unspecified: callers fill it before reading it. `Err(NoMem)` when none can be had
    /// now (the host retries the request later).
    fn alloc_buf(&self, len: usize) -> Result<Self::Buf, IoError>;
    fn read(&self, lba: u64, buf: Self::Buf) -> impl Future<Output = Result<(), IoError>>;
    fn write(&self, lba: u64, buf: Self::Buf) -> impl Future<Output = Result<(), IoError>>;
    fn write_zeroes(&self, lba: u64, nblocks: u64) -> impl Future<Output = Result<(), IoError>>;
    fn unmap(&self, lba: u64, nblocks: u64) -> impl Future<Output = Result<(), IoError>>;
    fn flush(&self) -> impl Future<Output = Result<(), IoError>>;
    /// Whether the device takes flushes at all; the engine skips flushing those that do
    /// not (a null bdev, an lvol without FLUSH) instead of failing.
    fn supports_flush(&self) -> bool {
        true
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for Arc<T> {
    type Buf = T::Buf;
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn num_blocks(&self) -> u64 {
        (**self).num_blocks()
    }
    fn alloc_buf(&self, len: usize) -> Result<Self::Buf, IoError> {
        (**self).alloc_buf(len)
    }
    fn read(&self, lba: u64, buf: Self::Buf) -> impl Future<Output = Result<(), IoError>> {
        (**self).read(lba, buf)
    }
    fn write(&self, lba: u64, buf: Self::Buf) -> impl Future<Output = Result<(), IoError>> {
        (**self).write(lba, buf)
    }
    fn write_zeroes(&self, lba: u64, nblocks: u64) -> impl Future<Output = Result<(), IoError>> {
        (**self).write_zeroes(lba, nblocks)
    }
    fn unmap(&self, lba: u64, nblocks: u64) -> impl Future<Output = Result<(), IoError>> {
        (**self).unmap(lba, nblocks)
    }
    fn flush(&self) -> impl Future<Output = Result<(), IoError>> {
        (**self).flush()
    }
    fn supports_flush(&self) -> bool {
        (**self).supports_flush()
    }
}

/// A future ready at its second poll; at the first it hands the task's waker to `park`,
/// which decides when the task runs again (a self-wake: at the executor's next turn). What
/// [`Runtime::yield_now`] is made of.
pub fn yield_with(
    mut park: impl FnMut(&std::task::Waker),
) -> impl std::future::Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        park(cx.waker());
        std::task::Poll::Pending
    })
}

/// How long a background job (merge, sync, verify) backs off when out of buffers.
pub const JOB_BACKOFF: Duration = Duration::from_millis(1);

/// Timers and detached tasks, from the host (reactor pollers on SPDK).
pub trait Runtime {
    fn sleep(&self, d: Duration) -> impl Future<Output = ()>;
    /// Lets the reactor run one turn (its other tasks, completions and due timers) before
    /// the caller goes on.
    fn yield_now(&self) -> impl Future<Output = ()>;
    /// Runs `task` to completion independently of the caller.
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>);
    /// Between a background job's steps (merge clusters, sync regions): out of buffers
    /// (`backoff`), [`JOB_BACKOFF`]; otherwise one reactor turn, so a job over devices that
    /// complete at once does not hold the reactor from the guests.
    fn pause(&self, backoff: bool) -> impl Future<Output = ()> {
        async move {
            if backoff {
                self.sleep(JOB_BACKOFF).await
            } else {
                self.yield_now().await
            }
        }
    }
}

/// A modifying request, routed as one unit by the engine.
#[derive(Clone)]
pub(crate) enum WriteOp<B> {
    Data(B),
    Zeroes(u64),
    Unmap(u64),
}

impl<B: IoBuf> WriteOp<B> {
    pub(crate) fn nblocks(&self, block_size: u32) -> u64 {
        match self {
            WriteOp::Data(b) => b.len() as u64 / u64::from(block_size),
            WriteOp::Zeroes(n) | WriteOp::Unmap(n) => *n,
        }
    }

    /// The part of this request covering `nblocks` from block `skip`.
    pub(crate) fn part(&self, skip: u64, nblocks: u64, block_size: u32) -> Self {
        let bs = u64::from(block_size);
        match self {
            WriteOp::Data(b) => {
                WriteOp::Data(b.slice((skip * bs) as usize, (nblocks * bs) as usize))
            }
            WriteOp::Zeroes(_) => WriteOp::Zeroes(nblocks),
            WriteOp::Unmap(_) => WriteOp::Unmap(nblocks),
        }
    }

    pub(crate) async fn issue<D: BlockDevice<Buf = B>>(
        self,
        dev: &D,
        lba: u64,
    ) -> Result<(), IoError> {
        match self {
            WriteOp::Data(b) => dev.write(lba, b).await,
            WriteOp::Zeroes(n) => dev.write_zeroes(lba, n).await,
            WriteOp::Unmap(n) => dev.unmap(lba, n).await,
        }
    }
}
