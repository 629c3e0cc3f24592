//! Holds new I/O and drains in-flight I/O around checkpoints and stage switches.
//!
//! The hot path costs two atomic operations and no lock: the mutex is taken only while a
//! hold is active.

use std::future::poll_fn;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct IoGate {
    in_flight: AtomicU64,
    held: AtomicBool,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    held_io: Vec<Waker>,
    drain: Option<Waker>,
}

/// Proof that an I/O is counted in flight; dropping it ends the I/O.
pub struct GateGuard<'a>(&'a IoGate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.exit();
    }
}

/// While alive, new I/O waits; dropping it lets held I/O go.
pub struct HoldGuard<'a>(&'a IoGate);

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl IoGate {
    /// Admits an I/O unless a hold is active. For hosts that track completion themselves,
    /// pair a `true` with [`IoGate::exit`].
    pub fn try_enter_raw(&self) -> bool {
        if self.held.load(SeqCst) {
            return false;
        }
        self.in_flight.fetch_add(1, SeqCst);
        if self.held.load(SeqCst) {
            self.exit();
            return false;
        }
        true
    }

    pub fn exit(&self) {
        if self.in_flight.fetch_sub(1, SeqCst) == 1
            && self.held.load(SeqCst)
            && let Some(w) = self.waiters.lock().unwrap().drain.take()
        {
            w.wake();
        }
    }

    pub fn try_enter(&self) -> Option<GateGuard<'_>> {
        self.try_enter_raw().then(|| GateGuard(self))
    }

    /// Waits while a hold is active, then admits the I/O.
    pub async fn enter(&self) -> GateGuard<'_> {
        poll_fn(|cx| {
            if let Some(g) = self.try_enter() {
                return Poll::Ready(g);
            }
            self.waiters
                .lock()
                .unwrap()
                .held_io
                .push(cx.waker().clone());
            // Re-check after registering: a release in between would otherwise be missed.
            match self.try_enter() {
                Some(g) => Poll::Ready(g),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Stops admitting I/O and waits until none is in flight. Callers serialise holds.
    pub async fn hold(&self) -> HoldGuard<'_> {
        self.held.store(true, SeqCst);
        let guard = HoldGuard(self);
        poll_fn(|cx| {
            self.waiters.lock().unwrap().drain = Some(cx.waker().clone());
            if self.in_flight.load(SeqCst) == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        guard
    }

    pub fn is_held(&self) -> bool {
        self.held.load(SeqCst)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(SeqCst)
    }

    fn release(&self) {
        self.held.store(false, SeqCst);
        let wakers = std::mem::take(&mut self.waiters.lock().unwrap().held_io);
        for w in wakers {
            w.wake();
        }
    }
}
