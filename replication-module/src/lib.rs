//! The `replication` bdev module as a shared object for stock SPDK applications.
//!
//! Preload it (`LD_PRELOAD=libreplication_module.so spdk_tgt ...`, or `bdevperf`): an ELF
//! constructor registers the bdev module and its `bdev_replication_*` RPCs before the
//! application's `main` runs, i.e. before `spdk_app_start` initializes the bdev layer and
//! loads a JSON config. Built without SPDK, the library is empty.

#[cfg(spdk)]
mod init {
    extern "C" fn register() {
        // A panic must not unwind into the dynamic loader.
        if std::panic::catch_unwind(spdk_replication::host::register).is_err() {
            eprintln!("replication-module: registering the replication bdev module failed");
            std::process::abort();
        }
    }

    /// Run by the dynamic loader when the library is loaded.
    #[used]
    #[unsafe(link_section = ".init_array")]
    static INIT: extern "C" fn() = register;
}
