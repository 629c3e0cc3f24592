//! The engine's `BlockDevice` over an SPDK bdev descriptor, for slow paths: each operation
//! takes the current thread's channel, submits, waits for the completion callback, and
//! queues itself on `-ENOMEM` until the bdev has resources again.

use crate::engine::{BlockDevice, IoBuf, IoError};
use spdk_sys as s;
use std::cell::{Cell, UnsafeCell};
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::task::{Context, Poll, Waker};

const ENOMEM: i32 = 12;

/// DMA-able memory from SPDK's allocator, `len` bytes.
struct DmaAlloc(*mut u8, usize);

impl Drop for DmaAlloc {
    fn drop(&mut self) {
        if dma_pool_put(self.0, self.1) {
            return;
        }
        // SAFETY: allocated by spdk_dma_malloc and freed once.
        unsafe { s::spdk_dma_free(self.0.cast()) };
    }
}

/// DMA buffers a reactor keeps for reuse: copy-before-write, merge and sync allocate one
/// cluster-sized buffer per copy, and `spdk_dma_malloc` (a locked heap) was a large part
/// of a copy's fixed cost. Bounded per thread in bytes, and emptied when an allocation
/// fails, so the pool never causes a `NOMEM`; what a pool holds when its thread exits is
/// left to the process's end (freeing after the env is torn down would be worse).
const DMA_POOL_BYTES: usize = 4 << 20;
const DMA_POOL_BUFS: usize = 64;

#[derive(Default)]
struct DmaPool {
    bufs: Vec<(*mut u8, usize)>,
    bytes: usize,
}

thread_local! {
    static DMA_POOL: std::cell::RefCell<DmaPool> = std::cell::RefCell::new(DmaPool::default());
}

fn dma_pool_put(ptr: *mut u8, len: usize) -> bool {
    DMA_POOL
        .try_with(|p| match p.try_borrow_mut() {
            Ok(mut p) if p.bufs.len() < DMA_POOL_BUFS && p.bytes + len <= DMA_POOL_BYTES => {
                p.bufs.push((ptr, len));
                p.bytes += len;
                true
            }
            _ => false,
        })
        .unwrap_or(false)
}

fn dma_pool_take(len: usize) -> Option<*mut u8> {
    DMA_POOL
        .try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            let i = p.bufs.iter().rposition(|&(_, l)| l == len)?;
            p.bytes -= len;
            Some(p.bufs.swap_remove(i).0)
        })
        .ok()
        .flatten()
}

