//! Reactors like SPDK's: one thread per core of the `-m` mask, each with its own io_uring,
//! timers and tasks. Work reaches a reactor as a message (a closure) or as a task woken from
//! any thread; an idle reactor sleeps in `io_uring_enter` until a completion, a timer, or
//! an eventfd write from another thread, so nothing is busy-polled and nothing blocks.

use crossbeam_queue::SegQueue;
use io_uring::{IoUring, opcode, squeue, types};
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Wake;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Msg = Box<dyn FnOnce() + Send>;
type Task = Pin<Box<dyn Future<Output = ()>>>;

/// A task and its waker, made once at spawn rather than on every poll.
struct TaskSlot {
    fut: Option<Task>,
    waker: Waker,
}

const RING_ENTRIES: u32 = 256;
/// user_data of the eventfd read that wakes a sleeping reactor.
const WAKE_TAG: u64 = u64::MAX;

/// What other threads see of a reactor.
struct Shared {
    id: usize,
    msgs: SegQueue<Msg>,
    ready: SegQueue<usize>,
    sleeping: AtomicBool,
    stop: AtomicBool,
    efd: OwnedFd,
}

impl Shared {
    fn kick(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            unsafe { libc::write(self.efd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }
}

/// A handle to one reactor, usable from any thread.
#[derive(Clone)]
pub struct Reactor(Arc<Shared>);

impl Reactor {
    pub fn id(&self) -> usize {
        self.0.id
    }

    /// Runs `f` on the reactor.
    pub fn send(&self, f: impl FnOnce() + Send + 'static) {
        self.0.msgs.push(Box::new(f));
        self.0.kick();
    }

    /// Runs the future made by `f` as a task on the reactor; the result comes back to any
    /// thread (`None` if the reactor stopped first).
    pub fn run<F, Fut, T>(&self, f: F) -> impl Future<Output = Option<T>> + Send + use<F, Fut, T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.send(move || {
            spawn_local(async move {
                let _ = tx.send(f().await);
            })
        });
        async move { rx.await.ok() }
    }
}

struct TaskWaker {
    id: usize,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.ready.push(self.id);
        self.shared.kick();
    }
}

/// A submitted io_uring operation: its result once the CQE arrived, and what must stay
/// alive until then (the buffer the kernel reads or fills).
struct OpSlot {
    result: Option<i32>,
    waker: Option<Waker>,
    /// The future was dropped: free the slot when the CQE arrives.
    orphan: bool,
    _keep: Option<Box<dyn std::any::Any>>,
}

/// The reactor's own state, on its thread.
struct Local {
    shared: Arc<Shared>,
    ring: RefCell<IoUring>,
    tasks: RefCell<Slab<TaskSlot>>,
    ops: RefCell<Slab<OpSlot>>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    timer_seq: Cell<u64>,
    wake_armed: Cell<bool>,
    wake_buf: Box<Cell<u64>>,
    /// Run once the tasks ready in this turn have run ([`defer`]).
    deferred: RefCell<Vec<Box<dyn FnOnce()>>>,
    /// Tasks that yielded ([`yield_now`]): woken after this turn's completions and timers.
    yielded: RefCell<Vec<Waker>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn with_local<T>(f: impl FnOnce(&Rc<Local>) -> T) -> Option<T> {
    LOCAL.with(|l| l.borrow().as_ref().map(f))
}

/// The reactor the calling thread runs, if it is one.
pub fn current() -> Option<Reactor> {
    with_local(|l| Reactor(l.shared.clone()))
}

/// Whether the calling thread is a reactor.
pub fn on_reactor() -> bool {
    with_local(|_| ()).is_some()
}

/// Spawns a task on the calling reactor. Off a reactor the task is dropped and logged:
/// every caller runs on one by construction.
pub fn spawn_local(fut: impl Future<Output = ()> + 'static) {
    let ok = with_local(|l| {
        let mut tasks = l.tasks.borrow_mut();
        let e = tasks.vacant_entry();
        let id = e.key();
        e.insert(TaskSlot {
            fut: Some(Box::pin(fut)),
            waker: Waker::from(Arc::new(TaskWaker {
                id,
                shared: l.shared.clone(),
            })),
        });
        l.shared.ready.push(id);
    });
    if ok.is_none() {
        tracing::error!("spawn_local called off a reactor");
    }
}

/// Runs `f` on the calling reactor once the tasks ready in this turn have run (e.g. to
/// send the commands they submitted together); off a reactor, at once.
pub fn defer(f: impl FnOnce() + 'static) {
    let mut f = Some(f);
    with_local(|l| {
        if let Some(f) = f.take() {
            l.deferred.borrow_mut().push(Box::new(f));
        }
    });
    if let Some(f) = f {
        f();
    }
}

/// Gives the reactor one turn: the calling task runs again after the tasks already ready,
/// this turn's completions and its due timers, so long work over devices that complete at
/// once (RAM disks) cannot starve the guests' connections. (Waking itself would not do: the
/// turn polls ready tasks until none is left.) Off a reactor, a plain self-wake.
pub fn yield_now() -> impl Future<Output = ()> {
    crate::engine::yield_with(|w| {
        if with_local(|l| l.yielded.borrow_mut().push(w.clone())).is_none() {
            w.wake_by_ref();
        }
    })
}

fn wake_yielded(local: &Rc<Local>) -> bool {
    // Taken out while waking (a wake must not meet the borrow), then put back to keep its
    // allocation: a merge yields every cluster.
    let mut woken = std::mem::take(&mut *local.yielded.borrow_mut());
    let any = !woken.is_empty();
    for w in woken.drain(..) {
        w.wake();
    }
    let mut y = local.yielded.borrow_mut();
    if y.is_empty() {
        *y = woken;
    }
    any
}

/// A timer on the calling reactor.
pub fn sleep(d: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + d,
        key: None,
    }
}

