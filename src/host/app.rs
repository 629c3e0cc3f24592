//! `replication_tgt`: an SPDK application (bdev, NVMe-oF target, vhost-blk and the usual
//! subsystems, as linked in) with the replication module. SPDK parses its standard options
//! (`-m`, `-r`, `-s`, `--no-huge`, `--no-pci`, `--json`, `-L`, ...) and ours,
//! `--rpc-poll-us`.
//!
//! The JSON-RPC socket: SPDK's server is polled every 4 ms (`RPC_SELECT_INTERVAL` in SPDK's
//! `lib/init/rpc.c`), and a reply sent after the handler returns (a checkpoint's, after the
//! drain) waits for the next poll, so such a call takes 4–8 ms. A COLO checkpoint runs while
//! both VMs are paused: that wait is downtime on every checkpoint. So `replication_tgt`
//! serves the `-r` socket itself, with SPDK's own RPC library (same methods, state and
//! allowlist), polled every `--rpc-poll-us` (default [`DEFAULT_RPC_POLL_US`]). It listens
//! once the configuration is loaded; `--rpc-poll-us 0` and `--wait-for-rpc` (which needs
//! SPDK's server before initialisation) keep SPDK's server.

use spdk_sys as s;
use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Poll period of the RPC socket: ~1 µs of syscalls per poll when idle (under 1 % of the
/// app thread's core), a call waits 0.1 ms on average for its request to be read and as
/// much for its reply to go out.
pub const DEFAULT_RPC_POLL_US: u64 = 100;

/// Upper bound of `--rpc-poll-us` (one second; SPDK's own period is 4 ms).
const MAX_RPC_POLL_US: u64 = 1_000_000;

/// `getopt_long`'s value for `--rpc-poll-us`, above SPDK's own long options (< 300).
const RPC_POLL_OPT: c_int = 0x1_0000;

static RPC_POLL_US: AtomicU64 = AtomicU64::new(DEFAULT_RPC_POLL_US);

/// The RPC server this application runs in place of SPDK's; touched on the app thread only,
/// and after `spdk_app_start` returns.
struct RpcServer {
    addr: CString,
    period_us: u64,
    server: *mut s::spdk_rpc_server,
    poller: *mut s::spdk_poller,
}

static RPC: AtomicPtr<RpcServer> = AtomicPtr::new(null_mut());

unsafe extern "C" fn rpc_poll(arg: *mut c_void) -> i32 {
    // SAFETY: the server outlives its poller (closed only after the reactors stop).
    unsafe { s::spdk_rpc_server_accept(arg.cast()) };
    // Idle: a poll that found nothing is the common case, and the scheduler should not
    // count this poller as load.
    0
}

unsafe extern "C" fn started(_ctx: *mut c_void) {
    let r = RPC.load(Ordering::Acquire);
    if !r.is_null() {
        // SAFETY: set before spdk_app_start, used on the app thread only.
        let r = unsafe { &mut *r };
        // SAFETY: FFI; a NULL result is checked (SPDK has logged why).
        r.server = unsafe { s::spdk_rpc_server_listen(r.addr.as_ptr()) };
        if r.server.is_null() {
            tracing::error!(socket = ?r.addr, "replication_tgt: cannot serve JSON-RPC");
            // SAFETY: FFI on the app thread.
            unsafe { s::spdk_app_stop(-1) };
            return;
        }
        // SAFETY: FFI; the poller is unregistered by `stop_rpc_poller`.
        r.poller = unsafe { s::spdk_poller_register(Some(rpc_poll), r.server.cast(), r.period_us) };
        tracing::info!(
            "replication_tgt: JSON-RPC on {} polled every {} us",
            r.addr.to_string_lossy(),
            r.period_us
        );
    }
    tracing::info!("replication_tgt started");
}

/// Stops polling the RPC socket; called from the module's fini on the app thread, late in
/// the shutdown (after the NVMe-oF and vhost subsystems, which sit on bdevs), so RPCs are
/// answered as long as SPDK's own server would answer them.
pub(super) fn stop_rpc_poller() {
    let r = RPC.load(Ordering::Acquire);
    if !r.is_null() {
        // SAFETY: app thread; see `RpcServer`.
        let r = unsafe { &mut *r };
        if !r.poller.is_null() {
            // A last poll sends replies already queued (e.g. `spdk_kill_instance`'s).
            // SAFETY: FFI; the server is open while its poller is.
            unsafe {
                s::spdk_rpc_server_accept(r.server);
                s::spdk_poller_unregister(&mut r.poller);
            }
        }
    }
}

unsafe extern "C" fn parse_opt(ch: c_int, arg: *mut c_char) -> c_int {
    if ch != RPC_POLL_OPT || arg.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: getopt's argument, a C string.
    let v = unsafe { std::ffi::CStr::from_ptr(arg) }.to_string_lossy();
    match v.trim().parse::<u64>() {
        Ok(us) if us <= MAX_RPC_POLL_US => {
            RPC_POLL_US.store(us, Ordering::Relaxed);
            0
        }
        _ => {
            eprintln!(
                "replication_tgt: --rpc-poll-us {v:?}: expected microseconds from 0 \
                 (SPDK's own RPC server) to {MAX_RPC_POLL_US}"
            );
            -libc::EINVAL
        }
    }
}

unsafe extern "C" fn usage() {
    println!(
        " --rpc-poll-us <us>        poll the RPC socket every <us> microseconds (default \
         {DEFAULT_RPC_POLL_US}; 0: SPDK's server, polled every 4 ms)"
    );
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
    let long_opts = [
        s::option {
            name: c"rpc-poll-us".as_ptr(),
            has_arg: 1,
            flag: null_mut(),
            val: RPC_POLL_OPT,
        },
        // SAFETY: getopt_long's terminator is all zeros.
        unsafe { std::mem::zeroed() },
    ];
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
            c"".as_ptr(),
            long_opts.as_ptr(),
            Some(parse_opt),
            Some(usage),
        );
        if rc == s::SPDK_APP_PARSE_ARGS_HELP {
            return 0;
        }
        if rc != s::SPDK_APP_PARSE_ARGS_SUCCESS {
            return 1;
        }
        let period_us = RPC_POLL_US.load(Ordering::Relaxed);
        if period_us > 0 && !opts.rpc_addr.is_null() && !opts.delay_subsystem_init {
            let addr = std::ffi::CStr::from_ptr(opts.rpc_addr).to_owned();
            opts.rpc_addr = std::ptr::null();
            RPC.store(
                Box::into_raw(Box::new(RpcServer {
                    addr,
                    period_us,
                    server: null_mut(),
                    poller: null_mut(),
                })),
                Ordering::Release,
            );
        }
        super::register();
        let rc = s::spdk_app_start(&mut opts, Some(started), std::ptr::null_mut());
        let r = RPC.swap(null_mut(), Ordering::AcqRel);
        if !r.is_null() {
            let r = Box::from_raw(r);
            // Nothing runs any more: no request can still reach the server's connections.
            if !r.server.is_null() {
                s::spdk_rpc_server_close(r.server);
            }
        }
        s::spdk_app_fini();
        rc
    }
}
