//! The native host's NVMe/TCP socket driver: each connection is a task on one reactor,
//! which receives and sends through that reactor's io_uring, runs the sans-I/O
//! [`TargetConn`], and submits the namespace I/O on the same reactor. A capsule is parsed,
//! its bdev I/O run and its response written without leaving the reactor's thread, as in
//! SPDK's poll groups; the previous driver (`nvmf::driver::TargetServer`: a reader thread
//! and a worker thread per connection) paid two cross-thread wakeups per request, which
//! profiles showed as most of the native host's NVMe/TCP cost.
//!
//! Only accepting stays on a thread of its own (a blocking `accept`, once per connection).
//! Every socket operation is an io_uring op, so a slow or silent host only stalls its own
//! task and never its reactor; partial sends are resumed and input is handled in whatever
//! pieces it arrives.

use super::reactor::{Reactor, Sleep, sleep, spawn_local, uring};
use io_uring::{opcode, types};
use nvmf::driver::Listener;
use nvmf::target::{IoResult, Target, TargetConn, TxBatch};
use std::cell::RefCell;
use std::future::Future;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tracing::debug;

/// Bytes one receive may bring in.
const RECV_BUF: usize = 64 * 1024;
/// Responses a connection may have queued before it stops reading (TCP backpressure then
/// holds a host that does not read its completions).
const MAX_PENDING_OUTPUT: usize = 4 << 20;

/// Connections are spread over the reactors round robin, as SPDK spreads qpairs over its
/// poll groups.
static NEXT_REACTOR: AtomicUsize = AtomicUsize::new(0);

/// A listening target served by the reactors. Dropping it (or [`ReactorServer::shutdown`])
/// closes the listener and every connection it accepted.
pub struct ReactorServer(Listener);

