//! In-memory devices, a fault-injecting wrapper and a manual-clock runtime: what the
//! engine's own tests and benchmarks run on, and a reference for hosts.

use crate::engine::device::{BlockDevice, IoBuf, IoError, Runtime};
use std::cell::{Cell, RefCell, UnsafeCell};
use std::future::{Future, poll_fn};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

struct Shared(UnsafeCell<Box<[u8]>>);
// SAFETY: MemBuf models DMA memory. The engine never has two operations write the same
// region at once, and tests read a buffer only after the operations on it completed.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A DMA-style buffer in process memory.
#[derive(Clone)]
pub struct MemBuf {
    mem: Arc<Shared>,
    off: usize,
    len: usize,
}

impl MemBuf {
    pub fn zeroed(len: usize) -> Self {
        Self::from_vec(vec![0; len])
    }
    /// A buffer pre-filled with `byte`: tests read into sentinel-filled buffers.
    pub fn filled(len: usize, byte: u8) -> Self {
        Self::from_vec(vec![byte; len])
    }
    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        MemBuf {
            mem: Arc::new(Shared(UnsafeCell::new(v.into_boxed_slice()))),
            off: 0,
            len,
        }
    }
    fn with<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: see `Shared`.
        let all = unsafe { &mut *self.mem.0.get() };
        f(&mut all[self.off..self.off + self.len])
    }
    pub fn to_vec(&self) -> Vec<u8> {
        self.with(|b| b.to_vec())
    }
    pub fn copy_from(&self, src: &[u8]) {
        self.with(|b| b.copy_from_slice(src));
    }
}

impl IoBuf for MemBuf {
    fn len(&self) -> usize {
        self.len
    }
    fn slice(&self, offset: usize, len: usize) -> Self {
        assert!(offset + len <= self.len, "slice out of buffer");
        MemBuf {
            mem: self.mem.clone(),
            off: self.off + offset,
            len,
        }
    }
    fn fill_zero(&self) {
        self.with(|b| b.fill(0));
    }
    fn bytes_equal(&self, other: &Self) -> bool {
        self.to_vec() == other.to_vec()
    }
}

/// A RAM disk whose operations complete immediately.
pub struct MemDisk {
    block_size: u32,
    data: Mutex<Vec<u8>>,
}

impl MemDisk {
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        MemDisk {
            block_size,
            data: Mutex::new(vec![0; (num_blocks * u64::from(block_size)) as usize]),
        }
    }
    /// Bytes `range` of the disk, bypassing any engine.
    pub fn contents(&self, range: Range<u64>) -> Vec<u8> {
        self.data.lock().unwrap()[range.start as usize..range.end as usize].to_vec()
    }
    pub fn fill(&self, byte: u8) {
        self.data.lock().unwrap().fill(byte);
    }
    fn span(&self, lba: u64, nblocks: u64) -> Result<Range<usize>, IoError> {
        let bs = u64::from(self.block_size);
        let end = lba.checked_add(nblocks).ok_or(IoError::OutOfRange)?;
        if end * bs > self.data.lock().unwrap().len() as u64 {
            return Err(IoError::OutOfRange);
        }
        Ok((lba * bs) as usize..(end * bs) as usize)
    }
    fn buf_blocks(&self, buf: &MemBuf) -> u64 {
        (buf.len / self.block_size as usize) as u64
    }
}

impl BlockDevice for MemDisk {
    type Buf = MemBuf;
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.data.lock().unwrap().len() as u64 / u64::from(self.block_size)
    }
    fn alloc_buf(&self, len: usize) -> Result<MemBuf, IoError> {
        Ok(MemBuf::zeroed(len))
    }
    fn read(&self, lba: u64, buf: MemBuf) -> impl Future<Output = Result<(), IoError>> {
        let r = self.span(lba, self.buf_blocks(&buf)).map(|span| {
            let data = self.data.lock().unwrap();
            buf.copy_from(&data[span]);
        });
        std::future::ready(r)
    }
    fn write(&self, lba: u64, buf: MemBuf) -> impl Future<Output = Result<(), IoError>> {
        let r = self.span(lba, self.buf_blocks(&buf)).map(|span| {
            let src = buf.to_vec();
            self.data.lock().unwrap()[span].copy_from_slice(&src);
        });
        std::future::ready(r)
    }
    fn write_zeroes(&self, lba: u64, nblocks: u64) -> impl Future<Output = Result<(), IoError>> {
        let r = self
            .span(lba, nblocks)
            .map(|span| self.data.lock().unwrap()[span].fill(0));
        std::future::ready(r)
    }
    fn unmap(&self, lba: u64, nblocks: u64) -> impl Future<Output = Result<(), IoError>> {
        // Unmapped blocks of a RAM disk read back as zeros, like SPDK's malloc bdev.
        self.write_zeroes(lba, nblocks)
    }
    fn flush(&self) -> impl Future<Output = Result<(), IoError>> {
        std::future::ready(Ok(()))
    }
}

