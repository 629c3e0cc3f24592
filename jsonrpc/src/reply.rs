//! Answers: building SPDK-shaped responses and queueing them per connection.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde_json::Value;
use serde_json::value::RawValue;

use crate::{INTERNAL_ERROR, MAX_RESPONSE_SIZE};

/// An application error for [`Reply::finish`]; `code` is a JSON-RPC code or,
/// SPDK-style, a negative errno (e.g. `-libc::ENODEV`), passed through as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// The per-connection state shared by its reader, writer and replies.
#[derive(Debug)]
pub(crate) struct Conn {
    state: Mutex<ConnState>,
    /// Signalled when `outstanding` drops or the server is closing.
    pub(crate) changed: Condvar,
}

#[derive(Debug)]
pub(crate) struct ConnState {
    /// `None` once the connection stopped sending: late replies are dropped.
    pub(crate) tx: Option<Sender<Vec<u8>>>,
    pub(crate) outstanding: usize,
    pub(crate) closing: bool,
}

impl Conn {
    pub(crate) fn new(tx: Sender<Vec<u8>>) -> Self {
        Conn {
            state: Mutex::new(ConnState {
                tx: Some(tx),
                outstanding: 0,
                closing: false,
            }),
            changed: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ConnState> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain counters; carrying on is safer than panicking here too.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more response (single or batch) is owed.
    pub(crate) fn begin(&self) {
        self.lock().outstanding += 1;
    }

    /// Settles one owed response, sending `bytes` if there are any.
    pub(crate) fn finish(&self, bytes: Option<Vec<u8>>) {
        let mut st = self.lock();
        if let (Some(bytes), Some(tx)) = (bytes, st.tx.as_ref())
            && tx.send(bytes).is_err()
        {
            tracing::debug!("response dropped: connection writer gone");
        }
        st.outstanding = st.outstanding.saturating_sub(1);
        drop(st);
        self.changed.notify_all();
    }
}

/// The elements of one batch, collected in completion order.
#[derive(Debug)]
pub(crate) struct Batch {
    conn: Arc<Conn>,
    state: Mutex<BatchState>,
}

#[derive(Debug)]
struct BatchState {
    out: Vec<u8>,
    responses: usize,
    remaining: usize,
}

impl Batch {
    /// `elements` replies are expected, plus one [`Batch::complete`] from the
    /// reader once it has dispatched them all, so that replies answered
    /// during dispatch cannot finish the batch early.
    pub(crate) fn new(conn: Arc<Conn>, elements: usize) -> Arc<Self> {
        conn.begin();
        Arc::new(Batch {
            conn,
            state: Mutex::new(BatchState {
                out: b"[".to_vec(),
                responses: 0,
                remaining: elements + 1,
            }),
        })
    }

    pub(crate) fn complete(&self, part: Option<Vec<u8>>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(part) = part {
            if st.out.len() + part.len() + 2 > MAX_RESPONSE_SIZE {
                tracing::error!(
                    "batch response exceeds {MAX_RESPONSE_SIZE} bytes; element dropped"
                );
            } else {
                if st.responses > 0 {
                    st.out.push(b',');
                }
                st.out.extend_from_slice(&part);
                st.responses += 1;
            }
        }
        st.remaining = st.remaining.saturating_sub(1);
        if st.remaining > 0 {
            return;
        }
        let send = (st.responses > 0).then(|| {
            let mut out = std::mem::take(&mut st.out);
            out.extend_from_slice(b"]\n");
            out
        });
        drop(st);
        self.conn.finish(send);
    }
}

#[derive(Debug)]
pub(crate) enum Sink {
    Single(Arc<Conn>),
    Batch(Arc<Batch>),
}

/// The right and duty to answer one request. `Send`: answer it from any
/// thread. Dropping it unanswered answers -32603 "Internal error", so a
/// client never waits forever.
#[derive(Debug)]
pub struct Reply {
    id: Option<Box<RawValue>>,
    sink: Option<Sink>,
}

impl Reply {
    pub(crate) fn new(id: Option<&RawValue>, sink: Sink) -> Self {
        if let Sink::Single(conn) = &sink {
            conn.begin();
        }
        Reply {
            id: id.map(ToOwned::to_owned),
            sink: Some(sink),
        }
    }

    /// Whether the request had no id (or a null one): a result will not be
    /// sent, an error will (with `"id": null`), as in SPDK.
    pub fn is_notification(&self) -> bool {
        self.id.as_ref().is_none_or(|id| id.get() == "null")
    }

    /// Answers with `{"result": result}`.
    pub fn ok(mut self, result: Value) {
        let bytes = if self.is_notification() {
            None
        } else {
            Some(match serde_json::to_string(&result) {
                Ok(r) if r.len() <= MAX_RESPONSE_SIZE => self.envelope("result", &r),
                Ok(r) => {
                    tracing::error!(len = r.len(), "result too large; sending internal error");
                    self.error_bytes(INTERNAL_ERROR, "Internal error")
                }
                Err(e) => {
                    tracing::error!(error = %e, "result not serializable");
                    self.error_bytes(INTERNAL_ERROR, "Internal error")
                }
            })
        };
        self.send(bytes);
    }

    /// Answers with `{"error": {"code": code, "message": message}}`.
    pub fn err(mut self, code: i32, message: impl Into<String>) {
        let bytes = self.error_bytes(code, &message.into());
        self.send(Some(bytes));
    }

    /// [`Reply::ok`] or [`Reply::err`], whichever `result` says.
    pub fn finish(self, result: Result<Value, RpcError>) {
        match result {
            Ok(v) => self.ok(v),
            Err(e) => self.err(e.code, e.message),
        }
    }

    fn error_bytes(&self, code: i32, message: &str) -> Vec<u8> {
        let mut message = message.to_owned();
        if message.len() > MAX_RESPONSE_SIZE / 2 {
            message.truncate(floor_char_boundary(&message, MAX_RESPONSE_SIZE / 2));
        }
        // A String always serializes.
        let message = serde_json::to_string(&message).unwrap_or_else(|_| "\"Error\"".into());
        self.envelope(
            "error",
            &format!("{{\"code\":{code},\"message\":{message}}}"),
        )
    }

    fn envelope(&self, key: &str, body: &str) -> Vec<u8> {
        let id = self.id.as_ref().map_or("null", |id| id.get());
        format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"{key}\":{body}}}").into_bytes()
    }

    fn send(&mut self, bytes: Option<Vec<u8>>) {
        match self.sink.take() {
            Some(Sink::Single(conn)) => conn.finish(bytes.map(|mut b| {
                b.push(b'\n');
                b
            })),
            Some(Sink::Batch(batch)) => batch.complete(bytes),
            None => {}
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.sink.is_some() {
            tracing::warn!("RPC reply dropped unanswered; sending internal error");
            let bytes = self.error_bytes(INTERNAL_ERROR, "Internal error");
            self.send(Some(bytes));
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
