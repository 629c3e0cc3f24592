//! A replication bdev on the native host ([`Node`]) and what an export serves
//! ([`Exported`]): a plain bdev, or one of a replication bdev's faces (the primary's bdev,
//! the secondary's top or ingress), each routed through the engine's driver methods.

use super::bdev::Dev;
use super::buf::NativeBuf;
use super::reactor::{NativeRuntime, Reactor, on_reactor, sleep, spawn_local};
use crate::control::{Replica, RoleRef};
use crate::engine::{BlockDevice, IoError};
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub struct Node {
    pub replica: Replica<Dev>,
    /// Unregistered: exports still holding it fail their I/O as "not ready".
    pub gone: AtomicBool,
    /// Overlays released at `done` (no longer ours to release at delete).
    pub overlays_released: AtomicBool,
}

impl AsRef<Replica<Dev>> for Node {
    fn as_ref(&self) -> &Replica<Dev> {
        &self.replica
    }
}

impl Node {
    pub fn new(replica: Replica<Dev>) -> Self {
        Self {
            replica,
            gone: AtomicBool::new(false),
            overlays_released: AtomicBool::new(false),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Face {
    /// The primary's bdev, or the secondary's top (the SVM's disk).
    Top,
    Ingress,
}

/// What a name in the bdev namespace resolves to for an export.
#[derive(Clone)]
pub enum Exported {
    Dev(Dev),
    Replica(Arc<Node>, Face),
}

/// A block request as exports hand it over, in blocks.
pub enum BlockOp {
    Read { lba: u64, nblocks: u64 },
    Write { lba: u64, data: Vec<u8> },
    Flush,
    WriteZeroes { lba: u64, nblocks: u64 },
    Unmap { lba: u64, nblocks: u64 },
}

/// Why an exported request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportError {
    Io(IoError),
    /// The bdev was deleted under the export.
    Gone,
}

/// How often and how long a request out of buffers is retried (SPDK's NOMEM requeue).
const NOMEM_RETRIES: u32 = 1000;
const NOMEM_BACKOFF: Duration = Duration::from_micros(100);

impl Exported {
    fn dev_like(&self) -> &Dev {
        match self {
            Exported::Dev(d) => d,
            // The top's size is the base's (also the local leg after a reprotect).
            Exported::Replica(n, _) => &n.replica.legs[0],
        }
    }

    pub fn block_size(&self) -> u32 {
        self.dev_like().block_size()
    }

    pub fn num_blocks(&self) -> u64 {
        self.dev_like().num_blocks()
    }

    /// A volatile write cache in front of any leg (spec: flushes must reach every leg).
    pub fn write_cache(&self) -> bool {
        match self {
            Exported::Dev(d) => d.write_cache(),
            Exported::Replica(n, _) => n.replica.current_legs().iter().any(Dev::write_cache),
        }
    }

    /// Runs `op` to its end on the calling reactor; read data comes back. The transport's
    /// buffers are adopted, never copied, and kept across NoMem retries.
    pub async fn run(&self, mut op: BlockOp) -> Result<Vec<u8>, ExportError> {
        let bs = u64::from(self.block_size());
        let (buf, is_read) = match &op {
            BlockOp::Read { nblocks, .. } => {
                let len = nblocks
                    .checked_mul(bs)
                    .and_then(|l| usize::try_from(l).ok())
                    .ok_or(ExportError::Io(IoError::OutOfRange))?;
                (Some(NativeBuf::from_vec(read_buf(len))), true)
            }
            _ => (None, false),
        };
        let buf = match &mut op {
            BlockOp::Write { data, .. } => Some(NativeBuf::from_vec(std::mem::take(data))),
            _ => buf,
        };
        let mut tries = 0;
        loop {
            if let Exported::Replica(n, _) = self
                && n.gone.load(Ordering::Acquire)
            {
                return Err(ExportError::Gone);
            }
            let r = match (&op, &buf) {
                (BlockOp::Read { lba, .. }, Some(b)) => self.read(*lba, b.clone()).await,
                (BlockOp::Write { lba, .. }, Some(b)) => self.write(*lba, b.clone()).await,
                (BlockOp::Flush, _) => self.flush().await,
                (BlockOp::WriteZeroes { lba, nblocks }, _) => {
                    self.write_zeroes(*lba, *nblocks).await
                }
                (BlockOp::Unmap { lba, nblocks }, _) => self.unmap(*lba, *nblocks).await,
                _ => Err(IoError::Io),
            };
            match r {
                Err(IoError::NoMem) if tries < NOMEM_RETRIES => {
                    tries += 1;
                    sleep(NOMEM_BACKOFF).await;
                }
                Err(e) => return Err(ExportError::Io(e)),
                Ok(()) if is_read => return Ok(buf.map(NativeBuf::into_vec).unwrap_or_default()),
                Ok(()) => return Ok(Vec::new()),
            }
        }
    }

    async fn read(&self, lba: u64, buf: NativeBuf) -> Result<(), IoError> {
        match self {
            Exported::Dev(d) => d.read(lba, buf).await,
            Exported::Replica(n, face) => match (n.replica.role(), face) {
                (RoleRef::Primary(p), Face::Top) => p.read(lba, buf).await,
                // A reprotected secondary's former ingress: refused (EIO), as at done.
                (RoleRef::Primary(_), Face::Ingress) => Err(IoError::Io),
                (RoleRef::Secondary(s), Face::Top) => s.top_read(lba, buf).await,
                (RoleRef::Secondary(s), Face::Ingress) => s.ingress_read(lba, buf).await,
            },
        }
    }

    async fn write(&self, lba: u64, buf: NativeBuf) -> Result<(), IoError> {
        match self {
            Exported::Dev(d) => d.write(lba, buf).await,
            Exported::Replica(n, face) => match (n.replica.role(), face) {
                (RoleRef::Primary(p), Face::Top) => p.write(&NativeRuntime, lba, buf).await,
                // A reprotected secondary's former ingress: refused (EIO), as at done.
                (RoleRef::Primary(_), Face::Ingress) => Err(IoError::Io),
                (RoleRef::Secondary(s), Face::Top) => s.top_write(lba, buf).await,
                (RoleRef::Secondary(s), Face::Ingress) => s.ingress_write(lba, buf).await,
            },
        }
    }

    async fn write_zeroes(&self, lba: u64, n: u64) -> Result<(), IoError> {
        match self {
            Exported::Dev(d) => d.write_zeroes(lba, n).await,
            Exported::Replica(node, face) => match (node.replica.role(), face) {
                (RoleRef::Primary(p), Face::Top) => p.write_zeroes(&NativeRuntime, lba, n).await,
                // A reprotected secondary's former ingress: refused (EIO), as at done.
                (RoleRef::Primary(_), Face::Ingress) => Err(IoError::Io),
                (RoleRef::Secondary(s), Face::Top) => s.top_write_zeroes(lba, n).await,
                (RoleRef::Secondary(s), Face::Ingress) => s.ingress_write_zeroes(lba, n).await,
            },
        }
    }

    async fn unmap(&self, lba: u64, n: u64) -> Result<(), IoError> {
        match self {
            Exported::Dev(d) => d.unmap(lba, n).await,
            Exported::Replica(node, face) => match (node.replica.role(), face) {
                (RoleRef::Primary(p), Face::Top) => p.unmap(&NativeRuntime, lba, n).await,
                // A reprotected secondary's former ingress: refused (EIO), as at done.
                (RoleRef::Primary(_), Face::Ingress) => Err(IoError::Io),
                (RoleRef::Secondary(s), Face::Top) => s.top_unmap(lba, n).await,
                (RoleRef::Secondary(s), Face::Ingress) => s.ingress_unmap(lba, n).await,
            },
        }
    }

    async fn flush(&self) -> Result<(), IoError> {
        match self {
            Exported::Dev(d) => d.flush().await,
            Exported::Replica(n, face) => match (n.replica.role(), face) {
                (RoleRef::Primary(p), Face::Top) => p.flush(&NativeRuntime).await,
                // A reprotected secondary's former ingress: refused (EIO), as at done.
                (RoleRef::Primary(_), Face::Ingress) => Err(IoError::Io),
                (RoleRef::Secondary(s), Face::Top) => s.top_flush().await,
                (RoleRef::Secondary(s), Face::Ingress) => s.ingress_flush().await,
            },
        }
    }
}

/// Read buffers kept per thread for reuse: a transport hands a read's buffer back once
/// the data is on its way ([`recycle_read_buf`]). Saves an allocation and a free per read
/// (with glibc, each 4 KiB allocation also consolidates the small chunks freed meanwhile).
const POOL_BUFS: usize = 64;
const POOL_MAX_LEN: usize = 128 * 1024;

thread_local! {
    static READ_BUFS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed buffer of `len` bytes, reused when one is at hand. Zeroed like a fresh one, so
/// a device that fills less than asked can never expose an earlier request's data.
fn read_buf(len: usize) -> Vec<u8> {
    let reused = READ_BUFS.with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        let i = p.iter().rposition(|b| b.capacity() >= len)?;
        Some(p.swap_remove(i))
    });
    match reused {
        Some(mut b) => {
            b.clear();
            b.resize(len, 0);
            b
        }
        None => vec![0u8; len],
    }
}

/// Gives a read buffer back for [`read_buf`] on this thread.
pub fn recycle_read_buf(b: Vec<u8>) {
    if b.capacity() > POOL_MAX_LEN {
        return;
    }
    READ_BUFS.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut()
            && p.len() < POOL_BUFS
        {
            p.push(b);
        }
    });
}