/// A device that stores nothing: reads return zeros, writes are dropped. Lets benchmarks
/// build engines over disks far larger than memory.
pub struct NullDisk {
    block_size: u32,
    num_blocks: u64,
}

impl NullDisk {
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        NullDisk {
            block_size,
            num_blocks,
        }
    }
}

impl BlockDevice for NullDisk {
    type Buf = MemBuf;
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn alloc_buf(&self, len: usize) -> Result<MemBuf, IoError> {
        Ok(MemBuf::zeroed(len))
    }
    fn read(&self, _lba: u64, buf: MemBuf) -> impl Future<Output = Result<(), IoError>> {
        buf.fill_zero();
        std::future::ready(Ok(()))
    }
    fn write(&self, _lba: u64, _buf: MemBuf) -> impl Future<Output = Result<(), IoError>> {
        std::future::ready(Ok(()))
    }
    fn write_zeroes(&self, _lba: u64, _n: u64) -> impl Future<Output = Result<(), IoError>> {
        std::future::ready(Ok(()))
    }
    fn unmap(&self, _lba: u64, _n: u64) -> impl Future<Output = Result<(), IoError>> {
        std::future::ready(Ok(()))
    }
    fn flush(&self) -> impl Future<Output = Result<(), IoError>> {
        std::future::ready(Ok(()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    WriteZeroes,
    Unmap,
    Flush,
}

/// One operation that reached a [`Faulty`] device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpRecord {
    pub kind: OpKind,
    pub lba: u64,
    pub nblocks: u64,
}

/// A test-controlled barrier: operations held on it wait until it opens.
#[derive(Default)]
pub struct Latch {
    open: AtomicBool,
    arrived: AtomicUsize,
    waiters: Mutex<Vec<Waker>>,
}

impl Latch {
    pub fn open(&self) {
        self.open.store(true, SeqCst);
        for w in std::mem::take(&mut *self.waiters.lock().unwrap()) {
            w.wake();
        }
    }
    /// How many operations have reached the latch.
    pub fn arrived(&self) -> usize {
        self.arrived.load(SeqCst)
    }
    async fn pass(&self) {
        self.arrived.fetch_add(1, SeqCst);
        poll_fn(|cx| {
            if self.open.load(SeqCst) {
                return Poll::Ready(());
            }
            self.waiters.lock().unwrap().push(cx.waker().clone());
            if self.open.load(SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[derive(Clone)]
enum Action {
    Fail,
    Hold(Arc<Latch>),
}

struct Rule {
    kinds: Vec<OpKind>,
    blocks: Option<Range<u64>>,
    remaining: Option<usize>,
    action: Action,
}

/// Wraps a device and fails or holds operations chosen by kind, block range and count;
/// keeps a log of every operation it saw.
pub struct Faulty<D> {
    inner: D,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<OpRecord>>,
    no_flush: AtomicBool,
    no_mem: AtomicUsize,
}

impl<D: BlockDevice> Faulty<D> {
    pub fn new(inner: D) -> Self {
        Faulty {
            inner,
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            no_flush: AtomicBool::new(false),
            no_mem: AtomicUsize::new(0),
        }
    }
    /// The next `n` buffer allocations fail as if DMA memory ran out.
    pub fn fail_allocs(&self, n: usize) {
        self.no_mem.store(n, SeqCst);
    }
    /// Makes the device one without FLUSH (like a null bdev): it says so, and a flush sent
    /// anyway fails.
    pub fn set_no_flush(&self) {
        self.no_flush.store(true, SeqCst);
    }
    pub fn inner(&self) -> &D {
        &self.inner
    }
    /// Fails operations of `kinds` touching `blocks` (all blocks if `None`), the next
    /// `count` of them (for ever if `None`).
    pub fn fail(&self, kinds: &[OpKind], blocks: Option<Range<u64>>, count: Option<usize>) {
        self.add(kinds, blocks, count, Action::Fail);
    }
    /// Holds matching operations on the returned latch until it opens.
    pub fn hold(
        &self,
        kinds: &[OpKind],
        blocks: Option<Range<u64>>,
        count: Option<usize>,
    ) -> Arc<Latch> {
        let latch = Arc::new(Latch::default());
        self.add(kinds, blocks, count, Action::Hold(latch.clone()));
        latch
    }
    fn add(
        &self,
        kinds: &[OpKind],
        blocks: Option<Range<u64>>,
        remaining: Option<usize>,
        action: Action,
    ) {
        self.rules.lock().unwrap().push(Rule {
            kinds: kinds.to_vec(),
            blocks,
            remaining,
            action,
        });
    }
    pub fn clear_faults(&self) {
        self.rules.lock().unwrap().clear();
    }
    pub fn log(&self) -> Vec<OpRecord> {
        self.log.lock().unwrap().clone()
    }
    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }
    pub fn count(&self, kind: OpKind) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.kind == kind)
            .count()
    }

    fn check(&self, kind: OpKind, lba: u64, nblocks: u64) -> Option<Action> {
        self.log
            .lock()
            .unwrap()
            .push(OpRecord { kind, lba, nblocks });
        let mut rules = self.rules.lock().unwrap();
        let hit = rules.iter_mut().position(|r| {
            r.kinds.contains(&kind)
                && r.remaining != Some(0)
                && r.blocks.as_ref().is_none_or(|b| {
                    kind == OpKind::Flush || (lba < b.end && lba + nblocks > b.start)
                })
        })?;
        let rule = &mut rules[hit];
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.action.clone())
    }

    async fn gate(&self, kind: OpKind, lba: u64, nblocks: u64) -> Result<(), IoError> {
        match self.check(kind, lba, nblocks) {
            None => Ok(()),
            Some(Action::Fail) => Err(IoError::Io),
            Some(Action::Hold(l)) => {
                l.pass().await;
                Ok(())
            }
        }
    }
}

impl<D: BlockDevice> BlockDevice for Faulty<D> {
    type Buf = D::Buf;
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn alloc_buf(&self, len: usize) -> Result<D::Buf, IoError> {
        if self.no_mem.load(SeqCst) > 0 {
            self.no_mem.fetch_sub(1, SeqCst);
            return Err(IoError::NoMem);
        }
        self.inner.alloc_buf(len)
    }
    fn read(&self, lba: u64, buf: D::Buf) -> impl Future<Output = Result<(), IoError>> {
        let n = buf.len() as u64 / u64::from(self.block_size());
        async move {
            self.gate(OpKind::Read, lba, n).await?;
            self.inner.read(lba, buf).await
        }
    }
    fn write(&self, lba: u64, buf: D::Buf) -> impl Future<Output = Result<(), IoError>> {
        let n = buf.len() as u64 / u64::from(self.block_size());
        async move {
            self.gate(OpKind::Write, lba, n).await?;
            self.inner.write(lba, buf).await
        }
    }
    async fn write_zeroes(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        self.gate(OpKind::WriteZeroes, lba, nblocks).await?;
        self.inner.write_zeroes(lba, nblocks).await
    }
    async fn unmap(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        self.gate(OpKind::Unmap, lba, nblocks).await?;
        self.inner.unmap(lba, nblocks).await
    }
    async fn flush(&self) -> Result<(), IoError> {
        self.gate(OpKind::Flush, 0, 0).await?;
        if self.no_flush.load(SeqCst) {
            return Err(IoError::Io);
        }
        self.inner.flush().await
    }
    fn supports_flush(&self) -> bool {
        !self.no_flush.load(SeqCst)
    }
}

/// The device type the engine's tests use: a RAM disk behind a fault injector.
pub type TestDisk = Arc<Faulty<MemDisk>>;

pub fn test_disk(block_size: u32, num_blocks: u64) -> TestDisk {
    Arc::new(Faulty::new(MemDisk::new(block_size, num_blocks)))
}

/// Deadline (ms), fired flag, waiter.
type Timer = (u64, Arc<AtomicBool>, Option<Waker>);

/// Single-threaded runtime with a manual clock, for deterministic timeout tests.
#[derive(Default)]
pub struct TestRuntime {
    now_ms: Cell<u64>,
    timers: RefCell<Vec<Timer>>,
    tasks: RefCell<Vec<Pin<Box<dyn Future<Output = ()>>>>>,
}

impl TestRuntime {
    /// Moves the clock forward and fires the timers that are due.
    pub fn advance(&self, d: Duration) {
        self.now_ms.set(self.now_ms.get() + d.as_millis() as u64);
        let now = self.now_ms.get();
        for (deadline, fired, waker) in self.timers.borrow_mut().iter_mut() {
            if *deadline <= now
                && !fired.swap(true, SeqCst)
                && let Some(w) = waker.take()
            {
                w.wake();
            }
        }
    }
    /// Polls the spawned tasks once; returns how many are still running.
    pub fn poll_spawned(&self) -> usize {
        let mut tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        let mut cx = Context::from_waker(Waker::noop());
        tasks.retain_mut(|t| t.as_mut().poll(&mut cx).is_pending());
        let mut all = self.tasks.borrow_mut();
        tasks.append(&mut all);
        *all = tasks;
        all.len()
    }
}

impl Runtime for TestRuntime {
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        let fired = Arc::new(AtomicBool::new(false));
        let idx = {
            let mut timers = self.timers.borrow_mut();
            timers.push((
                self.now_ms.get() + d.as_millis() as u64,
                fired.clone(),
                None,
            ));
            timers.len() - 1
        };
        poll_fn(move |cx| {
            if fired.load(SeqCst) {
                return Poll::Ready(());
            }
            self.timers.borrow_mut()[idx].2 = Some(cx.waker().clone());
            Poll::Pending
        })
    }
    fn yield_now(&self) -> impl Future<Output = ()> {
        super::yield_with(Waker::wake_by_ref)
    }
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>) {
        self.tasks.borrow_mut().push(task);
    }
}

/// Polls `fut` once with a no-op waker: for hand-driven interleavings in tests.
pub fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}
