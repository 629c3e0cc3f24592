//! A JSON-RPC 2.0 server speaking SPDK's wire format over a Unix socket.
//!
//! It behaves like SPDK's `lib/jsonrpc` server, so SPDK's `spdk-rpc`, the
//! project's `replctl` and raw-socket scripts work against the native host
//! unchanged:
//!
//! * The input is a *stream of JSON values*, not lines: a request may arrive
//!   split over many reads, several may arrive in one read, with or without
//!   whitespace between them.
//! * A top-level object is one request; an array is a JSON-RPC 2.0 batch
//!   (answered by one array, in completion order; no answer if every element
//!   was a notification; `[]` is an invalid request). Any other top-level
//!   value is answered with -32600 and the connection stays open.
//! * `id` (number, string or null) is echoed byte for byte. A request
//!   without `id`, or with `"id": null`, is a notification: a *result* is
//!   not sent, but an *error* is, with `"id": null` — SPDK does this (its
//!   `spdk_jsonrpc_send_error_response` always sends), and so do we.
//! * Request members are checked like SPDK's decoder: unknown or duplicate
//!   members, `jsonrpc` other than `"2.0"`, a missing or non-string `method`
//!   or an `id` that is not a string/number/null give -32600 with
//!   `"id": null`; `params` that are not an object, array or null give
//!   -32600 with the id echoed. `"params": null` is the same as no params.
//! * Each response is one compact JSON object followed by `"\n"` (a batch's
//!   array likewise), with members in SPDK's order: `jsonrpc`, `id`, then
//!   `result` or `error` (`{"code": N, "message": "..."}`).
//! * Invalid JSON gets a -32700 "Parse error" response (id null) and the
//!   connection is closed: a stream has no resync point after garbage.
//!   (SPDK builds the same response but, closing in the same poll, in
//!   practice drops it; sending it tells the client why.)
//! * Limits are SPDK's: a value may not exceed [`MAX_REQUEST_SIZE`] bytes
//!   (SPDK's receive buffer; a longer one closes the connection without a
//!   response, as SPDK's full buffer does), [`MAX_VALUES`] JSON values or
//!   [`MAX_DEPTH`] levels of nesting (both -32700 then close), and at most
//!   [`MAX_CONNECTIONS`] connections are served at once (more wait in the
//!   listen backlog).
//!
//! # Ordering
//! Per connection, requests are handed to [`Dispatch::call`] one at a time
//! in arrival order, on that connection's thread, without waiting for the
//! previous reply (as SPDK calls its handlers straight from its receive
//! loop). Responses are written in the order their [`Reply`] is answered, so
//! a client that pipelines requests gets them in completion order and must
//! match by `id`; a dispatcher that answers synchronously answers in order.
//! At most [`MAX_OUTSTANDING`] unanswered requests are kept per connection;
//! beyond that the server stops reading from it until one is answered.
//! When the client closes its writing side, outstanding requests are still
//! answered before the server closes the connection (as in SPDK).

mod framer;
mod reply;
mod request;
mod server;

pub use reply::{Reply, RpcError};
pub use server::{Error, Server};

/// Invalid JSON was received (the connection is then closed).
pub const PARSE_ERROR: i32 = -32700;
/// The JSON is not a valid request object.
pub const INVALID_REQUEST: i32 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// The method exists but its params are wrong.
pub const INVALID_PARAMS: i32 = -32602;
/// The server failed; also sent when a [`Reply`] is dropped unanswered.
pub const INTERNAL_ERROR: i32 = -32603;
/// SPDK's code for a method called in the wrong state (startup vs runtime).
pub const INVALID_STATE: i32 = -1;

/// SPDK's `SPDK_JSONRPC_RECV_BUF_SIZE`: the largest request accepted.
pub const MAX_REQUEST_SIZE: usize = 256 * 1024;
/// SPDK's `SPDK_JSONRPC_MAX_VALUES`: scalars, member names, and two per
/// object or array.
pub const MAX_VALUES: usize = 8192;
/// SPDK's `SPDK_JSON_MAX_NESTING_DEPTH`.
pub const MAX_DEPTH: usize = 64;
/// SPDK's `SPDK_JSONRPC_SEND_BUF_SIZE_MAX`: a larger response is replaced
/// by an internal error.
pub const MAX_RESPONSE_SIZE: usize = 32 * 1024 * 1024;
/// SPDK's `SPDK_JSONRPC_MAX_CONNS`.
pub const MAX_CONNECTIONS: usize = 64;
/// Unanswered requests (a batch counts once) per connection before the
/// server stops reading from it; SPDK has no bound, this keeps memory bounded.
pub const MAX_OUTSTANDING: usize = 1024;

/// What the host implements: the methods behind the socket.
///
/// `call` runs on the connection's thread, so it should not block for long:
/// slow work should move `reply` to another thread and answer from there.
/// `method` is the request's method; `params` is `None` when absent or
/// `null`, else an object or array. Answer `reply` exactly once; answering
/// is how the response gets sent, and dropping it unanswered sends -32603.
/// A panic in `call` is caught and answered with -32603 too.
pub trait Dispatch: Send + Sync + 'static {
    fn call(&self, method: &str, params: Option<serde_json::Value>, reply: Reply);
}

impl<F> Dispatch for F
where
    F: Fn(&str, Option<serde_json::Value>, Reply) + Send + Sync + 'static,
{
    fn call(&self, method: &str, params: Option<serde_json::Value>, reply: Reply) {
        self(method, params, reply)
    }
}
