//! A controller: a listening vhost-user socket served by one thread, one frontend
//! connection at a time (a new one is accepted when the previous frontend leaves, as
//! SPDK's controllers accept a restarted QEMU).

use crate::device::BlkDevice;
use crate::{BlockBackend, Error};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Most queues a controller offers.
pub const MAX_QUEUES: usize = 64;

#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Thread and log name.
    pub name: String,
    /// The socket to create; it must not exist.
    pub socket: PathBuf,
    pub num_queues: usize,
    /// GET_ID's answer (truncated to 20 bytes).
    pub id: String,
}

struct Shared {
    stop: AtomicBool,
    wake: EventFd,
    conn: Mutex<Option<ShutdownHandle>>,
    connected: AtomicBool,
    /// Shared with every connection's device: requests fail once set.
    failed: Arc<AtomicBool>,
}

/// A running vhost-user-blk controller; dropping it stops it and removes its socket.
pub struct Controller {
    shared: Arc<Shared>,
    socket: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Controller {
    /// Creates the socket and starts serving `backend` on it. Nothing is left behind on
    /// error.
    pub fn start<B: BlockBackend>(backend: Arc<B>, opts: ControllerOptions) -> Result<Self, Error> {
        if opts.num_queues == 0 || opts.num_queues > MAX_QUEUES {
            return Err(Error::Config(format!(
                "num_queues must be 1 to {MAX_QUEUES}, not {}",
                opts.num_queues
            )));
        }
        let bs = backend.block_size();
        if bs < 512 || !bs.is_power_of_two() {
            return Err(Error::Config(format!("block size {bs} is not supported")));
        }
        let path = opts.socket.display().to_string();
        if std::fs::symlink_metadata(&opts.socket).is_ok() {
            return Err(Error::SocketExists(path));
        }
        // Bound here, not by vhost's Listener::new: that one unlinks the path when dropped,
        // which could remove a newer controller's socket of the same name.
        let listener = std::os::unix::net::UnixListener::bind(&opts.socket)
            .map(Listener::from)
            .map_err(|source| Error::Listen {
                path: path.clone(),
                source,
            })?;
        let unlink = |e| {
            let _ = std::fs::remove_file(&opts.socket);
            Error::Thread(e)
        };
        let wake = EventFd::new(EFD_NONBLOCK).map_err(unlink)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wake,
            conn: Mutex::new(None),
            connected: AtomicBool::new(false),
            failed: Arc::new(AtomicBool::new(false)),
        });
        let s = shared.clone();
        let socket = opts.socket.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{}", opts.name))
            .spawn(move || serve(listener, backend, opts, s));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                return Err(Error::Thread(e));
            }
        };
        Ok(Self {
            shared,
            socket: PathBuf::from(path),
            thread: Some(thread),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether a frontend is connected.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Fails every further request with IOERR (the device under it went away).
    pub fn fail_io(&self) {
        self.shared.failed.store(true, Ordering::Release);
    }

    /// Disconnects the frontend, stops serving and removes the socket; returns once the
    /// controller's threads are gone.
    pub fn stop(mut self) {
        if let Some(t) = self.signal_stop() {
            join(t);
        }
    }

    /// As [`stop`](Self::stop), without waiting for the threads: the socket is gone and
    /// the frontend disconnected on return; the threads end on their own (for callers
    /// that must not block, such as an event loop a completion may need).
    pub fn stop_detached(mut self) {
        if let Some(t) = self.signal_stop() {
            let r = std::thread::Builder::new()
                .name("vhost-stop".into())
                .spawn(move || join(t));
            if let Err(e) = r {
                tracing::warn!("vhost-blk: cannot start the stop thread: {e}");
            }
        }
    }

    fn signal_stop(&mut self) -> Option<JoinHandle<()>> {
        let t = self.thread.take()?;
        self.shared.failed.store(true, Ordering::Release);
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = lock(&self.shared.conn).as_ref() {
            h.shutdown();
        }
        let _ = self.shared.wake.write(1);
        let _ = std::fs::remove_file(&self.socket);
        Some(t)
    }
}

fn join(t: JoinHandle<()>) {
    if t.join().is_err() {
        tracing::error!("vhost-blk: controller thread panicked");
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(t) = self.signal_stop() {
            join(t);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until the listener has a connection (true) or a stop was asked (false).
fn wait_connection(listener: &Listener, shared: &Shared) -> bool {
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return false;
        }
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if shared.stop.load(Ordering::Acquire) {
            return false;
        }
        if n > 0 && fds[0].revents & libc::POLLIN != 0 {
            return true;
        }
    }
}

fn serve<B: BlockBackend>(
    mut listener: Listener,
    backend: Arc<B>,
    opts: ControllerOptions,
    shared: Arc<Shared>,
) {
    // Nonblocking, so an aborted connection cannot leave the accept below stuck; it is
    // only reached when poll saw a pending connection.
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::warn!("vhost {}: {e}", opts.name);
    }
    while wait_connection(&listener, &shared) {
        // A fresh device and memory map per frontend connection.
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let dev = Arc::new(BlkDevice::new(
            backend.clone(),
            opts.num_queues,
            &opts.id,
            mem.clone(),
            shared.failed.clone(),
        ));
        let mut daemon = match VhostUserDaemon::new(opts.name.clone(), dev, mem) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("vhost {}: cannot create the device: {e}", opts.name);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(e) = daemon.start(&mut listener) {
            tracing::warn!("vhost {}: accepting a frontend: {e}", opts.name);
            continue;
        }
        {
            let mut c = lock(&shared.conn);
            *c = daemon.shutdown_handle();
            if shared.stop.load(Ordering::Acquire) {
                daemon.request_shutdown();
            }
        }
        shared.connected.store(true, Ordering::Release);
        tracing::info!("vhost {}: frontend connected", opts.name);
        if let Err(e) = daemon.wait() {
            tracing::info!("vhost {}: frontend connection ended: {e}", opts.name);
        } else {
            tracing::info!("vhost {}: frontend disconnected", opts.name);
        }
        *lock(&shared.conn) = None;
        shared.connected.store(false, Ordering::Release);
        // Dropping the daemon stops its vring worker threads.
        drop(daemon);
    }
}
