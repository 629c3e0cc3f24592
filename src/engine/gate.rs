//! Holds new I/O and drains in-flight I/O around checkpoints and stage switches.
//!
//! The hot path costs two atomic operations and no lock: the mutex is taken only while a
//! hold is active. Holds queue behind each other (a checkpoint and the end of a merge may
//! both want one), and every task waiting for a drain is woken.

use std::future::poll_fn;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct IoGate {
    in_flight: AtomicU64,
    held: AtomicBool,
    /// Serialises holders: only one hold is active at a time.
    holders: futures::lock::Mutex<()>,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    held_io: Vec<Waker>,
    drain: Vec<Waker>,
}

/// Proof that an I/O is counted in flight; dropping it ends the I/O.
pub struct GateGuard<'a>(&'a IoGate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.exit();
    }
}

/// While alive, new I/O waits; dropping it lets held I/O go (or the next holder in).
pub struct HoldGuard<'a> {
    gate: &'a IoGate,
    _holder: futures::lock::MutexGuard<'a, ()>,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        self.gate.release();
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
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
        if self.in_flight.fetch_sub(1, SeqCst) == 1 && self.held.load(SeqCst) {
            let drain = std::mem::take(&mut self.waiters.lock().unwrap().drain);
            wake_all(drain);
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

    /// Stops admitting I/O and waits until none is in flight. A second caller waits until
    /// the first hold is released.
    pub async fn hold(&self) -> HoldGuard<'_> {
        let holder = self.holders.lock().await;
        self.held.store(true, SeqCst);
        let guard = HoldGuard {
            gate: self,
            _holder: holder,
        };
        poll_fn(|cx| {
            if self.in_flight.load(SeqCst) == 0 {
                return Poll::Ready(());
            }
            let mut w = self.waiters.lock().unwrap();
            if !w.drain.iter().any(|d| d.will_wake(cx.waker())) {
                w.drain.push(cx.waker().clone());
            }
            drop(w);
            // Re-check after registering: the last exit may have run in between.
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
        let held_io = std::mem::take(&mut self.waiters.lock().unwrap().held_io);
        wake_all(held_io);
    }
}
