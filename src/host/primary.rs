//! The primary's data path: every write to the local leg and, forwarded, to the remote
//! leg; a remote leg overdue by `remote_timeout_ms` completes the guest request from the
//! local leg alone, while the remote request lives on (with its own copy of the payload)
//! until it really ends.

use super::dev::SpdkBuf;
use super::io::{
    Channel, Child, ENOMEM, Mark, Req, child_of, complete, ctx_of, issue, our_bdev, queue_retry,
    req,
};
use super::node::Node;
use super::slow::{block_size, copy_iovs, slow};
use crate::engine::{BlockDevice, PrimaryWritePlan};
use spdk_sys as s;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr::null_mut;
use std::rc::Rc;

/// Per-channel state of the primary's remote leg: requests in flight, oldest first (an
/// intrusive list), and a free list so steady-state forwarding allocates nothing.
pub struct RemoteShared {
    /// Kept alive by in-flight remote requests, which may outlive the channel and the bdev.
    node: std::sync::Arc<Node>,
    remote_ch: Cell<*mut s::spdk_io_channel>,
    head: Cell<*mut RemoteReq>,
    tail: Cell<*mut RemoteReq>,
    /// Boxed: SPDK holds raw pointers to in-flight requests.
    #[allow(clippy::vec_box)]
    free: RefCell<Vec<Box<RemoteReq>>>,
    timeout_ticks: u64,
    /// The channel was given up while remote requests were still in flight: the last of
    /// them puts the remote leg's channel (a bdev channel must outlive its I/O).
    release_when_idle: Cell<bool>,
}

/// One forwarded request. It lives until the remote really completes, even when the
/// guest request was completed from the local leg after a timeout.
pub struct RemoteReq {
    shared: Option<Rc<RemoteShared>>,
    guest: *mut s::spdk_bdev_io,
    prev: *mut RemoteReq,
    next: *mut RemoteReq,
    submitted_at: u64,
    link_gen: u64,
    op: Child,
    lba: u64,
    blocks: u64,
    /// What the remote leg is given: empty, or one iovec over `bounce`.
    iovs: [s::iovec; 1],
    iovcnt: i32,
    /// A write's payload, copied: after a timeout the guest request completes while the
    /// remote request may still read its buffer, and the guest's memory may be gone by
    /// then (a vhost session torn down, an NVMe-oF request buffer reused). Spec 4.
    bounce: *mut u8,
    bounce_cap: usize,
    wait: s::spdk_bdev_io_wait_entry,
    timed_out: bool,
}

/// Bounce buffers up to this size stay with their request on the free list; larger ones
/// are freed when the remote request ends, so a burst of big writes does not pin memory.
const BOUNCE_KEEP: usize = 128 << 10;

impl RemoteReq {
    /// Makes `bounce` hold at least `len` bytes; false when DMA memory is exhausted.
    fn reserve_bounce(&mut self, len: usize) -> bool {
        if self.bounce_cap >= len {
            return true;
        }
        self.free_bounce();
        // SAFETY: plain allocation; a null result is checked.
        let p = unsafe { s::spdk_dma_malloc(len.max(1), 4096, null_mut()) } as *mut u8;
        if p.is_null() {
            return false;
        }
        self.bounce = p;
        self.bounce_cap = len;
        true
    }

    fn free_bounce(&mut self) {
        if !self.bounce.is_null() {
            // SAFETY: from spdk_dma_malloc, freed once.
            unsafe { s::spdk_dma_free(self.bounce.cast()) };
            self.bounce = null_mut();
            self.bounce_cap = 0;
        }
    }
}

impl Drop for RemoteReq {
    fn drop(&mut self) {
        self.free_bounce();
    }
}

impl RemoteShared {
    pub(super) fn new(
        node: std::sync::Arc<Node>,
        remote_ch: *mut s::spdk_io_channel,
        timeout_ticks: u64,
    ) -> Self {
        RemoteShared {
            node,
            remote_ch: Cell::new(remote_ch),
            head: Cell::new(null_mut()),
            tail: Cell::new(null_mut()),
            free: RefCell::new(Vec::new()),
            timeout_ticks,
            release_when_idle: Cell::new(false),
        }
    }

