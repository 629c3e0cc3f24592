//! The native node's JSON-RPC socket: the workspace's `jsonrpc` server (SPDK's wire format:
//! streamed values, batches, id echo, SPDK's limits and error shapes) dispatching every
//! request to the app reactor. The connection thread never waits: the reply travels with the
//! request and is answered from the reactor when the method finishes.

use super::app::NativeNode;
use std::path::Path;
use std::sync::Arc;

pub use jsonrpc::Server as RpcServer;

pub fn serve(node: Arc<NativeNode>, path: &Path) -> Result<RpcServer, jsonrpc::Error> {
    jsonrpc::Server::bind(path, move |method: &str, params, reply: jsonrpc::Reply| {
        node.call_with_reply(method.to_owned(), params, move |r| {
            reply.finish(r.map_err(|e| jsonrpc::RpcError::new(e.code, e.message)))
        })
    })
}
