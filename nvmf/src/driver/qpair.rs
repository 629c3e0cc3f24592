//! One initiator connection on a socket. Received bytes feed the [`HostQueue`] and wake
//! the futures of completed commands; who reads the socket is the connection's
//! [`RxDriver`]: by default a reader thread, or the caller's runtime (an io_uring reactor,
//! a polling loop) through a [`QueueRx`], which saves a thread wakeup per completion. A
//! submitter sends its PDUs itself with a non-blocking `send` (no thread handoff on the
//! fast path); only what the socket does not take at once goes to a writer thread, so a
//! submitter never blocks on the socket and the reader never waits for a writer.

use super::Error;
use crate::host::{HostEvent, HostQueue, HostQueueConfig};
use crate::nvme::cmd::{Cqe, Sqe};
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

type CmdResult = Result<(Cqe, Vec<u8>), Error>;

/// Reads the sockets of a controller's queues in place of the reader threads.
pub trait RxDriver: Send + Sync + std::fmt::Debug {
    /// Called once for every queue connected (again after each reconnect, with the new
    /// queue's socket). The driver reads `rx`'s socket and hands every byte, in order, to
    /// [`QueueRx::input`] until it returns true, and reports the end of the stream with
    /// [`QueueRx::closed`].
    fn spawn(&self, rx: QueueRx);

    /// A submitter queued PDUs on a queue: the driver calls [`QueueTx::flush`] soon, e.g.
    /// at the end of its current turn, so that the commands submitted in one turn leave in
    /// one `send` (a `send` per command is most of an initiator's cost at depth). Called
    /// once per batch: not again until that flush. The default sends at once.
    fn defer_flush(&self, tx: QueueTx) {
        tx.flush();
    }
}

/// The send side of one initiator queue, for [`RxDriver::defer_flush`].
pub struct QueueTx(Arc<QPair>);

impl std::fmt::Debug for QueueTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueTx")
            .field("fd", &self.0.stream.as_raw_fd())
            .finish()
    }
}

impl QueueTx {
    /// Sends what the queue's submitters left queued.
    pub fn flush(self) {
        drop(self);
    }
}

impl Drop for QueueTx {
    // A driver that drops the handle (shutting down) still sends: nothing is left queued.
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.flush_deferred = false;
        self.0.flush(&mut g);
    }
}

/// The receive side of one initiator queue, for an [`RxDriver`].
pub struct QueueRx {
    qp: Weak<QPair>,
    /// A duplicate of the queue's socket: the fd stays valid while the driver holds it.
    stream: TcpStream,
}

impl std::fmt::Debug for QueueRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueRx").field("fd", &self.fd()).finish()
    }
}

impl QueueRx {
    /// The socket to read (blocking mode; read with `MSG_DONTWAIT` or io_uring).
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Feeds received bytes; true when the queue is gone or failed: stop reading.
    pub fn input(&self, data: &[u8]) -> bool {
        match self.qp.upgrade() {
            Some(qp) => qp.input(data),
            None => true,
        }
    }

    /// The socket ended (EOF or a receive error).
    pub fn closed(&self, reason: &str) {
        if let Some(qp) = self.qp.upgrade() {
            qp.fail(reason);
        }
    }