    /// Stops forwarding on this channel. Returns true when requests are still in flight:
    /// the remote channel is then put by the last of them, not by the caller.
    pub(super) fn release_remote_when_idle(&self) -> bool {
        if self.head.get().is_null() {
            self.remote_ch.set(null_mut());
            false
        } else {
            self.release_when_idle.set(true);
            true
        }
    }

    fn push(&self, rr: *mut RemoteReq) {
        unsafe {
            (*rr).prev = self.tail.get();
            (*rr).next = null_mut();
            match self.tail.get() {
                t if t.is_null() => self.head.set(rr),
                t => (*t).next = rr,
            }
            self.tail.set(rr);
        }
    }
    fn unlink(&self, rr: *mut RemoteReq) {
        unsafe {
            let (p, n) = ((*rr).prev, (*rr).next);
            if p.is_null() {
                self.head.set(n)
            } else {
                (*p).next = n
            }
            if n.is_null() {
                self.tail.set(p)
            } else {
                (*n).prev = p
            }
        }
    }
}

unsafe fn leg_done(bdev_io: *mut s::spdk_bdev_io) {
    unsafe {
        let ctx = ctx_of(bdev_io);
        ctx.pending -= 1;
        if ctx.pending == 0 {
            if ctx.mark != Mark::None
                && let Some(p) = (&*our_bdev(bdev_io).node).primary()
            {
                let r = req(bdev_io);
                match ctx.mark {
                    Mark::LocalOnly | Mark::RemoteFailed => p.local_only_done(r.lba, r.blocks),
                    Mark::Forwarded => p.forwarded_done(ctx.link_gen, r.lba, r.blocks),
                    Mark::None => {}
                }
            }
            complete(bdev_io, !ctx.failed);
        }
    }
}

unsafe extern "C" fn local_done(child: *mut s::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    unsafe {
        s::spdk_bdev_free_io(child);
        let bdev_io: *mut s::spdk_bdev_io = arg.cast();
        if !ok {
            ctx_of(bdev_io).failed = true;
        }
        leg_done(bdev_io);
    }
}

