//! The Unix-socket listener and the per-connection reader/writer threads.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::framer::{Framer, Step};
use crate::reply::{Batch, Conn, Sink};
use crate::request::{self, Item, Parsed};
use crate::{
    Dispatch, INVALID_REQUEST, MAX_CONNECTIONS, MAX_OUTSTANDING, MAX_REQUEST_SIZE, PARSE_ERROR,
    Reply,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("RPC socket {} is in use by another process", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; not removing it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot listen on RPC socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start an RPC server thread")]
    Spawn(#[source] io::Error),
}

/// A running server; [`Server::shutdown`] or dropping it stops it.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    inode: (u64, u64),
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    conns: Mutex<Table>,
    slot_free: Condvar,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    live: Vec<(u64, Arc<Conn>, UnixStream)>,
    threads: Vec<JoinHandle<()>>,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Server {
    /// Listens on `path` and serves `dispatch`. A stale socket file (nobody
    /// listening) is removed; a live one is an error.
    pub fn bind(path: impl AsRef<Path>, dispatch: impl Dispatch) -> Result<Server, Error> {
        let path = path.as_ref().to_owned();
        remove_stale(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| Error::Bind {
            path: path.clone(),
            source,
        })?;
        let meta = std::fs::metadata(&path).map_err(|source| Error::Bind {
            path: path.clone(),
            source,
        })?;
        let shared = Arc::new(Shared::default());
        let dispatch: Arc<dyn Dispatch> = Arc::new(dispatch);
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name("jsonrpc-accept".into())
            .spawn(move || accept_loop(listener, s, dispatch))
            .map_err(Error::Spawn)?;
        tracing::info!(path = %path.display(), "JSON-RPC server listening");
        Ok(Server {
            path,
            inode: (meta.dev(), meta.ino()),
            shared,
            accept: Some(accept),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, removes the socket file, closes every connection
    /// (late replies are dropped) and joins the server's threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.slot_free.notify_all();
        // Wake the blocking accept() with a connection of our own, but only
        // if the file is still our socket (else join could wait forever).
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode);
        if ours && UnixStream::connect(&self.path).is_ok() {
            let _ = accept.join();
        }
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(error = %e, "cannot remove RPC socket file");
        }
        let threads = {
            let mut t = self.shared.table();
            for (_, conn, stream) in &t.live {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                conn.lock().closing = true;
                conn.changed.notify_all();
            }
            std::mem::take(&mut t.threads)
        };
        for t in threads {
            let _ = t.join();
        }
        tracing::info!(path = %self.path.display(), "JSON-RPC server stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn remove_stale(path: &Path) -> Result<(), Error> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::NotASocket { path: path.into() });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::InUse { path: path.into() }),
        Err(_) => {
            tracing::info!(path = %path.display(), "removing stale RPC socket");
            std::fs::remove_file(path).map_err(|source| Error::Bind {
                path: path.into(),
                source,
            })
        }
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>, dispatch: Arc<dyn Dispatch>) {
    loop {
        {
            let mut t = shared.table();
            t.threads.retain(|h| !h.is_finished());
            while t.live.len() >= MAX_CONNECTIONS && !shared.stopping.load(Ordering::SeqCst) {
                t = shared.slot_free.wait(t).unwrap_or_else(|p| p.into_inner());
            }
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "RPC accept failed");
                // E.g. EMFILE: do not spin.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = start_conn(stream, &shared, &dispatch) {
            tracing::warn!(error = %e, "cannot serve RPC connection");
        }
    }
}

fn start_conn(
    stream: UnixStream,
    shared: &Arc<Shared>,
    dispatch: &Arc<dyn Dispatch>,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let conn = Arc::new(Conn::new(tx));
    let mut writer = stream.try_clone()?;
    let registry = stream.try_clone()?;
    let writer_thread = thread::Builder::new()
        .name("jsonrpc-write".into())
        .spawn(move || {
            let mut broken = false;
            // Ends when the reader has dropped the sender, after draining.
            for bytes in rx {
                if !broken && let Err(e) = writer.write_all(&bytes) {
                    tracing::debug!(error = %e, "RPC client went away");
                    broken = true;
                    let _ = writer.shutdown(std::net::Shutdown::Both);
                }
            }
            let _ = writer.shutdown(std::net::Shutdown::Both);
        })?;
    let mut t = shared.table();
    let id = t.next;
    t.next += 1;
    let (c, s, d) = (conn.clone(), shared.clone(), dispatch.clone());
    let reader = thread::Builder::new()
        .name("jsonrpc-conn".into())
        .spawn(move || {
            serve(stream, &c, &*d);
            c.lock().tx = None;
            let _ = writer_thread.join();
            s.table().live.retain(|(i, ..)| *i != id);
            s.slot_free.notify_all();
        })?;
    t.live.push((id, conn, registry));
    t.threads.push(reader);
    Ok(())
}

/// Why a connection stops reading.
enum End {
    Eof,
    ParseError,
    TooLarge,
}

/// Reads and dispatches until the stream ends or goes bad.
fn serve(mut stream: UnixStream, conn: &Arc<Conn>, dispatch: &dyn Dispatch) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut framer = Framer::new();
    let end = 'read: loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break End::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "RPC read failed");
                break End::Eof;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let consumed;
        loop {
            match framer.next(&buf) {
                Step::Value { start, end } => {
                    if end - start > MAX_REQUEST_SIZE {
                        break 'read End::TooLarge;
                    }
                    if !wait_for_room(conn) || !handle(&buf[start..end], conn, dispatch) {
                        break 'read End::ParseError;
                    }
                    framer.reset_at(end);
                }
                Step::NeedMore { start } => {
                    // Whitespace before a value is not kept.
                    consumed = start.unwrap_or(buf.len());
                    break;
                }
                Step::Invalid(why) => {
                    tracing::warn!(why, "RPC request is not valid JSON");
                    parse_error(conn);
                    break 'read End::ParseError;
                }
            }
        }
        buf.drain(..consumed);
        framer.shift(consumed);
        if buf.len() > MAX_REQUEST_SIZE {
            break End::TooLarge;
        }
    };
    match end {
        End::Eof => {
            // SPDK keeps answering after the client's half-close.
            let mut st = conn.lock();
            while st.outstanding > 0 && !st.closing {
                st = conn.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
        End::ParseError => {}
        End::TooLarge => {
            tracing::warn!(
                limit = MAX_REQUEST_SIZE,
                "RPC request too large; closing connection"
            );
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Read);
}

/// Backpressure: false if the server is closing.
fn wait_for_room(conn: &Conn) -> bool {
    let mut st = conn.lock();
    while st.outstanding >= MAX_OUTSTANDING && !st.closing {
        st = conn.changed.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    !st.closing
}

fn parse_error(conn: &Arc<Conn>) {
    Reply::new(None, Sink::Single(conn.clone())).err(PARSE_ERROR, "Parse error");
}

/// Handles one framed value; false after a parse error.
fn handle(bytes: &[u8], conn: &Arc<Conn>, dispatch: &dyn Dispatch) -> bool {
    match request::parse(bytes) {
        Parsed::ParseError => {
            tracing::warn!("RPC request is not valid JSON");
            parse_error(conn);
            return false;
        }
        Parsed::Single(item) => run(item, Sink::Single(conn.clone()), dispatch),
        Parsed::Batch(items) => {
            let batch = Batch::new(conn.clone(), items.len());
            for item in items {
                run(item, Sink::Batch(batch.clone()), dispatch);
            }
            batch.complete(None);
        }
    }
    true
}

fn run(item: Item<'_>, sink: Sink, dispatch: &dyn Dispatch) {
    match item {
        Item::Invalid { id } => Reply::new(id, sink).err(INVALID_REQUEST, "Invalid request"),
        Item::Call { method, params, id } => {
            let reply = Reply::new(id, sink);
            tracing::debug!(%method, "RPC request");
            // The reply, dropped while unwinding, answers -32603.
            if catch_unwind(AssertUnwindSafe(|| dispatch.call(&method, params, reply))).is_err() {
                tracing::error!(%method, "RPC handler panicked");
            }
        }
    }
}
