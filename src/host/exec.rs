//! A per-reactor-thread executor for the engine's slow paths (COW, merge, control
//! operations): a task is polled on the SPDK thread that spawned it; a wake-up, from any
//! thread, is a message to that thread. Timers are one-shot pollers.

use spdk_sys as s;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

struct Task {
    future: UnsafeCell<Option<Pin<Box<dyn Future<Output = ()>>>>>,
    thread: *mut s::spdk_thread,
    scheduled: AtomicBool,
}

// SAFETY: the future is only touched on `thread` (by `poll`, reached from `spawn` or from
// a message sent to that thread); other threads only send messages.
unsafe impl Send for Task {}
unsafe impl Sync for Task {}

thread_local! {
    /// A task is being polled on this thread: wake-ups now go through a message.
    static POLLING: Cell<bool> = const { Cell::new(false) };
    /// Inside a device completion (see [`completing`]): a wake-up may poll in place.
    static COMPLETING: Cell<bool> = const { Cell::new(false) };
}

/// Runs a device completion's wake-ups: a task of this thread that `f` wakes is polled
/// right here instead of through a message to the thread (a message round trip per I/O
/// was a visible part of a copy-before-write's fixed cost). Only completion callbacks use
/// it: nothing of ours is borrowed there, unlike an RPC handler that may wake a task.
pub fn completing(f: impl FnOnce()) {
    let was = COMPLETING.with(|c| c.replace(true));
    f();
    COMPLETING.with(|c| c.set(was));
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        // SAFETY: plain FFI query.
        let here = unsafe { s::spdk_get_thread() } == self.thread;
        if here
            && COMPLETING.with(Cell::get)
            && !POLLING.with(Cell::get)
            && !self.scheduled.load(Ordering::Acquire)
        {
            poll(self);
            return;
        }
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            let thread = self.thread;
            let raw = Arc::into_raw(self) as *mut c_void;
            // SAFETY: the message owns one reference, released in `run_task`.
            unsafe { s::spdk_thread_send_msg(thread, Some(run_task), raw) };
        }
    }
}

unsafe extern "C" fn run_task(arg: *mut c_void) {
    // SAFETY: `arg` is the reference `wake` leaked for this message.
    let task = unsafe { Arc::from_raw(arg as *const Task) };
    task.scheduled.store(false, Ordering::Release);
    poll(task);
}

fn poll(task: Arc<Task>) {
    let waker = Waker::from(task.clone());
    // SAFETY: only ever reached on the task's own thread, never re-entrantly (wake-ups
    // during a poll are deferred to a message).
    let slot = unsafe { &mut *task.future.get() };
    let was = POLLING.with(|p| p.replace(true));
    if let Some(f) = slot.as_mut()
        && f.as_mut().poll(&mut Context::from_waker(&waker)).is_ready()
    {
        *slot = None;
    }
    POLLING.with(|p| p.set(was));
}

/// Runs `future` on the current SPDK thread until it completes.
pub fn spawn(future: impl Future<Output = ()> + 'static) {
    // SAFETY: plain FFI query.
    let thread = unsafe { s::spdk_get_thread() };
    assert!(!thread.is_null(), "spawn outside an SPDK thread");
    poll(Arc::new(Task {
        future: UnsafeCell::new(Some(Box::pin(future))),
        thread,
        scheduled: AtomicBool::new(false),
    }));
}

/// Gives the thread one turn: a wake-up while polled is a message, so the task runs again
/// after the thread's pollers (the guests' qpairs among them).
pub fn yield_now() -> impl Future<Output = ()> {
    crate::engine::yield_with(Waker::wake_by_ref)
}

struct SleepState {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    poller: Cell<*mut s::spdk_poller>,
}

/// A one-shot timer on the current thread.
pub struct Sleep {
    state: Rc<SleepState>,
    period_us: u64,
}

unsafe extern "C" fn sleep_fired(arg: *mut c_void) -> i32 {
    // SAFETY: the poller owns one reference to the state.
    let st = unsafe { Rc::from_raw(arg as *const SleepState) };
    st.fired.set(true);
    let mut p = st.poller.replace(std::ptr::null_mut());
    // SAFETY: unregistering a poller from its own callback is allowed.
    unsafe { s::spdk_poller_unregister(&mut p) };
    if let Some(w) = st.waker.borrow_mut().take() {
        w.wake();
    }
    1
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let st = &self.state;
        if st.fired.get() {
            return Poll::Ready(());
        }
        *st.waker.borrow_mut() = Some(cx.waker().clone());
        if st.poller.get().is_null() {
            let arg = Rc::into_raw(st.clone()) as *mut c_void;
            // SAFETY: the callback takes over the reference in `arg`.
            let p = unsafe { s::spdk_poller_register(Some(sleep_fired), arg, self.period_us) };
            st.poller.set(p);
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        let mut p = self.state.poller.replace(std::ptr::null_mut());
        if !p.is_null() {
            // SAFETY: still registered, so the poller's reference was never taken back.
            unsafe {
                s::spdk_poller_unregister(&mut p);
                drop(Rc::from_raw(Rc::as_ptr(&self.state)));
            }
        }
    }
}

pub fn sleep(d: Duration) -> Sleep {
    Sleep {
        state: Rc::new(SleepState {
            fired: Cell::new(false),
            waker: RefCell::new(None),
            poller: Cell::new(std::ptr::null_mut()),
        }),
        period_us: (d.as_micros() as u64).max(1),
    }
}

/// The engine's [`crate::engine::Runtime`] on SPDK threads: timers are pollers, tasks run
/// on the calling thread (a primary's sync and verify jobs, its slow-path writes).
pub struct SpdkRuntime;

impl crate::engine::Runtime for SpdkRuntime {
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        sleep(d)
    }
    fn yield_now(&self) -> impl Future<Output = ()> {
        yield_now()
    }
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>) {
        spawn(task)
    }
}
