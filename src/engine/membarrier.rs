//! A barrier on every thread of the process at once (Linux `membarrier(2)`, private
//! expedited), so that a rare writer can pay for both sides of a store-then-load handshake
//! and the frequent side needs only a compiler fence.
//!
//! The gate's hot path stores its in-flight count and then loads the hold flag; a hold
//! stores the flag and then sums the counts. Either side needs a full fence between its
//! store and its load, or both may miss each other. With a locked add that fence costs the
//! I/O path a drain of the store buffer, right after a leg's 4 KiB copy (a few percent of
//! a reactor at QD32). Here the holder's `membarrier` makes every thread of the process
//! execute a full barrier before it returns: a thread's count store either lands before
//! that barrier, and the holder's sum sees it, or its later flag load sees the hold.

use std::sync::OnceLock;

#[cfg(target_os = "linux")]
mod sys {
    const QUERY: libc::c_long = 0;
    const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier takes no pointers; unknown commands fail with EINVAL.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    }

    pub fn register() -> bool {
        let q = call(QUERY);
        q >= 0
            && q & PRIVATE_EXPEDITED != 0
            && call(REGISTER_PRIVATE_EXPEDITED) == 0
            && call(PRIVATE_EXPEDITED) == 0
    }

    pub fn barrier() -> bool {
        call(PRIVATE_EXPEDITED) == 0
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn register() -> bool {
        false
    }
    pub fn barrier() -> bool {
        false
    }
}

/// Whether [`heavy`] works in this process: registered on first call, then cached. False
/// on kernels without it (before 4.14), under seccomp filters, or off Linux; callers then
/// keep full fences on both sides.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(sys::register)
}

/// Every thread of the process has executed a full memory barrier when this returns.
/// Only after [`available`] said true: registered, the call has no documented failure.
pub fn heavy() {
    if !sys::barrier() {
        tracing::error!(
            "membarrier failed after a successful registration: the I/O gate's drain may race"
        );
    }
}