pub struct Sleep {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let prev = self.key;
        let key = with_local(|l| {
            let mut t = l.timers.borrow_mut();
            if let Some(k) = prev {
                t.remove(&k);
            }
            let seq = l.timer_seq.get() + 1;
            l.timer_seq.set(seq);
            t.insert((deadline, seq), cx.waker().clone());
            (deadline, seq)
        });
        match key {
            Some(k) => {
                self.key = Some(k);
                Poll::Pending
            }
            // Off a reactor: no timer wheel; a reactor-less caller gets no delay.
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            with_local(|l| l.timers.borrow_mut().remove(&k));
        }
    }
}

/// Submits one io_uring operation on the calling reactor and resolves to its CQE result
/// (a byte count or a negative errno). `keep` lives until the kernel is done with it.
pub fn uring(entry: squeue::Entry, keep: Option<Box<dyn std::any::Any>>) -> UringOp {
    UringOp {
        entry: Some(entry),
        keep,
        slot: None,
    }
}

pub struct UringOp {
    entry: Option<squeue::Entry>,
    keep: Option<Box<dyn std::any::Any>>,
    slot: Option<usize>,
}

impl Future for UringOp {
    type Output = i32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let this = &mut *self;
        let r = with_local(|l| {
            if let Some(s) = this.slot {
                let mut ops = l.ops.borrow_mut();
                let Some(op) = ops.get_mut(s) else {
                    return Poll::Ready(-libc::EIO);
                };
                if let Some(res) = op.result {
                    ops.remove(s);
                    this.slot = None;
                    return Poll::Ready(res);
                }
                op.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let Some(entry) = this.entry.take() else {
                return Poll::Ready(-libc::EINVAL);
            };
            let s = l.ops.borrow_mut().insert(OpSlot {
                result: None,
                waker: Some(cx.waker().clone()),
                orphan: false,
                _keep: this.keep.take(),
            });
            let entry = entry.user_data(s as u64);
            let mut ring = l.ring.borrow_mut();
            // SAFETY: everything the entry points at is kept alive by the slot until its CQE.
            while unsafe { ring.submission().push(&entry) }.is_err() {
                if ring.submit().is_err() {
                    l.ops.borrow_mut().remove(s);
                    return Poll::Ready(-libc::EAGAIN);
                }
            }
            this.slot = Some(s);
            Poll::Pending
        });
        r.unwrap_or(Poll::Ready(-libc::ENXIO))
    }
}

impl Drop for UringOp {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            with_local(|l| {
                if let Some(op) = l.ops.borrow_mut().get_mut(s) {
                    op.orphan = true;
                    op.waker = None;
                }
            });
        }
    }
}

