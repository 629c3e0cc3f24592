//! An [`RxDriver`] for callers that poll, as SPDK's initiators do: the thread that runs the
//! I/O also reads the queues' sockets ([`Poller::poll`]) and sends what its submitters
//! queued, with no reader thread and no wakeup per completion. [`Poller::spawn_thread`]
//! gives a controller one polling thread instead (its poll group).

use super::qpair::{QueueRx, QueueTx, RxDriver};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Debug, Default)]
pub struct Poller {
    /// Queues connected since the last poll (the first ones, and those of a reconnect).
    new: Mutex<Vec<QueueRx>>,
    flush: Mutex<Vec<QueueTx>>,
}

/// What one polling thread keeps between polls.
#[derive(Debug)]
pub struct PollState {
    live: Vec<QueueRx>,
    buf: Vec<u8>,
}

impl Default for PollState {
    fn default() -> Self {
        Self {
            live: Vec::new(),
            buf: vec![0u8; 64 * 1024],
        }
    }
}

impl RxDriver for Poller {
    fn spawn(&self, rx: QueueRx) {
        self.new.lock().unwrap_or_else(|e| e.into_inner()).push(rx);
    }

    fn defer_flush(&self, tx: QueueTx) {
        self.flush
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
    }
}

impl Poller {
    /// One pass: sends what was queued, then reads every live queue without blocking.
    /// Queues that ended are dropped. Only one thread may poll one `Poller`.
    pub fn poll(&self, st: &mut PollState) {
        let flush = std::mem::take(&mut *self.flush.lock().unwrap_or_else(|e| e.into_inner()));
        for tx in flush {
            tx.flush();
        }
        st.live
            .append(&mut self.new.lock().unwrap_or_else(|e| e.into_inner()));
        let buf = &mut st.buf;
        st.live.retain(|q| !q.poll(buf));
    }

    /// A thread that polls until the handle is dropped.
    pub fn spawn_thread(self: &Arc<Self>) -> std::io::Result<PollThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (self.clone(), stop.clone());
        let join = std::thread::Builder::new()
            .name("nvmf-host-poll".into())
            .spawn(move || {
                let mut st = PollState::default();
                while !s.load(Ordering::Acquire) {
                    p.poll(&mut st);
                    std::hint::spin_loop();
                }
            })?;
        Ok(PollThread {
            stop,
            join: Some(join),
        })
    }
}

/// The polling thread of [`Poller::spawn_thread`]; stops it when dropped.
#[derive(Debug)]
pub struct PollThread {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Drop for PollThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}
