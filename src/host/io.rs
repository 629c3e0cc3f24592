//! The data path: bdev_io → engine plans → child I/O on the claimed bdevs. This file holds
//! the module's fn table, the per-request context, the channels and the dispatch.
//!
//! The common cases are submitted straight from `submit_request` with C callbacks and no
//! allocation: a top read served by one overlay or the base, a top write to active, an
//! ingress write whose clusters are already copied ([`super::secondary`]), every primary
//! read and write ([`super::primary`]). The rest (COW, multi-source reads, merging writes,
//! failover-failed splits, flush) runs as an engine future on the reactor
//! ([`super::slow`]).

use super::json;
use super::node::{Kind, Node, OurBdev};
use super::primary::{self, RemoteShared};
use super::secondary;
use crate::control::RoleRef;
use crate::engine::IoError;
use spdk_sys as s;
use std::ffi::c_void;
use std::ptr::null_mut;
use std::rc::Rc;

pub(super) const ENOMEM: i32 = 12;

pub static FN_TABLE: s::spdk_bdev_fn_table = s::spdk_bdev_fn_table {
    destruct: Some(super::node::destruct),
    submit_request: Some(submit_request),
    io_type_supported: Some(io_type_supported),
    get_io_channel: Some(get_io_channel),
    dump_info_json: Some(dump_info_json),
    write_config_json: Some(write_config_json),
    get_spin_time: None,
    get_module_ctx: None,
    get_memory_domains: None,
    get_memory_domain_types: None,
    reset_device_stat: None,
    dump_device_stat_json: None,
    accel_sequence_supported: None,
};

/// Per-request context (SPDK's `driver_ctx`).
#[repr(C)]
pub struct IoCtx {
    wait: s::spdk_bdev_io_wait_entry,
    ch: *mut s::spdk_io_channel,
    pub(super) pending: u32,
    pub(super) failed: bool,
    /// A top read from the base: the segment to revalidate at completion.
    pub(super) seg_lba: u64,
    pub(super) seg_blocks: u64,
    /// Primary: what to tell the engine when the guest request completes.
    pub(super) mark: Mark,
    pub(super) link_gen: u64,
}

/// A primary request's dirty-map bookkeeping at completion.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    None,
    /// Not forwarded: its regions may differ on the remote.
    LocalOnly,
    /// Forwarded unlocked under `link_gen`.
    Forwarded,
    /// Forwarded, and the remote leg failed or timed out.
    RemoteFailed,
}

/// Per-thread channel of a node: the claimed bdevs' channels on this thread.
#[repr(C)]
pub struct Channel {
    node: *const Node,
    /// base, hidden, active (secondary) or local, remote (primary).
    pub(super) legs: [*mut s::spdk_io_channel; 3],
    pub(super) remote: Option<Rc<RemoteShared>>,
    poller: *mut s::spdk_poller,
}

pub(super) unsafe fn ctx_of(bdev_io: *mut s::spdk_bdev_io) -> &'static mut IoCtx {
    unsafe { &mut *((*bdev_io).driver_ctx.as_mut_ptr() as *mut IoCtx) }
}

pub(super) unsafe fn our_bdev(bdev_io: *mut s::spdk_bdev_io) -> &'static OurBdev {
    unsafe { &*((*(*bdev_io).bdev).ctxt as *const OurBdev) }
}

/// Completes with the engine's outcome: out of buffers is NOMEM, which SPDK's bdev layer
/// retries on its own.
pub(super) unsafe fn complete_with(bdev_io: *mut s::spdk_bdev_io, r: Result<(), IoError>) {
    let st = match r {
        Ok(()) => s::SPDK_BDEV_IO_STATUS_SUCCESS,
        Err(IoError::NoMem) => s::SPDK_BDEV_IO_STATUS_NOMEM,
        Err(_) => s::SPDK_BDEV_IO_STATUS_FAILED,
    };
    unsafe { s::spdk_bdev_io_complete(bdev_io, st) };
}

pub(super) unsafe fn complete(bdev_io: *mut s::spdk_bdev_io, ok: bool) {
    let st = if ok {
        s::SPDK_BDEV_IO_STATUS_SUCCESS
    } else {
        s::SPDK_BDEV_IO_STATUS_FAILED
    };
    unsafe { s::spdk_bdev_io_complete(bdev_io, st) };
}

pub(super) struct Req {
    pub(super) ty: u32,
    pub(super) lba: u64,
    pub(super) blocks: u64,
    pub(super) iovs: *mut s::iovec,
    pub(super) iovcnt: i32,
}

pub(super) unsafe fn req(bdev_io: *mut s::spdk_bdev_io) -> Req {
    unsafe {
        let b = &(*bdev_io).u.bdev;
        Req {
            ty: u32::from((*bdev_io).type_),
            lba: b.offset_blocks,
            blocks: b.num_blocks,
            iovs: b.iovs,
            iovcnt: b.iovcnt,
        }
    }
}