/// The running reactors of a node.
pub struct Reactors {
    handles: Vec<Reactor>,
    threads: Vec<JoinHandle<()>>,
}

impl Reactors {
    /// One reactor per core in `cores` (pinned there, best effort).
    pub fn start(cores: &[usize]) -> std::io::Result<Self> {
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for (id, &core) in cores.iter().enumerate() {
            // SAFETY: plain syscall; the fd is owned below.
            let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if efd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let shared = Arc::new(Shared {
                id,
                msgs: SegQueue::new(),
                ready: SegQueue::new(),
                sleeping: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                // SAFETY: a fresh fd we own.
                efd: unsafe { OwnedFd::from_raw_fd(efd) },
            });
            // Completions are collected when the reactor next enters the kernel (it always
            // does soon: it polls the task-run flag, or it sleeps in io_uring_enter) instead
            // of by interrupting it, which in a VM costs an IPI per completion. Kernels
            // before 5.19 lack these flags: plain setup there.
            let ring = IoUring::builder()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .build(RING_ENTRIES)
                .or_else(|_| IoUring::new(RING_ENTRIES))?;
            let sh = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("reactor_{core}"))
                .spawn(move || {
                    pin_to(core);
                    run_loop(sh, ring)
                })?;
            handles.push(Reactor(shared));
            threads.push(t);
        }
        Ok(Self { handles, threads })
    }

    pub fn get(&self, i: usize) -> &Reactor {
        &self.handles[i % self.handles.len()]
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn handles(&self) -> Vec<Reactor> {
        self.handles.clone()
    }

    /// Stops every reactor after its current turn and joins the threads; tasks still
    /// pending are dropped.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for h in &self.handles {
            h.0.stop.store(true, Ordering::SeqCst);
            h.0.sleeping.store(true, Ordering::SeqCst);
            h.0.kick();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn pin_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays in bounds for core < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if core < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(core, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                tracing::debug!(core, "could not pin reactor");
            }
        }
    }
}

/// How long an idle reactor keeps polling before it sleeps: `REPL_REACTOR_SPIN_US`
/// microseconds (0: sleep at once), 50 by default. Bounded, unlike SPDK's reactors, so an
/// idle node uses no CPU.
fn spin_window() -> Duration {
    let us = std::env::var("REPL_REACTOR_SPIN_US")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SPIN_US);
    Duration::from_micros(us.min(10_000))
}

const DEFAULT_SPIN_US: u64 = 50;

fn run_loop(shared: Arc<Shared>, ring: IoUring) {
    let local = Rc::new(Local {
        shared: shared.clone(),
        ring: RefCell::new(ring),
        tasks: RefCell::new(Slab::new()),
        ops: RefCell::new(Slab::new()),
        timers: RefCell::new(BTreeMap::new()),
        timer_seq: Cell::new(0),
        wake_armed: Cell::new(false),
        wake_buf: Box::new(Cell::new(0)),
        deferred: RefCell::new(Vec::new()),
        yielded: RefCell::new(Vec::new()),
    });
    LOCAL.with(|l| *l.borrow_mut() = Some(local.clone()));
    let spin = spin_window();
    let mut last_busy = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        let mut busy = false;
        while let Some(m) = shared.msgs.pop() {
            m();
            busy = true;
        }
        while let Some(id) = shared.ready.pop() {
            poll_task(&local, id);
            busy = true;
        }
        let deferred = std::mem::take(&mut *local.deferred.borrow_mut());
        for f in deferred {
            f();
        }
        busy |= reap(&local);
        busy |= fire_timers(&local);
        busy |= wake_yielded(&local);
        if busy {
            enter(&local, true);
            last_busy = Instant::now();
            continue;
        }
        // Completions waiting for us to enter the kernel: let them run, reap next turn.
        enter(&local, false);
        // Right after work, more usually follows within microseconds (the next command of
        // a host at low queue depth): checking again for a short while saves the sleep and
        // the wakeup, which cost more than the request itself when the machine is busy.
        // Completions still arrive meanwhile: the kernel runs io_uring's task work on a
        // running thread by interrupting it.
        if last_busy.elapsed() < spin {
            std::hint::spin_loop();
            continue;
        }
        idle(&local);
    }
    // Drop tasks (and the futures' io_uring slots) while the thread-local is still set.
    local.tasks.borrow_mut().clear();
    LOCAL.with(|l| *l.borrow_mut() = None);
}