/// A primary request: reads from the local leg, writes to both (the remote leg bounced).
pub(super) unsafe fn submit(node: &Node, chan: &Channel, bdev_io: *mut s::spdk_bdev_io) {
    unsafe {
        let Some(p) = node.primary() else {
            complete(bdev_io, false);
            return;
        };
        let legs = node.current_legs();
        let r = req(bdev_io);
        let Some(op) = child_of(r.ty) else {
            complete(bdev_io, false);
            return;
        };
        let plan = match op {
            Child::Read | Child::Reset => PrimaryWritePlan::LocalOnly,
            _ => p.plan_write(),
        };
        let modifies = matches!(op, Child::Write | Child::WriteZeroes | Child::Unmap);
        // A sync or verify runs: writes take the region locks in the engine's driver.
        let plan = match plan {
            PrimaryWritePlan::Locked { .. } if modifies => {
                slow(bdev_io);
                return;
            }
            PrimaryWritePlan::Locked { link_gen } => PrimaryWritePlan::Both { link_gen },
            p => p,
        };
        // None on a channel a reprotect has not switched to the primary's shape yet.
        let shared = chan.remote.as_ref();
        // A flush skips legs without flush support (spec 4).
        let skip = |leg: usize| matches!(op, Child::Flush) && !legs[leg].supports_flush();
        let link = match plan {
            PrimaryWritePlan::Both { link_gen } | PrimaryWritePlan::Locked { link_gen } => {
                Some(link_gen)
            }
            PrimaryWritePlan::LocalOnly => None,
        };
        let forward = match link {
            Some(_) if skip(1) => None,
            // Local only for now: the region turns dirty, the reprotect's sync copies it.
            Some(_) if shared.is_none() => None,
            Some(link_gen) if shared.is_some_and(|s| !s.remote_ch.get().is_null()) => {
                Some(link_gen)
            }
            Some(_) => {
                p.break_link();
                None
            }
            None => None,
        };
        let ctx = ctx_of(bdev_io);
        ctx.failed = false;
        ctx.mark = match (modifies, forward) {
            (false, _) => Mark::None,
            (true, None) => Mark::LocalOnly,
            (true, Some(g)) => {
                ctx.link_gen = g;
                Mark::Forwarded
            }
        };
        let local = !skip(0);
        if matches!(op, Child::Flush) {
            p.count_flush(local, forward.is_some());
        }
        ctx.pending = u32::from(local) + u32::from(forward.is_some());
        if ctx.pending == 0 {
            complete(bdev_io, true);
            return;
        }
        let rc = if !local {
            0
        } else {
            issue(
                legs[0].desc(),
                chan.legs[0],
                op,
                &r,
                Some(local_done),
                bdev_io.cast(),
            )
        };
        if rc != 0 {
            if rc == -ENOMEM {
                queue_retry(bdev_io, legs[0].0.bdev, chan.legs[0]);
            } else {
                complete(bdev_io, false);
            }
            return;
        }
        let (Some(link_gen), Some(shared)) = (forward, shared) else {
            return;
        };
        p.count_forwarded();
        let mut rr = shared.free.borrow_mut().pop().unwrap_or_else(|| {
            Box::new(RemoteReq {
                shared: None,
                guest: null_mut(),
                prev: null_mut(),
                next: null_mut(),
                submitted_at: 0,
                link_gen: 0,
                op: Child::Flush,
                lba: 0,
                blocks: 0,
                iovs: [s::iovec {
                    iov_base: null_mut(),
                    iov_len: 0,
                }],
                iovcnt: 0,
                bounce: null_mut(),
                bounce_cap: 0,
                wait: s::spdk_bdev_io_wait_entry::default(),
                timed_out: false,
            })
        });
        rr.shared = Some(shared.clone());
        rr.guest = bdev_io;
        rr.submitted_at = s::spdk_get_ticks();
        rr.link_gen = link_gen;
        rr.op = op;
        rr.lba = r.lba;
        rr.blocks = r.blocks;
        rr.timed_out = false;
        rr.iovcnt = 0;
        let mut bounced = true;
        if matches!(op, Child::Write) {
            let len = (r.blocks * block_size(node)) as usize;
            bounced = rr.reserve_bounce(len);
            if bounced {
                copy_iovs(&r, 0, &SpdkBuf::borrowed(rr.bounce, len), false);
                rr.iovs[0] = s::iovec {
                    iov_base: rr.bounce.cast(),
                    iov_len: len,
                };
                rr.iovcnt = 1;
            }
        }
        let rr = Box::into_raw(rr);
        shared.push(rr);
        if bounced {
            submit_remote(rr);
        } else {
            // No memory for the copy: a failed remote write (the region turns dirty, the
            // link breaks); the guest's write still completes from the local leg.
            remote_finish(rr, false);
        }
    }
}

unsafe extern "C" fn remote_retry(arg: *mut c_void) {
    unsafe { submit_remote(arg.cast()) };
}

unsafe fn submit_remote(rr: *mut RemoteReq) {
    unsafe {
        let shared = (*rr).shared.clone().expect("in flight");
        let node = &*shared.node;
        let r = Req {
            ty: 0,
            lba: (*rr).lba,
            blocks: (*rr).blocks,
            iovs: (*rr).iovs.as_mut_ptr(),
            iovcnt: (*rr).iovcnt,
        };
        let rc = issue(
            node.current_legs()[1].desc(),
            shared.remote_ch.get(),
            (*rr).op,
            &r,
            Some(remote_done),
            rr.cast(),
        );
        if rc == -ENOMEM {
            let w = &mut (*rr).wait;
            w.bdev = node.current_legs()[1].0.bdev;
            w.cb_fn = Some(remote_retry);
            w.cb_arg = rr.cast();
            if s::spdk_bdev_queue_io_wait(w.bdev, shared.remote_ch.get(), w) == 0 {
                return;
            }
        }
        if rc != 0 {
            remote_finish(rr, false);
        }
    }
}

unsafe extern "C" fn remote_done(child: *mut s::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    unsafe {
        s::spdk_bdev_free_io(child);
        remote_finish(arg.cast(), ok);
    }
}

