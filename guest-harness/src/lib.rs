//! Real Linux guests under QEMU as test peers (NVMe/TCP initiator or target, virtio-blk on
//! vhost-user-blk).
//!
//! A guest is Debian's cloud kernel plus a busybox initramfs built here (kernel modules,
//! nvme-cli); it runs one shell script as root, prints its exit code and powers off. The host
//! side needs `guest-harness/provision.sh` to have run once (as root); [`available`] says what
//! is missing so tests can skip with one line.
//!
//! ```no_run
//! use std::time::Duration;
//! use guest_harness::Guest;
//!
//! if let Err(why) = guest_harness::available() {
//!     eprintln!("skipped my_test: {why}");
//!     return;
//! }
//! let out = Guest::builder()
//!     .script("echo KVER=$(uname -r)\nexit 3\n")
//!     .append("nvme_core.admin_timeout=10")
//!     .timeout(Duration::from_secs(120))
//!     .spawn()
//!     .unwrap()
//!     .wait()
//!     .unwrap();
//! assert_eq!(out.rc, 3);
//! assert!(out.value("KVER").is_some());
//! ```
//!
//! Networking is QEMU user networking: the guest is 10.0.2.15, the host's 127.0.0.1 is
//! 10.0.2.2, and [`GuestBuilder::hostfwd`] forwards a host port on 127.0.0.1 into the guest.

mod env;
mod guest;
mod initramfs;
mod nvme;
mod output;

use std::net::TcpListener;

pub use env::HostEnv;
pub use guest::{Guest, GuestBuilder};
pub use initramfs::{GUEST_HOSTID, HARNESS_SH, guest_hostnqn};
pub use nvme::{
    HOST_ADDR_FROM_GUEST, NVMET_GUEST_PORT, NvmetTarget, kernel_nvmet_target,
    nvme_initiator_script, shell_quote,
};
pub use output::{GuestError, GuestOutput, key_values};

/// `Ok` when guests can run here; otherwise one line saying what is missing (QEMU, kernel,
/// busybox, nvme-cli), suitable for `eprintln!("skipped {test}: {why}")`.
pub fn available() -> Result<(), String> {
    // Checked once per process: QEMU must also start (a private QEMU could lack a library).
    static RESULT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    RESULT
        .get_or_init(|| {
            let env = HostEnv::load().map_err(|e| format!("{e:#}"))?;
            let out = std::process::Command::new(&env.qemu)
                .arg("-version")
                .output()
                .map_err(|e| format!("cannot run {}: {e}", env.qemu.display()))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let first = err.lines().next().unwrap_or("").trim();
                return Err(format!("{} -version failed: {first}", env.qemu.display()));
            }
            Ok(())
        })
        .clone()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for `hostfwd` or a host listener).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