/// Submits what tasks queued (`submit`), and in any case lets pending completion work run
/// when the kernel flagged some; no system call when there is neither.
fn enter(local: &Rc<Local>, submit: bool) {
    let mut ring = local.ring.borrow_mut();
    let sq = ring.submission();
    let needed = (submit && !sq.is_empty()) || sq.taskrun();
    drop(sq);
    if needed {
        let _ = ring.submit();
    }
}

fn poll_task(local: &Rc<Local>, id: usize) {
    // Take the task out so it can spawn others (which borrows the slab) while polled.
    let (task, waker) = match local.tasks.borrow_mut().get_mut(id) {
        Some(t) => (t.fut.take(), t.waker.clone()),
        None => return,
    };
    let Some(mut task) = task else { return };
    let done = task
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_ready();
    let mut tasks = local.tasks.borrow_mut();
    if done {
        tasks.remove(id);
    } else if let Some(slot) = tasks.get_mut(id) {
        slot.fut = Some(task);
    }
}

fn reap(local: &Rc<Local>) -> bool {
    let mut any = false;
    let mut ring = local.ring.borrow_mut();
    let cq: Vec<(u64, i32)> = ring
        .completion()
        .map(|c| (c.user_data(), c.result()))
        .collect();
    drop(ring);
    for (ud, res) in cq {
        any = true;
        if ud == WAKE_TAG {
            local.wake_armed.set(false);
            continue;
        }
        let mut ops = local.ops.borrow_mut();
        let s = ud as usize;
        let Some(op) = ops.get_mut(s) else { continue };
        if op.orphan {
            ops.remove(s);
            continue;
        }
        op.result = Some(res);
        if let Some(w) = op.waker.take() {
            drop(ops);
            w.wake();
        }
    }
    any
}

fn fire_timers(local: &Rc<Local>) -> bool {
    let now = Instant::now();
    let mut due = Vec::new();
    {
        let mut t = local.timers.borrow_mut();
        while let Some(e) = t.first_entry() {
            if e.key().0 > now {
                break;
            }
            due.push(e.remove());
        }
    }
    let any = !due.is_empty();
    for w in due {
        w.wake();
    }
    any
}

fn idle(local: &Rc<Local>) {
    let shared = &local.shared;
    let mut ring = local.ring.borrow_mut();
    if !local.wake_armed.get() {
        let e = opcode::Read::new(
            types::Fd(shared.efd.as_raw_fd()),
            local.wake_buf.as_ptr().cast(),
            8,
        )
        .build()
        .user_data(WAKE_TAG);
        // SAFETY: the eventfd and `wake_buf` live as long as the ring.
        if unsafe { ring.submission().push(&e) }.is_ok() {
            local.wake_armed.set(true);
        }
    }
    shared.sleeping.store(true, Ordering::SeqCst);
    // A message or wake that raced with going to sleep must not be slept through.
    if !shared.msgs.is_empty() || !shared.ready.is_empty() || shared.stop.load(Ordering::SeqCst) {
        shared.sleeping.store(false, Ordering::SeqCst);
        let _ = ring.submit();
        return;
    }
    let next = local.timers.borrow().first_key_value().map(|(k, _)| k.0);
    let r = match next {
        Some(deadline) => {
            let d = deadline.saturating_duration_since(Instant::now());
            let ts = types::Timespec::new()
                .sec(d.as_secs())
                .nsec(d.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            ring.submitter().submit_with_args(1, &args)
        }
        None => ring.submit_and_wait(1),
    };
    if let Err(e) = r
        && !matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR))
    {
        tracing::warn!(error = %e, "io_uring_enter failed");
    }
    shared.sleeping.store(false, Ordering::SeqCst);
}

/// The engine's timers and detached tasks, on the calling reactor.
#[derive(Clone, Copy, Default)]
pub struct NativeRuntime;

impl crate::engine::Runtime for NativeRuntime {
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        sleep(d)
    }
    fn yield_now(&self) -> impl Future<Output = ()> {
        yield_now()
    }
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>) {
        spawn_local(task)
    }
}

#[cfg(test)]
#[path = "reactor_tests.rs"]
mod tests;
