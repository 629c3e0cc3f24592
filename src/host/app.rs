//! `replication_tgt`: an SPDK application (bdev, NVMe-oF target, vhost-blk and the usual
//! subsystems, as linked in) with the replication module. SPDK parses its standard options
//! (`-m`, `-r`, `-s`, `--no-huge`, `--no-pci`, `--json`, `-L`, ...).

use spdk_sys as s;
use std::ffi::{CString, c_char, c_void};

unsafe extern "C" fn started(_ctx: *mut c_void) {
    tracing::info!("replication_tgt started");
}

/// Runs the application; returns the process exit code.
pub fn run(args: impl IntoIterator<Item = String>) -> i32 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let args: Vec<CString> = args
        .into_iter()
        .map(|a| CString::new(a).expect("arguments have no NUL"))
        .collect();
    let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    argv.push(std::ptr::null_mut());
    // SAFETY: FFI with a correctly sized opts struct and a NULL-terminated argv that
    // outlives the app (SPDK keeps pointers into it).
    unsafe {
        let mut opts: s::spdk_app_opts = std::mem::zeroed();
        s::spdk_app_opts_init(&mut opts, std::mem::size_of::<s::spdk_app_opts>());
        opts.name = c"replication_tgt".as_ptr();
        let rc = s::spdk_app_parse_args(
            args.len() as i32,
            argv.as_mut_ptr(),
            &mut opts,
            std::ptr::null(),
            std::ptr::null(),
            None,
            None,
        );
        if rc == s::SPDK_APP_PARSE_ARGS_HELP {
            return 0;
        }
        if rc != s::SPDK_APP_PARSE_ARGS_SUCCESS {
            return 1;
        }
        super::register();
        let rc = s::spdk_app_start(&mut opts, Some(started), std::ptr::null_mut());
        s::spdk_app_fini();
        rc
    }
}
