//! The target's socket driver: an accept thread, and per connection a reader thread and a
//! worker thread that owns the [`TargetConn`]. A slow backend or a slow host only ever
//! stalls its own connection.

use super::listener::Listener;
use crate::target::{IoResult, Target, TargetConn};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tracing::debug;

/// Received bytes a connection may have queued before its reader stops reading (TCP
/// backpressure then holds the host).
const MAX_PENDING_INPUT: usize = 4 << 20;

enum Ev {
    Input(Vec<u8>),
    IoDone(u64, IoResult),
    Eof,
}

/// Counts bytes handed from reader to worker, so the reader can wait.
struct Pending {
    bytes: Mutex<usize>,
    cv: Condvar,
}

/// A listening target. Dropping it (or [`TargetServer::shutdown`]) closes the listener and
/// every connection it accepted.
pub struct TargetServer(Listener);

impl TargetServer {
    /// Binds `listen` (port 0 picks one) and serves `target` there.
    pub fn start(target: Arc<Target>, listen: impl ToSocketAddrs) -> std::io::Result<Self> {
        Listener::start(target, listen, |t, s| {
            let _ = std::thread::Builder::new()
                .name("nvmf-conn".into())
                .spawn(move || serve_connection(t, s));
        })
        .map(Self)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    pub fn target(&self) -> &Arc<Target> {
        self.0.target()
    }

    /// Stops accepting and closes every connection (hosts see the target go away).
    pub fn shutdown(self) {}
}

/// Serves one connection until it closes.
pub fn serve_connection(target: Arc<Target>, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let (tx, rx) = mpsc::channel::<Ev>();
    let pending = Arc::new(Pending {
        bytes: Mutex::new(0),
        cv: Condvar::new(),
    });
    let Ok(mut rd) = stream.try_clone() else {
        return;
    };
    let (rtx, rp) = (tx.clone(), pending.clone());
    let reader = std::thread::Builder::new()
        .name("nvmf-conn-rx".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = rtx.send(Ev::Eof);
                        return;
                    }
                    Ok(n) => {
                        let mut p = rp.bytes.lock().unwrap_or_else(|e| e.into_inner());
                        while *p > MAX_PENDING_INPUT {
                            p = rp.cv.wait(p).unwrap_or_else(|e| e.into_inner());
                        }
                        *p += n;
                        drop(p);
                        if rtx.send(Ev::Input(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    let mut conn = TargetConn::new(target, Instant::now());
    let mut out = stream;
    loop {
        while let Some(req) = conn.poll_io() {
            let tx = tx.clone();
            let tag = req.tag;
            req.backend.submit(
                req.op,
                Box::new(move |r| {
                    let _ = tx.send(Ev::IoDone(tag, r));
                }),
            );
        }
        if let Some(bytes) = conn.poll_transmit() {
            if out.write_all(&bytes).is_err() {
                break;
            }
            continue;
        }
        if conn.is_closed() {
            break;
        }
        let now = Instant::now();
        let deadline = conn.poll_timeout().unwrap_or(now + Duration::from_secs(1));
        if deadline <= now {
            conn.handle_timeout(now);
            continue;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(Ev::Input(b)) => {
                let n = b.len();
                conn.handle_input(&b, Instant::now());
                let mut p = pending.bytes.lock().unwrap_or_else(|e| e.into_inner());
                *p = p.saturating_sub(n);
                pending.cv.notify_all();
            }
            Ok(Ev::IoDone(tag, r)) => conn.complete_io(tag, r),
            Ok(Ev::Eof) => break,
            Err(RecvTimeoutError::Timeout) => conn.handle_timeout(Instant::now()),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    debug!(?peer, reason = conn.close_reason(), "connection ends");
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
    // Unblock a reader waiting on backpressure, then let it see the shutdown.
    *pending.bytes.lock().unwrap_or_else(|e| e.into_inner()) = 0;
    pending.cv.notify_all();
    drop(rx);
    if let Ok(h) = reader {
        let _ = h.join();
    }
    // Outstanding backend completions hold senders; they are dropped when they finish.
    drop(conn);
}
