//! JSON between SPDK's writer/parser and serde.

use super::node::{Node, Role};
use serde_json::{Value, json};
use spdk_sys as s;
use std::ffi::{CStr, c_void};

pub unsafe fn write_value(w: *mut s::spdk_json_write_ctx, v: &Value) -> i32 {
    let text = serde_json::to_vec(v).expect("serialisable");
    // SAFETY: valid writer; SPDK copies the bytes.
    unsafe { s::spdk_json_write_val_raw(w, text.as_ptr().cast(), text.len()) }
}

pub unsafe fn write_named(w: *mut s::spdk_json_write_ctx, name: &CStr, v: &Value) -> i32 {
    // SAFETY: valid writer inside an object.
    unsafe {
        s::spdk_json_write_name(w, name.as_ptr());
        write_value(w, v)
    }
}

unsafe extern "C" fn collect(ctx: *mut c_void, data: *const c_void, len: usize) -> i32 {
    // SAFETY: `ctx` is the Vec passed to spdk_json_write_begin; `data` has `len` bytes.
    unsafe {
        let out = &mut *(ctx as *mut Vec<u8>);
        out.extend_from_slice(std::slice::from_raw_parts(data as *const u8, len));
    }
    0
}

/// An RPC's params (already parsed by SPDK) as a serde value; absent params are `{}`.
pub unsafe fn params(p: *const s::spdk_json_val) -> Result<Value, String> {
    if p.is_null() {
        return Ok(json!({}));
    }
    let mut out: Vec<u8> = Vec::new();
    // SAFETY: the writer only calls `collect` with `out` while it is alive.
    unsafe {
        let w = s::spdk_json_write_begin(Some(collect), (&mut out as *mut Vec<u8>).cast(), 0);
        s::spdk_json_write_val(w, p);
        s::spdk_json_write_end(w);
    }
    serde_json::from_slice(&out).map_err(|e| format!("params: {e}"))
}

fn error_of(r: Result<(), crate::engine::ReplicationError>) -> Value {
    match r {
        Ok(()) => Value::Null,
        Err(e) => Value::from(e.to_string()),
    }
}

pub fn get_error(node: &Node) -> Value {
    let (stage, err) = match &node.role {
        Role::Primary(p) => (p.stage(), p.get_error()),
        Role::Secondary(sec) => (sec.stage(), sec.get_error()),
    };
    json!({"name": node.name(), "stage": stage, "error": error_of(err)})
}

/// `bdev_replication_get_status` entry, also `driver_specific.replication`.
pub fn status(node: &Node) -> Value {
    let p = &node.params;
    match &node.role {
        Role::Secondary(sec) => {
            let (active_blocks, hidden_clusters) = sec.allocated();
            json!({
                "name": p.name,
                "mode": "secondary",
                "stage": sec.stage(),
                "error": error_of(sec.get_error()),
                "cow_granularity": sec.geometry().cow_granularity(),
                "ingress_name": p.ingress_name,
                "base_bdev": p.base_bdev,
                "hidden_bdev": p.hidden_bdev,
                "active_bdev": p.active_bdev,
                "counters": sec.counters(),
                "allocated": {"active_blocks": active_blocks, "hidden_clusters": hidden_clusters},
                "merge": sec.merge_progress(),
            })
        }
        Role::Primary(pr) => json!({
            "name": p.name,
            "mode": "primary",
            "stage": pr.stage(),
            "error": error_of(pr.get_error()),
            "cow_granularity": null,
            "ingress_name": null,
            "local_bdev": p.local_bdev,
            "remote_bdev": p.remote_bdev,
            "remote_timeout_ms": p.remote_timeout_ms,
            "link_broken": pr.link_broken(),
            "counters": pr.counters(),
            "merge": {"total_bytes": 0, "done_bytes": 0},
        }),
    }
}
