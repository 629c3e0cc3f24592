//! The SPDK host: the `replication` bdev module, its RPCs, and the application around it.
//! A thin layer over [`crate::engine`]: bdev I/O, channels, pollers and RPCs mapped onto
//! the engine's plans and driver.

pub mod app;
mod dev;
mod exec;
mod io;
mod json;
mod node;
mod primary;
mod rpc;
mod secondary;
mod slow;

use spdk_sys as s;

/// The module SPDK knows us by. Filled in by [`register`] before the app starts.
// SAFETY: all-zero is a valid "empty" module; SPDK links it into its list.
pub static mut MODULE: s::spdk_bdev_module = unsafe { std::mem::zeroed() };

unsafe extern "C" fn module_init() -> i32 {
    0
}

unsafe extern "C" fn module_fini() {
    app::stop_rpc_poller();
}

/// Registers the bdev module and its RPCs. Call once, before `spdk_app_start`.
pub fn register() {
    // SAFETY: single-threaded start-up; SPDK keeps the pointer for the program's life.
    unsafe {
        let m = &raw mut MODULE;
        (*m).name = c"replication".as_ptr();
        (*m).module_init = Some(module_init);
        (*m).module_fini = Some(module_fini);
        (*m).get_ctx_size = Some(node::get_ctx_size);
        s::spdk_bdev_module_list_add(m);
    }
    rpc::register_all();
}
