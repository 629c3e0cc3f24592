//! A target's listening socket, shared by every connection driver (the thread-based
//! [`super::TargetServer`], the native host's reactor server): an accept thread hands each
//! connection to the driver's `serve`; stopping closes the listener and every connection
//! it accepted, so hosts see the target go away.

use crate::target::Target;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::warn;

pub struct Listener {
    target: Arc<Target>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Listener {
    /// Binds `listen` (port 0 picks one), registers it with `target` (the discovery log)
    /// and calls `serve` on the accept thread for every connection accepted.
    pub fn start(
        target: Arc<Target>,
        listen: impl ToSocketAddrs,
        serve: impl FnMut(Arc<Target>, TcpStream) + Send + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        target.add_listener(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (t, s, c) = (target.clone(), stop.clone(), conns.clone());
        let accept = std::thread::Builder::new()
            .name(format!("nvmf-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, t, s, c, serve))?;
        Ok(Self {
            target,
            addr,
            stop,
            conns,
            accept: Some(accept),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    fn stop_now(&mut self) {
        if self.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        // Shutting the sockets down ends their pending reads and writes (blocking or
        // io_uring), so each connection's driver sees the end on its own.
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.target.remove_listener(self.addr);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn accept_loop(
    listener: TcpListener,
    target: Arc<Target>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    mut serve: impl FnMut(Arc<Target>, TcpStream),
) {
    for s in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        if let Ok(c) = s.try_clone() {
            let mut v = conns.lock().unwrap_or_else(|e| e.into_inner());
            // Forget connections that have ended (their peer address is gone).
            v.retain(|c| c.peer_addr().is_ok());
            v.push(c);
        }
        serve(target.clone(), s);
    }
}