unsafe fn remote_finish(rr: *mut RemoteReq, ok: bool) {
    unsafe {
        let shared = (*rr).shared.take().expect("in flight");
        let node = &*shared.node;
        let Some(p) = node.primary() else {
            unreachable!("a primary's channel state belongs to a primary")
        };
        let modifies = matches!((*rr).op, Child::Write | Child::WriteZeroes | Child::Unmap);
        if !ok && !(*rr).timed_out {
            if modifies {
                p.record_remote_write_failure((*rr).link_gen, false, (*rr).lba, (*rr).blocks);
                if !(*rr).guest.is_null() {
                    ctx_of((*rr).guest).mark = Mark::RemoteFailed;
                }
            } else {
                p.record_remote_failure((*rr).link_gen, false);
            }
        }
        if (*rr).timed_out {
            p.detached_done();
        }
        shared.unlink(rr);
        if shared.release_when_idle.get() && shared.head.get().is_null() {
            let ch = shared.remote_ch.replace(null_mut());
            if !ch.is_null() {
                s::spdk_put_io_channel(ch);
            }
        }
        let guest = std::mem::replace(&mut (*rr).guest, null_mut());
        let mut rr = Box::from_raw(rr);
        if rr.bounce_cap > BOUNCE_KEEP {
            rr.free_bounce();
        }
        shared.free.borrow_mut().push(rr);
        if !guest.is_null() {
            leg_done(guest);
        }
    }
}

/// Completes, from the local leg, guest requests whose remote leg is overdue, and breaks
/// the link. The remote request itself stays until it really ends.
pub(super) unsafe extern "C" fn remote_timeout_poll(arg: *mut c_void) -> i32 {
    unsafe {
        let shared = &*(arg as *const RemoteShared);
        let node = &*shared.node;
        let Some(p) = node.primary() else {
            unreachable!("a primary's channel state belongs to a primary")
        };
        let now = s::spdk_get_ticks();
        let mut rr = shared.head.get();
        let mut busy = 0;
        while !rr.is_null() && now.saturating_sub((*rr).submitted_at) > shared.timeout_ticks {
            if !(*rr).timed_out {
                (*rr).timed_out = true;
                p.detach();
                let guest = std::mem::replace(&mut (*rr).guest, null_mut());
                if matches!((*rr).op, Child::Write | Child::WriteZeroes | Child::Unmap) {
                    p.record_remote_write_failure((*rr).link_gen, true, (*rr).lba, (*rr).blocks);
                    if !guest.is_null() {
                        ctx_of(guest).mark = Mark::RemoteFailed;
                    }
                } else {
                    p.record_remote_failure((*rr).link_gen, true);
                }
                if !guest.is_null() {
                    leg_done(guest);
                }
                busy = 1;
            }
            rr = (*rr).next;
        }
        busy
    }
}

/// A primary channel's remote-leg state and its timeout poller (`remote_ch`: this thread's
/// channel of the remote leg).
pub(super) fn remote_state(
    io_device: *mut c_void,
    p: &crate::engine::Primary<super::dev::SpdkDev>,
    remote_ch: *mut s::spdk_io_channel,
) -> (Option<Rc<RemoteShared>>, *mut s::spdk_poller) {
    // remote_timeout_ms is bounded (an hour); u128 keeps the product exact anyway.
    let timeout_us = p.config().remote_timeout.as_micros();
    // SAFETY: FFI.
    let hz = u128::from(unsafe { s::spdk_get_ticks_hz() });
    // SAFETY: the io_device is the node's `Arc` allocation (see `Node::io_device`).
    let node_arc = unsafe {
        std::sync::Arc::increment_strong_count(io_device as *const Node);
        std::sync::Arc::from_raw(io_device as *const Node)
    };
    let shared = Rc::new(RemoteShared::new(
        node_arc,
        remote_ch,
        u64::try_from(timeout_us * hz / 1_000_000).unwrap_or(u64::MAX),
    ));
    let period = u64::try_from(timeout_us / 4)
        .unwrap_or(u64::MAX)
        .clamp(1_000, 100_000);
    // SAFETY: the channel keeps the shared state alive until it unregisters this.
    let poller = unsafe {
        s::spdk_poller_register(
            Some(remote_timeout_poll),
            Rc::as_ptr(&shared) as *mut c_void,
            period,
        )
    };
    (Some(shared), poller)
}