static NEXT_REACTOR: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The reactor serving the transport connection (or virtqueue) whose thread this is.
    static CONN_REACTOR: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `ops` in order and calls `done` with the last read's data, or the first error.
/// Called on a reactor (the native NVMe/TCP connections), the ops run right there, with no
/// message to another thread; called from a transport thread (vhost), on that thread's
/// reactor, chosen round robin at its first request as SPDK spreads qpairs over poll
/// groups.
pub fn submit<I>(
    ex: &Exported,
    reactors: &[Reactor],
    ops: I,
    done: impl FnOnce(Result<Vec<u8>, ExportError>) + Send + 'static,
) where
    I: IntoIterator<Item = BlockOp>,
    I::IntoIter: Send + 'static,
{
    let ex = ex.clone();
    let ops = ops.into_iter();
    if on_reactor() {
        spawn_local(run_ops(ex, ops, done));
        return;
    }
    let i = CONN_REACTOR.with(|c| match c.get() {
        Some(i) => i,
        None => {
            let i = NEXT_REACTOR.fetch_add(1, Ordering::Relaxed);
            c.set(Some(i));
            i
        }
    });
    let Some(r) = reactors.get(i % reactors.len().max(1)) else {
        return done(Err(ExportError::Gone));
    };
    r.send(move || spawn_local(run_ops(ex, ops, done)));
}

async fn run_ops(
    ex: Exported,
    ops: impl Iterator<Item = BlockOp>,
    done: impl FnOnce(Result<Vec<u8>, ExportError>),
) {
    let mut out = Ok(Vec::new());
    for op in ops {
        out = ex.run(op).await;
        if out.is_err() {
            break;
        }
    }
    done(out)
}