// ------------------------------------------------------------------- fn_table hooks --

unsafe extern "C" fn io_type_supported(ctx: *mut c_void, ty: s::spdk_bdev_io_type) -> bool {
    // SAFETY: ctxt of our bdev.
    let node = unsafe { &*(*(ctx as *const OurBdev)).node };
    match ty {
        s::SPDK_BDEV_IO_TYPE_READ
        | s::SPDK_BDEV_IO_TYPE_WRITE
        | s::SPDK_BDEV_IO_TYPE_WRITE_ZEROES
        | s::SPDK_BDEV_IO_TYPE_FLUSH
        | s::SPDK_BDEV_IO_TYPE_RESET => true,
        // Unmap may reach the base (or the local leg) directly.
        // SAFETY: claimed, open bdev.
        s::SPDK_BDEV_IO_TYPE_UNMAP => unsafe {
            s::spdk_bdev_io_type_supported(node.current_legs()[0].0.bdev, ty)
        },
        _ => false,
    }
}

unsafe extern "C" fn get_io_channel(ctx: *mut c_void) -> *mut s::spdk_io_channel {
    // SAFETY: ctxt of our bdev; the node is its io_device.
    unsafe { s::spdk_get_io_channel((*(*(ctx as *const OurBdev)).node).io_device()) }
}

unsafe extern "C" fn dump_info_json(ctx: *mut c_void, w: *mut s::spdk_json_write_ctx) -> i32 {
    // SAFETY: ctxt of our bdev.
    let ob = unsafe { &*(ctx as *const OurBdev) };
    let node = unsafe { &*ob.node };
    let mut v = node.status();
    v["role"] = serde_json::Value::from(match ob.kind {
        Kind::Top => "top",
        Kind::Ingress => "ingress",
        Kind::Primary => "primary",
    });
    unsafe { json::write_named(w, c"replication", &v) }
}

unsafe extern "C" fn write_config_json(bdev: *mut s::spdk_bdev, w: *mut s::spdk_json_write_ctx) {
    // SAFETY: our bdev.
    let ob = unsafe { &*((*bdev).ctxt as *const OurBdev) };
    if ob.kind == Kind::Ingress {
        return; // created by the top's entry
    }
    let node = unsafe { &*ob.node };
    unsafe { json::write_value(w, &node.config_entry()) };
}

pub unsafe extern "C" fn channel_create(io_device: *mut c_void, buf: *mut c_void) -> i32 {
    // SAFETY: the io_device is a live node.
    let node = unsafe { &*(io_device as *const Node) };
    let mut legs = [null_mut(); 3];
    // After a reprotect: the former base and the remote leg (the overlays are released).
    for (i, leg) in node.current_legs().iter().enumerate() {
        let desc = leg.desc();
        if !desc.is_null() {
            // SAFETY: open descriptor.
            legs[i] = unsafe { s::spdk_bdev_get_io_channel(desc) };
        }
    }
    let (remote, poller) = match node.primary() {
        Some(p) => primary::remote_state(io_device, p, legs[1]),
        None => (None, null_mut()),
    };
    // SAFETY: SPDK gives us size_of::<Channel>() bytes.
    unsafe {
        std::ptr::write(
            buf as *mut Channel,
            Channel {
                node,
                legs,
                remote,
                poller,
            },
        )
    };
    0
}

pub unsafe extern "C" fn channel_destroy(_io_device: *mut c_void, buf: *mut c_void) {
    // SAFETY: written by channel_create.
    let ch = unsafe { std::ptr::read(buf as *mut Channel) };
    let mut p = ch.poller;
    if !p.is_null() {
        unsafe { s::spdk_poller_unregister(&mut p) };
    }
    let mut legs = ch.legs;
    if let Some(r) = &ch.remote
        && r.release_remote_when_idle()
    {
        legs[1] = null_mut();
    }
    for l in legs {
        if !l.is_null() {
            unsafe { s::spdk_put_io_channel(l) };
        }
    }
}

/// The primary's remote leg was hot-removed: release its channels everywhere, then close it.
pub fn drop_remote_leg(node: std::sync::Arc<Node>) {
    drop_legs(node, [false, true, false]);
}

/// A secondary reached `done`: its overlays are no longer used (spec 5.5); release their
/// channels on every thread, then their claims, so they can be deleted or reused.
pub fn release_overlays(node: std::sync::Arc<Node>) {
    // Created as a secondary and not reprotected: the legs 1 and 2 are the overlays.
    if matches!(node.role, crate::control::Role::Secondary(_)) && !node.is_reprotected() {
        drop_legs(node, [false, true, true]);
    }
}