impl ReactorServer {
    /// Binds `listen` (port 0 picks one) and serves `target` there on `reactors`.
    pub fn start(
        target: Arc<Target>,
        listen: impl ToSocketAddrs,
        reactors: Vec<Reactor>,
    ) -> std::io::Result<Self> {
        if reactors.is_empty() {
            return Err(std::io::Error::other("no reactors"));
        }
        Listener::start(target, listen, move |t, s| {
            let i = NEXT_REACTOR.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = reactors.get(i % reactors.len()) {
                r.send(move || spawn_local(serve(t, s)));
            }
        })
        .map(Self)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Stops accepting and closes every connection (hosts see the target go away).
    pub fn shutdown(self) {}
}

/// Backend completions of one connection. Backends may complete on any thread (the
/// `Backend` contract), so this is shared; on the native host they complete on the
/// connection's own reactor and the lock is never contended.
#[derive(Default)]
struct Completions {
    inner: Mutex<CompInner>,
}

#[derive(Default)]
struct CompInner {
    done: Vec<(u64, IoResult)>,
    waker: Option<Waker>,
    /// The connection task ended: drop late completions.
    closed: bool,
}

impl Completions {
    fn push(&self, tag: u64, r: IoResult) {
        let w = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if g.closed {
                return;
            }
            g.done.push((tag, r));
            g.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// A byte buffer an io_uring op reads or fills. Shared with the op (as its `keep`), so it
/// outlives a connection task dropped while the op is in flight. The task only touches
/// the bytes while no op holds the buffer.
type OpBuf = Rc<RefCell<Vec<u8>>>;

/// Iovecs one send may carry (a C2HData header, its data, the next header, ...).
const SEND_IOVECS: usize = 64;

/// A gather send: the connection's output with the read buffers in it, and the `sendmsg`
/// arguments pointing there. Shared with the op as its `keep`, like [`OpBuf`].
struct Gather {
    batch: TxBatch,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl Default for Gather {
    fn default() -> Self {
        Self {
            batch: TxBatch::default(),
            iov: Vec::with_capacity(SEND_IOVECS),
            // SAFETY: an all-zero msghdr is a valid empty one.
            msg: unsafe { std::mem::zeroed() },
        }
    }
}

struct Conn {
    stream: TcpStream,
    conn: TargetConn,
    comps: Arc<Completions>,
    /// Completions taken from `comps`, kept to reuse the vector's allocation.
    taken: Vec<(u64, IoResult)>,
    rx: OpBuf,
    recv: Option<super::reactor::UringOp>,
    /// What is being sent. PDUs produced meanwhile gather in the `TargetConn`, so that
    /// the next send carries all of them.
    tx: Rc<RefCell<Gather>>,
    tx_off: usize,
    send: Option<super::reactor::UringOp>,
    timer: Option<(Instant, Sleep)>,
    eof: bool,
}

/// Serves one connection on the calling reactor until it closes.
async fn serve(target: Arc<Target>, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let mut conn = TargetConn::new(target, Instant::now());
    // Read data goes out from its buffer (SPDK's target writes from the bdev's buffer).
    conn.set_gather(true);
    let mut c = Conn {
        stream,
        conn,
        comps: Arc::default(),
        taken: Vec::new(),
        rx: Rc::new(RefCell::new(vec![0u8; RECV_BUF])),
        recv: None,
        tx: Rc::default(),
        tx_off: 0,
        send: None,
        timer: None,
        eof: false,
    };
    std::future::poll_fn(|cx| c.poll(cx)).await;
    debug!(?peer, reason = c.conn.close_reason(), "connection ends");
    c.comps
        .inner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .closed = true;
    // Completes a receive or send still in flight (their buffers live in the op slots).
    let _ = c.stream.shutdown(Shutdown::Both);
}

impl Conn {
    /// Drives the connection as far as it goes without waiting; `Ready` when it is over.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut progress = false;
            // Register before draining, so a completion racing in from another thread
            // still wakes us.
            {
                let mut g = self.comps.inner.lock().unwrap_or_else(|e| e.into_inner());
                g.waker = Some(cx.waker().clone());
                std::mem::swap(&mut g.done, &mut self.taken);
            }
            for (tag, r) in self.taken.drain(..) {
                // A buffer handed back (not spliced into the output) serves the next read
                // on this reactor.
                if let Some(b) = self.conn.complete_io_keep(tag, r) {
                    super::node::recycle_read_buf(b);
                }
                progress = true;
            }
            while let Some(req) = self.conn.poll_io() {
                let comps = self.comps.clone();
                let tag = req.tag;
                req.backend
                    .submit(req.op, Box::new(move |r| comps.push(tag, r)));
                progress = true;
            }
            progress |= self.poll_send(cx);
            if self.eof || (self.conn.is_closed() && self.send.is_none()) {
                return Poll::Ready(());
            }
            if !self.conn.is_closed() {
                progress |= self.poll_recv(cx);
                progress |= self.poll_timer(cx);
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Starts or advances the send; true when something changed.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        if let Some(op) = self.send.as_mut() {
            let Poll::Ready(n) = Pin::new(op).poll(cx) else {
                return false;
            };
            self.send = None;
            progress = true;
            if n <= 0 {
                // The host is gone (or the socket was shut down): nothing more to say.
                self.conn_lost(if n == 0 {
                    "send: no progress"
                } else {
                    "send failed"
                });
                return true;
            }
            self.tx_off += n as usize;
            if self.tx_off >= self.tx.borrow().batch.len() {
                // All sent: the read buffers serve the next reads on this reactor.
                self.tx
                    .borrow_mut()
                    .batch
                    .clear(super::node::recycle_read_buf);
                self.tx_off = 0;
            }
        }
        if self.tx_off == 0 {
            // Everything sent so far is out: take what the connection has produced since
            // (the two batches trade places and keep their capacity).
            self.conn.transmit_gather(&mut self.tx.borrow_mut().batch);
            if self.tx.borrow().batch.is_empty() {
                return progress;
            }
        }
        let msg = {
            let mut g = self.tx.borrow_mut();
            let g = &mut *g;
            g.batch.iovecs(self.tx_off, SEND_IOVECS, &mut g.iov);
            g.msg.msg_iov = g.iov.as_mut_ptr();
            g.msg.msg_iovlen = g.iov.len();
            &raw const g.msg
        };
        let e = opcode::SendMsg::new(types::Fd(self.stream.as_raw_fd()), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        let mut op = uring(e, Some(Box::new(self.tx.clone())));
        // Polling submits it; the result comes on a later turn.
        if let Poll::Ready(r) = Pin::new(&mut op).poll(cx) {
            self.conn_lost(&format!("send not submitted: {r}"));
            return true;
        }
        self.send = Some(op);
        true
    }

    /// Starts or completes the receive; true when something changed.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(op) = self.recv.as_mut() {
            let Poll::Ready(n) = Pin::new(op).poll(cx) else {
                return false;
            };
            self.recv = None;
            if n <= 0 {
                self.conn_lost(if n == 0 { "host closed" } else { "recv failed" });
                return true;
            }
            let b = self.rx.borrow();
            let data = b.get(..n as usize).unwrap_or(&[]);
            self.conn.handle_input(data, Instant::now());
            return true;
        }
        if self.conn.pending_transmit() + self.tx.borrow().batch.len() > MAX_PENDING_OUTPUT {
            // The send in flight wakes us when the host reads again.
            return false;
        }
        let ptr = self.rx.borrow_mut().as_mut_ptr();
        let e = opcode::Recv::new(types::Fd(self.stream.as_raw_fd()), ptr, RECV_BUF as u32).build();
        let mut op = uring(e, Some(Box::new(self.rx.clone())));
        if let Poll::Ready(r) = Pin::new(&mut op).poll(cx) {
            self.conn_lost(&format!("recv not submitted: {r}"));
            return true;
        }
        self.recv = Some(op);
        false
    }

    /// Keeps a reactor timer at the connection's next deadline; true when it fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let Some(deadline) = self.conn.poll_timeout() else {
            self.timer = None;
            return false;
        };
        if deadline <= now {
            self.timer = None;
            self.conn.handle_timeout(now);
            return true;
        }
        // One timer per deadline: registered once, it wakes this task when due (any of
        // the task's wakers will do), so it need not be polled on every turn.
        if self.timer.as_ref().is_none_or(|(d, _)| *d != deadline) {
            let mut t = sleep(deadline - now);
            if Pin::new(&mut t).poll(cx).is_ready() {
                self.conn.handle_timeout(Instant::now());
                self.timer = None;
                return true;
            }
            self.timer = Some((deadline, t));
        }
        false
    }

    fn conn_lost(&mut self, why: &str) {
        debug!(why, "socket ends");
        self.eof = true;
    }
}

#[cfg(test)]
#[path = "nvmf_tcp_tests.rs"]
mod tests;