/// Frees what this thread's pool holds; true if it held anything.
fn dma_pool_drain() -> bool {
    let bufs = DMA_POOL
        .try_with(|p| {
            p.try_borrow_mut()
                .map(|mut p| {
                    p.bytes = 0;
                    std::mem::take(&mut p.bufs)
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let any = !bufs.is_empty();
    for (ptr, _) in bufs {
        // SAFETY: each was allocated by spdk_dma_malloc and is owned by the pool alone.
        unsafe { s::spdk_dma_free(ptr.cast()) };
    }
    any
}

fn dma_malloc(len: usize) -> *mut u8 {
    // SAFETY: plain allocation; the caller checks for null.
    unsafe { s::spdk_dma_malloc(len, 4096, std::ptr::null_mut()) as *mut u8 }
}

/// A view of I/O memory: either SPDK DMA memory the buffer owns (kept alive by every
/// clone), or a guest request's buffer, valid while that request is outstanding.
#[derive(Clone)]
pub struct SpdkBuf {
    ptr: *mut u8,
    len: usize,
    _owner: Option<Rc<DmaAlloc>>,
}

impl SpdkBuf {
    /// Uninitialised: every engine use fills it (a device read, an explicit zero fill, or a
    /// copy from the guest's iovecs) before anything reads it; zeroing would cost a memset
    /// of a whole cluster per copy-before-write.
    /// `Err(NoMem)` when DMA memory is exhausted: the request is retried later.
    pub fn alloc(len: usize) -> Result<Self, IoError> {
        let len1 = len.max(1);
        let mut ptr = dma_pool_take(len1).unwrap_or_else(|| dma_malloc(len1));
        if ptr.is_null() && dma_pool_drain() {
            ptr = dma_malloc(len1);
        }
        if ptr.is_null() {
            return Err(IoError::NoMem);
        }
        Ok(SpdkBuf {
            ptr,
            len,
            _owner: Some(Rc::new(DmaAlloc(ptr, len1))),
        })
    }

    /// # Safety
    /// `ptr..ptr+len` must stay valid while any clone is in use.
    pub unsafe fn borrowed(ptr: *mut u8, len: usize) -> Self {
        SpdkBuf {
            ptr,
            len,
            _owner: None,
        }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl IoBuf for SpdkBuf {
    fn len(&self) -> usize {
        self.len
    }
    fn slice(&self, offset: usize, len: usize) -> Self {
        // The engine slices only within the buffers it sized (a bug otherwise, not input).
        assert!(offset + len <= self.len);
        SpdkBuf {
            // SAFETY: in bounds, checked above.
            ptr: unsafe { self.ptr.add(offset) },
            len,
            _owner: self._owner.clone(),
        }
    }
    fn fill_zero(&self) {
        // SAFETY: the engine zero-fills only buffers no device is using.
        unsafe { std::ptr::write_bytes(self.ptr, 0, self.len) };
    }
    fn bytes_equal(&self, other: &Self) -> bool {
        // SAFETY: the engine compares only buffers no device is using.
        unsafe {
            self.len == other.len
                && std::slice::from_raw_parts(self.ptr as *const u8, self.len)
                    == std::slice::from_raw_parts(other.ptr as *const u8, other.len)
        }
    }
}

pub struct DevInner {
    pub name: String,
    desc: AtomicPtr<s::spdk_bdev_desc>,
    pub bdev: *mut s::spdk_bdev,
    block_size: u32,
    num_blocks: u64,
}

// SAFETY: a descriptor may be used from any SPDK thread to get that thread's channel;
// the rest is immutable.
unsafe impl Send for DevInner {}
unsafe impl Sync for DevInner {}

/// An opened (and claimed) bdev, shared by the node's engine and its channels.
#[derive(Clone)]
pub struct SpdkDev(pub Arc<DevInner>);

impl SpdkDev {
    pub fn new(name: &str, desc: *mut s::spdk_bdev_desc) -> Self {
        // SAFETY: `desc` is open.
        let bdev = unsafe { s::spdk_bdev_desc_get_bdev(desc) };
        // SAFETY: `bdev` is alive while the descriptor is open.
        let (block_size, num_blocks) = unsafe {
            (
                s::spdk_bdev_get_block_size(bdev),
                s::spdk_bdev_get_num_blocks(bdev),
            )
        };
        SpdkDev(Arc::new(DevInner {
            name: name.to_owned(),
            desc: AtomicPtr::new(desc),
            bdev,
            block_size,
            num_blocks,
        }))
    }

    pub fn desc(&self) -> *mut s::spdk_bdev_desc {
        self.0.desc.load(Ordering::Acquire)
    }

    /// Forgets the descriptor (it was closed after a hot-remove): later operations fail.
    pub fn take_desc(&self) -> *mut s::spdk_bdev_desc {
        self.0.desc.swap(std::ptr::null_mut(), Ordering::AcqRel)
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    fn op(&self, submit: Submit) -> Op {
        Op {
            state: Rc::new(OpState {
                dev: self.clone(),
                submit,
                ch: Cell::new(std::ptr::null_mut()),
                done: Cell::new(None),
                waker: Cell::new(None),
                wait: UnsafeCell::new(s::spdk_bdev_io_wait_entry::default()),
            }),
            started: false,
        }
    }
}

/// What an operation submits: a plain value, not a boxed closure, so an operation costs
/// one allocation (its shared state) rather than two.
enum Submit {
    Read(SpdkBuf, u64),
    Write(SpdkBuf, u64),
    WriteZeroes(u64, u64),
    Unmap(u64, u64),
    Flush(u64),
}

impl Submit {
    /// # Safety
    /// `desc` open, `ch` its channel on this thread, `arg` the completion's reference.
    unsafe fn issue(
        &self,
        desc: *mut s::spdk_bdev_desc,
        ch: *mut s::spdk_io_channel,
        block_size: u32,
        arg: *mut c_void,
    ) -> i32 {
        let blocks = |buf: &SpdkBuf| buf.len() as u64 / u64::from(block_size);
        // SAFETY: per the contract above; buffers live in `self` until the completion.
        unsafe {
            match self {
                Submit::Read(buf, lba) | Submit::Write(buf, lba) => {
                    let rw = if matches!(self, Submit::Read(..)) {
                        s::spdk_bdev_read_blocks
                    } else {
                        s::spdk_bdev_write_blocks
                    };
                    rw(desc, ch, buf.as_ptr().cast(), *lba, blocks(buf), CB, arg)
                }
                Submit::WriteZeroes(lba, n) => {
                    s::spdk_bdev_write_zeroes_blocks(desc, ch, *lba, *n, CB, arg)
                }
                Submit::Unmap(lba, n) => s::spdk_bdev_unmap_blocks(desc, ch, *lba, *n, CB, arg),
                Submit::Flush(n) => s::spdk_bdev_flush_blocks(desc, ch, 0, *n, CB, arg),
            }
        }
    }
}

struct OpState {
    dev: SpdkDev,
    submit: Submit,
    ch: Cell<*mut s::spdk_io_channel>,
    done: Cell<Option<bool>>,
    waker: Cell<Option<Waker>>,
    wait: UnsafeCell<s::spdk_bdev_io_wait_entry>,
}

impl OpState {
    fn finish(&self, ok: bool) {
        let ch = self.ch.replace(std::ptr::null_mut());
        if !ch.is_null() {
            // SAFETY: taken in `submit` on this thread.
            unsafe { s::spdk_put_io_channel(ch) };
        }
        self.done.set(Some(ok));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Submits; the callback (or the io_wait retry) receives one reference to `self`.
    fn submit(self: &Rc<Self>) {
        let desc = self.dev.desc();
        if desc.is_null() {
            self.finish(false);
            return;
        }
        if self.ch.get().is_null() {
            // SAFETY: valid descriptor, on an SPDK thread.
            let ch = unsafe { s::spdk_bdev_get_io_channel(desc) };
            if ch.is_null() {
                self.finish(false);
                return;
            }
            self.ch.set(ch);
        }
        let arg = Rc::into_raw(self.clone()) as *mut c_void;
        // SAFETY: open descriptor, this thread's channel, `arg` owned by the completion.
        let rc = unsafe {
            self.submit
                .issue(desc, self.ch.get(), self.dev.0.block_size, arg)
        };
        if rc == 0 {
            return;
        }
        // SAFETY: the submission failed, so the callback will never take `arg` back.
        let me = unsafe { Rc::from_raw(arg as *const OpState) };
        if rc == -ENOMEM {
            // SAFETY: the entry lives in `me`, kept alive by the reference the retry owns.
            unsafe {
                let wait = &mut *me.wait.get();
                wait.bdev = me.dev.0.bdev;
                wait.cb_fn = Some(op_retry);
                wait.cb_arg = Rc::into_raw(me.clone()) as *mut c_void;
                if s::spdk_bdev_queue_io_wait(wait.bdev, me.ch.get(), wait) != 0 {
                    drop(Rc::from_raw(wait.cb_arg as *const OpState));
                    me.finish(false);
                }
            }
        } else {
            me.finish(false);
        }
    }
}

unsafe extern "C" fn op_retry(arg: *mut c_void) {
    // SAFETY: the reference queued in `submit`.
    let st = unsafe { Rc::from_raw(arg as *const OpState) };
    st.submit();
}

unsafe extern "C" fn op_done(bdev_io: *mut s::spdk_bdev_io, success: bool, arg: *mut c_void) {
    // SAFETY: the reference passed at submission; the child I/O is ours to free.
    unsafe {
        s::spdk_bdev_free_io(bdev_io);
        let st = Rc::from_raw(arg as *const OpState);
        super::exec::completing(|| st.finish(success));
    }
}

/// One device operation as a future.
pub struct Op {
    state: Rc<OpState>,
    started: bool,
}

impl Future for Op {
    type Output = Result<(), IoError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(ok) = self.state.done.get() {
            return Poll::Ready(if ok { Ok(()) } else { Err(IoError::Io) });
        }
        self.state.waker.set(Some(cx.waker().clone()));
        if !self.started {
            self.started = true;
            self.state.submit();
            if let Some(ok) = self.state.done.get() {
                return Poll::Ready(if ok { Ok(()) } else { Err(IoError::Io) });
            }
        }
        Poll::Pending
    }
}

const CB: s::spdk_bdev_io_completion_cb = Some(op_done);

impl BlockDevice for SpdkDev {
    type Buf = SpdkBuf;
    fn block_size(&self) -> u32 {
        self.0.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.0.num_blocks
    }
    fn alloc_buf(&self, len: usize) -> Result<SpdkBuf, IoError> {
        SpdkBuf::alloc(len)
    }
    fn supports_flush(&self) -> bool {
        // SAFETY: the bdev outlives the descriptor we hold (or held).
        unsafe { s::spdk_bdev_io_type_supported(self.0.bdev, s::SPDK_BDEV_IO_TYPE_FLUSH) }
    }
    fn read(&self, lba: u64, buf: SpdkBuf) -> impl Future<Output = Result<(), IoError>> {
        self.op(Submit::Read(buf, lba))
    }
    fn write(&self, lba: u64, buf: SpdkBuf) -> impl Future<Output = Result<(), IoError>> {
        self.op(Submit::Write(buf, lba))
    }
    fn write_zeroes(&self, lba: u64, n: u64) -> impl Future<Output = Result<(), IoError>> {
        self.op(Submit::WriteZeroes(lba, n))
    }
    fn unmap(&self, lba: u64, n: u64) -> impl Future<Output = Result<(), IoError>> {
        self.op(Submit::Unmap(lba, n))
    }
    fn flush(&self) -> impl Future<Output = Result<(), IoError>> {
        self.op(Submit::Flush(self.0.num_blocks))
    }
}