/// Puts the channels of the chosen legs on every thread, then releases and closes them on
/// this thread. Idempotent. The legs are those claimed when called (a reprotect may switch
/// them before the iteration ends).
fn drop_legs(node: std::sync::Arc<Node>, which: [bool; 3]) {
    struct Ctx {
        node: std::sync::Arc<Node>,
        which: [bool; 3],
        legs: Vec<super::dev::SpdkDev>,
    }
    unsafe extern "C" fn put_legs(i: *mut s::spdk_io_channel_iter) {
        unsafe {
            let cx = &*(s::spdk_io_channel_iter_get_ctx(i) as *const Ctx);
            let ch = s::spdk_io_channel_iter_get_channel(i);
            let c = &mut *(s::spdk_sys_io_channel_get_ctx(ch) as *mut Channel);
            for (leg, &drop_it) in cx.which.iter().enumerate() {
                if !drop_it {
                    continue;
                }
                // The primary's remote channel may still carry requests: the last of them
                // puts it.
                let deferred = leg == 1
                    && c.remote
                        .as_ref()
                        .is_some_and(|r| r.release_remote_when_idle());
                if !c.legs[leg].is_null() && !deferred {
                    s::spdk_put_io_channel(c.legs[leg]);
                }
                c.legs[leg] = null_mut();
            }
            s::spdk_for_each_channel_continue(i, 0);
        }
    }
    unsafe extern "C" fn close_legs(i: *mut s::spdk_io_channel_iter, _st: i32) {
        unsafe {
            let cx = Box::from_raw(s::spdk_io_channel_iter_get_ctx(i) as *mut Ctx);
            for (leg, &drop_it) in cx.which.iter().enumerate() {
                let Some(l) = cx.legs.get(leg).filter(|_| drop_it) else {
                    continue;
                };
                let desc = l.take_desc();
                if !desc.is_null() {
                    s::spdk_bdev_module_release_bdev(l.0.bdev);
                    s::spdk_bdev_close(desc);
                    tracing::info!(name = cx.node.name(), bdev = l.name(), "released");
                }
            }
        }
    }
    let io_device = node.io_device();
    let legs = node.current_legs().to_vec();
    let ctx = Box::into_raw(Box::new(Ctx { node, which, legs })) as *mut c_void;
    // SAFETY: the context is released by close_legs.
    unsafe { s::spdk_for_each_channel(io_device, Some(put_legs), ctx, Some(close_legs)) };
}

/// A reprotect made `node` a primary: every existing channel takes the primary's shape (a
/// channel of the remote leg, the forwarding state, the timeout poller). Until its thread
/// is reached, a channel's writes go to the local leg only and mark their regions dirty.
/// Channels created afterwards are primary-shaped from the start.
pub fn promote_channels(node: std::sync::Arc<Node>) {
    unsafe extern "C" fn promote(i: *mut s::spdk_io_channel_iter) {
        unsafe {
            let node = &*(s::spdk_io_channel_iter_get_ctx(i) as *const Node);
            let ch = s::spdk_io_channel_iter_get_channel(i);
            let c = &mut *(s::spdk_sys_io_channel_get_ctx(ch) as *mut Channel);
            if let (None, Some(p)) = (&c.remote, node.primary()) {
                // The overlays' channels were put when they were released (at `done`).
                for leg in &mut c.legs[1..] {
                    if !leg.is_null() {
                        s::spdk_put_io_channel(*leg);
                        *leg = null_mut();
                    }
                }
                let desc = node.current_legs()[1].desc();
                if !desc.is_null() {
                    c.legs[1] = s::spdk_bdev_get_io_channel(desc);
                }
                let (remote, poller) = primary::remote_state(node.io_device(), p, c.legs[1]);
                c.remote = remote;
                c.poller = poller;
            }
            s::spdk_for_each_channel_continue(i, 0);
        }
    }
    unsafe extern "C" fn done(i: *mut s::spdk_io_channel_iter, _st: i32) {
        // SAFETY: the strong count taken below.
        unsafe {
            drop(std::sync::Arc::from_raw(
                s::spdk_io_channel_iter_get_ctx(i) as *const Node
            ))
        };
    }
    let io_device = node.io_device();
    let ctx = std::sync::Arc::into_raw(node) as *mut c_void;
    // SAFETY: the node is kept alive by the strong count until `done`.
    unsafe { s::spdk_for_each_channel(io_device, Some(promote), ctx, Some(done)) };
}

// -------------------------------------------------------------------- submission --

unsafe extern "C" fn submit_request(ch: *mut s::spdk_io_channel, bdev_io: *mut s::spdk_bdev_io) {
    unsafe {
        let ctx = ctx_of(bdev_io);
        ctx.ch = ch;
        if u32::from((*bdev_io).type_) == s::SPDK_BDEV_IO_TYPE_READ {
            let len = (*bdev_io).u.bdev.num_blocks * u64::from((*(*bdev_io).bdev).blocklen);
            s::spdk_bdev_io_get_buf(bdev_io, Some(read_buf_ready), len);
            return;
        }
        dispatch(ch, bdev_io);
    }
}

