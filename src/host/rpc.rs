//! `bdev_replication_*` JSON-RPC methods (spec section 6): SPDK's parsed params become a
//! serde value and the shared control plane ([`crate::control`]) answers, on the thread
//! SPDK called us on.

use super::exec;
use super::json;
use super::node::SpdkHost;
use crate::control::{self, RpcError};
use serde_json::Value;
use spdk_sys as s;
use std::ffi::CString;

unsafe fn send_result(req: *mut s::spdk_jsonrpc_request, v: &Value) {
    // SAFETY: `req` is unanswered until here.
    unsafe {
        let w = s::spdk_jsonrpc_begin_result(req);
        json::write_value(w, v);
        s::spdk_jsonrpc_end_result(req, w);
    }
}

unsafe fn send_error(req: *mut s::spdk_jsonrpc_request, e: RpcError) {
    tracing::debug!(code = e.code, message = %e.message, "RPC error");
    let msg = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `req` is unanswered until here.
    unsafe { s::spdk_jsonrpc_send_error_response(req, e.code, msg.as_ptr()) };
}

struct Req(*mut s::spdk_jsonrpc_request);

/// Answers `method` through the control plane; the request is answered exactly once, when
/// the (possibly waiting, e.g. delete during a merge) call completes.
unsafe fn dispatch(
    req: *mut s::spdk_jsonrpc_request,
    params: *const s::spdk_json_val,
    method: &'static str,
) {
    let params = match unsafe { json::params(params) } {
        Ok(v) => v,
        Err(m) => return unsafe { send_error(req, RpcError::new(control::INVALID_PARAMS, m)) },
    };
    let req = Req(req);
    exec::spawn(async move {
        let req = req;
        match control::handle(&SpdkHost, method, Some(params)).await {
            Ok(v) => unsafe { send_result(req.0, &v) },
            Err(e) => unsafe { send_error(req.0, e) },
        }
    });
}

macro_rules! methods {
    ($($f:ident => $name:literal),* $(,)?) => {
        $(
            unsafe extern "C" fn $f(req: *mut s::spdk_jsonrpc_request, params: *const s::spdk_json_val) {
                unsafe { dispatch(req, params, $name) }
            }
        )*
        pub fn register_all() {
            $(
                // SAFETY: static names; handlers live for the program.
                unsafe {
                    s::spdk_rpc_register_method(
                        concat!($name, "\0").as_ptr().cast(),
                        Some($f),
                        s::SPDK_RPC_RUNTIME,
                    )
                };
            )*
            debug_assert_eq!(
                [$($name),*].len(),
                control::METHODS.len() + control::EXTRA_METHODS.len()
            );
        }
    };
}

methods! {
    rpc_create => "bdev_replication_create",
    rpc_delete => "bdev_replication_delete",
    rpc_start => "bdev_replication_start",
    rpc_checkpoint => "bdev_replication_checkpoint",
    rpc_stop => "bdev_replication_stop",
    rpc_get_error => "bdev_replication_get_error",
    rpc_get_status => "bdev_replication_get_status",
    rpc_resync => "bdev_replication_resync",
    rpc_verify => "bdev_replication_verify",
    rpc_reprotect => "bdev_replication_reprotect",
    rpc_get_dirty_map => "bdev_replication_get_dirty_map",
}