    /// Reads what the socket holds without blocking and feeds it, for drivers that poll;
    /// true when the queue is done (stop polling it).
    pub fn poll(&self, buf: &mut [u8]) -> bool {
        loop {
            // SAFETY: receives into a live, exclusively borrowed buffer on a socket this
            // handle keeps open; MSG_DONTWAIT makes this call alone non-blocking.
            let n = unsafe {
                libc::recv(
                    self.fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => {
                    self.closed("connection closed");
                    return true;
                }
                n if n < 0 => {
                    let e = std::io::Error::last_os_error();
                    return match e.kind() {
                        std::io::ErrorKind::WouldBlock => false,
                        std::io::ErrorKind::Interrupted => continue,
                        _ => {
                            self.closed(&format!("recv: {e}"));
                            true
                        }
                    };
                }
                n => {
                    if self.input(buf.get(..n as usize).unwrap_or(&[])) {
                        return true;
                    }
                    if (n as usize) < buf.len() {
                        return false;
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct Slot {
    result: Option<CmdResult>,
    waker: Option<Waker>,
    /// The future was dropped: discard the result when it comes.
    abandoned: bool,
}

struct Inner {
    q: HostQueue,
    slots: HashMap<u16, Slot>,
    /// Futures waiting for ICResp or for a free queue slot.
    waiting: Vec<Waker>,
    failed: Option<String>,
    /// A [`QueueTx`] is with the driver: submitters leave their PDUs to it.
    flush_deferred: bool,
}

pub(crate) struct QPair {
    inner: Mutex<Inner>,
    tx: Sender<Vec<u8>>,
    /// Buffers handed to the writer thread and not yet fully written. While any are, new
    /// PDUs must queue behind them to keep their order.
    queued: Arc<AtomicUsize>,
    stream: TcpStream,
    driver: Option<Arc<dyn RxDriver>>,
}

impl QPair {
    pub(crate) fn connect(
        addr: SocketAddr,
        cfg: HostQueueConfig,
        timeout: Duration,
        driver: Option<&Arc<dyn RxDriver>>,
    ) -> Result<Arc<Self>, Error> {
        let stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| Error::Io(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let mut q = HostQueue::new(cfg);
        let first = q.poll_transmit().unwrap_or_default();
        // The ICReq counts as queued until the writer has sent it.
        let queued = Arc::new(AtomicUsize::new(1));
        let wq = queued.clone();
        let qp = Arc::new(Self {
            inner: Mutex::new(Inner {
                q,
                slots: HashMap::new(),
                waiting: Vec::new(),
                failed: None,
                flush_deferred: false,
            }),
            tx,
            queued,
            driver: driver.cloned(),
            stream: stream.try_clone().map_err(|e| Error::Io(e.to_string()))?,
        });
        let mut w = stream.try_clone().map_err(|e| Error::Io(e.to_string()))?;
        std::thread::Builder::new()
            .name("nvmf-host-tx".into())
            .spawn(move || {
                if w.write_all(&first).is_err() {
                    let _ = w.shutdown(Shutdown::Both);
                    return;
                }
                wq.fetch_sub(1, Ordering::AcqRel);
                while let Ok(b) = rx.recv() {
                    if w.write_all(&b).is_err() {
                        let _ = w.shutdown(Shutdown::Both);
                        return;
                    }
                    wq.fetch_sub(1, Ordering::AcqRel);
                }
            })
            .map_err(|e| Error::Io(e.to_string()))?;
        let weak = Arc::downgrade(&qp);
        if let Some(driver) = driver {
            driver.spawn(QueueRx { qp: weak, stream });
            return Ok(qp);
        }
        let rx = QueueRx { qp: weak, stream };
        std::thread::Builder::new()
            .name("nvmf-host-rx".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match (&rx.stream).read(&mut buf) {
                        Ok(0) => return rx.closed("connection closed"),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return rx.closed("connection closed"),
                        Ok(n) => {
                            if rx.input(buf.get(..n).unwrap_or(&[])) {
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::Io(e.to_string()))?;
        Ok(qp)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends what the queue produced; called with the lock held so PDUs keep their order.
    /// Tries the socket directly first (never blocking: `MSG_DONTWAIT`); the rest, or all
    /// of it while the writer thread still has bytes, goes to the writer.
    fn flush(&self, inner: &mut Inner) {
        let Some(b) = inner.q.poll_transmit() else {
            return;
        };
        let mut sent = 0;
        if self.queued.load(Ordering::Acquire) == 0 {
            while sent < b.len() {
                let rest = b.get(sent..).unwrap_or(&[]);
                // SAFETY: sends from a live slice on a socket this QPair owns; the flags
                // make it non-blocking for this call only (the reader's fd stays blocking).
                let n = unsafe {
                    libc::send(
                        self.stream.as_raw_fd(),
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n <= 0 {
                    // EAGAIN (socket full), EINTR, or an error the writer will meet too.
                    break;
                }
                sent += n as usize;
            }
        }
        if sent < b.len() {
            self.queued.fetch_add(1, Ordering::AcqRel);
            let rest = if sent == 0 {
                b
            } else {
                b.get(sent..).unwrap_or(&[]).to_vec()
            };
            if self.tx.send(rest).is_err() {
                // The writer is gone (the socket failed); the reader reports the failure.
                self.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Handles received bytes; returns true when the queue has failed.
    fn input(&self, data: &[u8]) -> bool {
        let mut wake = Vec::new();
        let failed = {
            let mut g = self.lock();
            g.q.handle_input(data);
            self.flush(&mut g);
            Self::drain_events(&mut g, &mut wake);
            g.failed.is_some()
        };
        for w in wake {
            w.wake();
        }
        failed
    }

    fn drain_events(g: &mut Inner, wake: &mut Vec<Waker>) {
        while let Some(ev) = g.q.poll_event() {
            match ev {
                HostEvent::Ready => wake.append(&mut g.waiting),
                HostEvent::Completion { cid, cqe, data } => {
                    if g.slots.get(&cid).is_some_and(|s| s.abandoned) {
                        g.slots.remove(&cid);
                    } else if let Some(slot) = g.slots.get_mut(&cid) {
                        slot.result = Some(Ok((cqe, data)));
                        wake.extend(slot.waker.take());
                    }
                    // A slot freed: let one waiting submitter in (all, to keep it simple).
                    wake.append(&mut g.waiting);
                }
                HostEvent::Failed(reason) => {
                    g.failed = Some(reason.clone());
                    for slot in g.slots.values_mut() {
                        if slot.result.is_none() {
                            slot.result = Some(Err(Error::Transport(reason.clone())));
                            wake.extend(slot.waker.take());
                        }
                    }
                    wake.append(&mut g.waiting);
                }
            }
        }
    }

    /// Fails the queue (socket gone, keep alive lost, controller torn down).
    pub(crate) fn fail(&self, reason: &str) {
        let mut wake = Vec::new();
        {
            let mut g = self.lock();
            g.q.fail(reason);
            self.flush(&mut g);
            Self::drain_events(&mut g, &mut wake);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        for w in wake {
            w.wake();
        }
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.lock().failed.is_some()
    }

    pub(crate) fn maxh2cdata(&self) -> usize {
        self.lock().q.maxh2cdata()
    }

    pub(crate) fn set_in_capsule_limit(&self, n: usize) {
        self.lock().q.set_in_capsule_limit(n);
    }

    /// Waits for the ICResp.
    pub(crate) fn ready(self: &Arc<Self>) -> impl Future<Output = Result<(), Error>> + use<> {
        let qp = self.clone();
        std::future::poll_fn(move |cx| {
            let mut g = qp.lock();
            if let Some(r) = &g.failed {
                return Poll::Ready(Err(Error::Transport(r.clone())));
            }
            if g.q.is_ready() {
                return Poll::Ready(Ok(()));
            }
            g.waiting.push(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Runs one command: submits it (waiting for a free slot) and waits for its completion.
    pub(crate) fn exec(self: &Arc<Self>, sqe: Sqe, write: Bytes, read_len: usize) -> Exec {
        Exec {
            qp: self.clone(),
            sqe,
            write,
            read_len,
            cid: None,
        }
    }
}

impl Drop for QPair {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// The future of [`QPair::exec`].
pub(crate) struct Exec {
    qp: Arc<QPair>,
    sqe: Sqe,
    write: Bytes,
    read_len: usize,
    cid: Option<u16>,
}

impl Future for Exec {
    type Output = CmdResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CmdResult> {
        let this = self.get_mut();
        let qp = this.qp.clone();
        let mut g = qp.lock();
        if let Some(cid) = this.cid {
            let Some(slot) = g.slots.get_mut(&cid) else {
                return Poll::Ready(Err(Error::Transport("command lost".into())));
            };
            if let Some(r) = slot.result.take() {
                g.slots.remove(&cid);
                this.cid = None;
                return Poll::Ready(r);
            }
            slot.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(r) = &g.failed {
            return Poll::Ready(Err(Error::Transport(r.clone())));
        }
        if !g.q.is_ready() || !g.q.has_room() {
            g.waiting.push(cx.waker().clone());
            return Poll::Pending;
        }
        match g.q.submit(this.sqe, this.write.clone(), this.read_len) {
            Ok(cid) => {
                this.cid = Some(cid);
                g.slots.insert(
                    cid,
                    Slot {
                        result: None,
                        waker: Some(cx.waker().clone()),
                        abandoned: false,
                    },
                );
                match &qp.driver {
                    Some(d) if !g.flush_deferred => {
                        g.flush_deferred = true;
                        drop(g);
                        d.defer_flush(QueueTx(qp.clone()));
                    }
                    Some(_) => {}
                    None => qp.flush(&mut g),
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(Error::Transport(e.to_string()))),
        }
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        // An abandoned command keeps its queue slot until the controller answers; only
        // the result is thrown away.
        if let Some(cid) = self.cid {
            let mut g = self.qp.lock();
            if let Some(slot) = g.slots.get_mut(&cid) {
                if slot.result.is_some() {
                    g.slots.remove(&cid);
                } else {
                    slot.waker = None;
                    slot.abandoned = true;
                }
            }
        }
    }
}