unsafe extern "C" fn read_buf_ready(
    ch: *mut s::spdk_io_channel,
    bdev_io: *mut s::spdk_bdev_io,
    ok: bool,
) {
    unsafe {
        if !ok {
            complete(bdev_io, false);
            return;
        }
        dispatch(ch, bdev_io);
    }
}

unsafe extern "C" fn resubmit(arg: *mut c_void) {
    let bdev_io = arg as *mut s::spdk_bdev_io;
    unsafe { dispatch(ctx_of(bdev_io).ch, bdev_io) };
}

/// A child submission returned -ENOMEM: retry the whole request when `leg` has room.
pub(super) unsafe fn queue_retry(
    bdev_io: *mut s::spdk_bdev_io,
    leg_bdev: *mut s::spdk_bdev,
    leg_ch: *mut s::spdk_io_channel,
) {
    unsafe {
        let ctx = ctx_of(bdev_io);
        ctx.wait.bdev = leg_bdev;
        ctx.wait.cb_fn = Some(resubmit);
        ctx.wait.cb_arg = bdev_io.cast();
        if s::spdk_bdev_queue_io_wait(leg_bdev, leg_ch, &mut ctx.wait) != 0 {
            complete(bdev_io, false);
        }
    }
}

unsafe fn dispatch(ch: *mut s::spdk_io_channel, bdev_io: *mut s::spdk_bdev_io) {
    unsafe {
        let chan = &*(s::spdk_sys_io_channel_get_ctx(ch) as *const Channel);
        let ob = our_bdev(bdev_io);
        let node = &*ob.node;
        match (node.role(), ob.kind) {
            (RoleRef::Secondary(_), Kind::Top) => secondary::top(node, chan, bdev_io),
            (RoleRef::Secondary(_), Kind::Ingress) => secondary::ingress(node, chan, bdev_io),
            // A reprotected secondary's former ingress: refused, as in `done` (it is being
            // unregistered).
            (RoleRef::Primary(_), Kind::Ingress) => complete(bdev_io, false),
            (RoleRef::Primary(_), _) => primary::submit(node, chan, bdev_io),
            (RoleRef::Secondary(_), Kind::Primary) => complete(bdev_io, false),
        }
    }
}

/// Which child operation to issue.
#[derive(Clone, Copy)]
pub(super) enum Child {
    Read,
    Write,
    WriteZeroes,
    Unmap,
    Flush,
    Reset,
}

pub(super) fn child_of(ty: u32) -> Option<Child> {
    Some(match ty {
        s::SPDK_BDEV_IO_TYPE_READ => Child::Read,
        s::SPDK_BDEV_IO_TYPE_WRITE => Child::Write,
        s::SPDK_BDEV_IO_TYPE_WRITE_ZEROES => Child::WriteZeroes,
        s::SPDK_BDEV_IO_TYPE_UNMAP => Child::Unmap,
        s::SPDK_BDEV_IO_TYPE_FLUSH => Child::Flush,
        s::SPDK_BDEV_IO_TYPE_RESET => Child::Reset,
        _ => return None,
    })
}

/// Issues `op` for `r`'s range (iovecs for reads and writes) on one leg.
pub(super) unsafe fn issue(
    desc: *mut s::spdk_bdev_desc,
    ch: *mut s::spdk_io_channel,
    op: Child,
    r: &Req,
    cb: s::spdk_bdev_io_completion_cb,
    arg: *mut c_void,
) -> i32 {
    if desc.is_null() || ch.is_null() {
        return -19;
    }
    unsafe {
        match op {
            Child::Read => {
                s::spdk_bdev_readv_blocks(desc, ch, r.iovs, r.iovcnt, r.lba, r.blocks, cb, arg)
            }
            Child::Write => {
                s::spdk_bdev_writev_blocks(desc, ch, r.iovs, r.iovcnt, r.lba, r.blocks, cb, arg)
            }
            Child::WriteZeroes => {
                s::spdk_bdev_write_zeroes_blocks(desc, ch, r.lba, r.blocks, cb, arg)
            }
            Child::Unmap => s::spdk_bdev_unmap_blocks(desc, ch, r.lba, r.blocks, cb, arg),
            Child::Flush => s::spdk_bdev_flush_blocks(desc, ch, r.lba, r.blocks, cb, arg),
            Child::Reset => s::spdk_bdev_reset(desc, ch, cb, arg),
        }
    }
}

/// Child done: complete the guest request with the child's status.
pub(super) unsafe extern "C" fn pass_done(child: *mut s::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    unsafe {
        s::spdk_bdev_free_io(child);
        complete(arg.cast(), ok);
    }
}
