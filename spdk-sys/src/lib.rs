//! Raw bindings to SPDK (bdev, bdev module, thread, env, event, JSON, JSON-RPC), generated
//! by bindgen at build time, plus a few out-of-line wrappers (`spdk_sys_*`) for SPDK's
//! static inline functions. Empty when the build found no SPDK (see build.rs).

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(unnecessary_transmutes, unsafe_op_in_unsafe_fn)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// Whether this build found and linked SPDK.
pub const SPDK_FOUND: bool = cfg!(spdk);
