//! JSON between SPDK's writer/parser and serde.

use serde_json::{Value, json};
use spdk_sys as s;
use std::ffi::{CStr, c_void};

pub unsafe fn write_value(w: *mut s::spdk_json_write_ctx, v: &Value) -> i32 {
    // A `Value` always serialises.
    let text = serde_json::to_vec(v).unwrap_or_default();
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
