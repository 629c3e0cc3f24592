//! The secondary's fast path: top and ingress requests that one leg serves, submitted
//! from `submit_request` with C callbacks and no allocation; the rest goes to
//! [`super::slow`]. Every gated request holds a raw gate entry from its plan to its
//! completion, which is what a checkpoint's drain waits for.

use super::exec;
use super::io::{
    Channel, Child, ENOMEM, Req, child_of, complete, ctx_of, issue, our_bdev, pass_done,
    queue_retry, req,
};
use super::node::Node;
use super::slow::{read_into_guest, slow};
use crate::engine::{AllocState, BlockDevice, IngressWritePlan, ReadSegment, Source, TopWritePlan};
use spdk_sys as s;
use std::ffi::c_void;

/// A child of a gated request ended: frees it; the guest request (`arg`) and its
/// secondary, for the callback to complete through [`finish_gated`].
#[inline]
unsafe fn gated_child_done(
    child: *mut s::spdk_bdev_io,
    arg: *mut c_void,
) -> (
    &'static crate::engine::Secondary<super::dev::SpdkDev>,
    *mut s::spdk_bdev_io,
) {
    unsafe {
        s::spdk_bdev_free_io(child);
        let bdev_io: *mut s::spdk_bdev_io = arg.cast();
        (secondary_of(bdev_io), bdev_io)
    }
}

/// Same as `pass_done`, leaving the secondary's gate.
unsafe extern "C" fn gated_done(child: *mut s::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    unsafe {
        let (sec, bdev_io) = gated_child_done(child, arg);
        finish_gated(sec, bdev_io, ok);
    }
}

/// Completes a request that holds a raw gate entry.
unsafe fn finish_gated(
    sec: &crate::engine::Secondary<super::dev::SpdkDev>,
    bdev_io: *mut s::spdk_bdev_io,
    ok: bool,
) {
    sec.gate().exit();
    unsafe { complete(bdev_io, ok) };
}

/// The secondary engine a node was created with. Requests routed to it before a reprotect
/// keep using it until they complete (the current role is already the primary then).
pub(super) fn created_secondary(
    node: &Node,
) -> Option<&crate::engine::Secondary<super::dev::SpdkDev>> {
    match &node.role {
        crate::control::Role::Secondary(sec) => Some(sec),
        crate::control::Role::Primary(_) => None,
    }
}

unsafe fn secondary_of(
    bdev_io: *mut s::spdk_bdev_io,
) -> &'static crate::engine::Secondary<super::dev::SpdkDev> {
    unsafe {
        match created_secondary(&*our_bdev(bdev_io).node) {
            Some(sec) => sec,
            None => unreachable!("only a secondary's requests complete through here"),
        }
    }
}

/// Issues on leg `i` and handles a failed submission; `gated` says the request holds a
/// raw gate entry to give back on failure.
unsafe fn issue_on(
    node: &Node,
    chan: &Channel,
    i: usize,
    op: Child,
    bdev_io: *mut s::spdk_bdev_io,
    cb: s::spdk_bdev_io_completion_cb,
    gated: bool,
) {
    unsafe {
        let r = req(bdev_io);
        let rc = issue(
            node.legs[i].desc(),
            chan.legs[i],
            op,
            &r,
            cb,
            bdev_io.cast(),
        );
        if rc == 0 {
            return;
        }
        if gated {
            secondary_of(bdev_io).gate().exit();
        }
        if rc == -ENOMEM {
            queue_retry(bdev_io, node.legs[i].0.bdev, chan.legs[i]);
        } else {
            complete(bdev_io, false);
        }
    }
}

const BASE: usize = 0;
const HIDDEN: usize = 1;
const ACTIVE: usize = 2;

pub(super) unsafe fn top(node: &Node, chan: &Channel, bdev_io: *mut s::spdk_bdev_io) {
    unsafe {
        let Some(sec) = created_secondary(node) else {
            complete(bdev_io, false);
            return;
        };
        let r = req(bdev_io);
        let Some(op) = child_of(r.ty) else {
            complete(bdev_io, false);
            return;
        };
        if matches!(op, Child::Flush | Child::Reset) || !sec.gate().try_enter_raw() {
            slow(bdev_io);
            return;
        }
        match op {
            Child::Read => {
                let seg = match sec.plan_top_read_whole(r.lba, r.blocks) {
                    Ok(Some(seg)) => seg,
                    // A zero-block read: nothing to do.
                    Ok(None) if r.blocks == 0 => {
                        finish_gated(sec, bdev_io, true);
                        return;
                    }
                    // Pieces from several sources: the engine's driver reads each.
                    Ok(None) => {
                        sec.gate().exit();
                        slow(bdev_io);
                        return;
                    }
                    Err(_) => {
                        finish_gated(sec, bdev_io, false);
                        return;
                    }
                };
                match seg.source {
                    Source::Zero => {
                        zero_iovs(&r);
                        finish_gated(sec, bdev_io, true);
                    }
                    Source::Active => {
                        issue_on(node, chan, ACTIVE, op, bdev_io, Some(gated_done), true)
                    }
                    Source::Hidden => {
                        issue_on(node, chan, HIDDEN, op, bdev_io, Some(gated_done), true)
                    }
                    Source::Base => {
                        let ctx = ctx_of(bdev_io);
                        ctx.seg_lba = seg.lba;
                        ctx.seg_blocks = seg.nblocks;
                        issue_on(
                            node,
                            chan,
                            BASE,
                            op,
                            bdev_io,
                            Some(top_base_read_done),
                            true,
                        )
                    }
                }
            }
            _ => match sec.plan_top_write(r.lba, r.blocks) {
                TopWritePlan::Active => match op {
                    Child::Write => issue_on(
                        node,
                        chan,
                        ACTIVE,
                        op,
                        bdev_io,
                        Some(active_write_done),
                        true,
                    ),
                    _ => {
                        // Allocated as zero: metadata only.
                        sec.mark_active(r.lba, r.blocks, AllocState::Zero);
                        finish_gated(sec, bdev_io, true);
                    }
                },
                TopWritePlan::Base => {
                    // Tracked for an incremental reprotect, and after a reprotect for the
                    // promoted primary's map (see `top_base_write_done`).
                    sec.base_write_begin(r.lba, r.blocks);
                    issue_on(
                        node,
                        chan,
                        BASE,
                        op,
                        bdev_io,
                        Some(top_base_write_done),
                        true,
                    )
                }
                TopWritePlan::Slow => {
                    sec.gate().exit();
                    slow(bdev_io);
                }
                TopWritePlan::Refused => {
                    finish_gated(sec, bdev_io, false);
                }
            },
        }
    }
}

unsafe extern "C" fn top_base_write_done(child: *mut s::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    unsafe {
        let (sec, bdev_io) = gated_child_done(child, arg);
        let r = req(bdev_io);
        sec.base_write_done(r.lba, r.blocks);
        finish_gated(sec, bdev_io, ok);
    }
}

unsafe extern "C" fn active_write_done(child: *mut s::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    unsafe {
        let (sec, bdev_io) = gated_child_done(child, arg);
        if ok {
            let r = req(bdev_io);
            sec.mark_active(r.lba, r.blocks, AllocState::Data);
        }
        finish_gated(sec, bdev_io, ok);
    }
}

/// A top read served from the base: if a copy of one of its clusters finished meanwhile,
/// the base may hold newer ingress data there; re-read those clusters from hidden.
unsafe extern "C" fn top_base_read_done(child: *mut s::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    unsafe {
        let (sec, bdev_io) = gated_child_done(child, arg);
        if !ok {
            finish_gated(sec, bdev_io, false);
            return;
        }
        let ctx = ctx_of(bdev_io);
        let seg = ReadSegment {
            source: Source::Base,
            lba: ctx.seg_lba,
            nblocks: ctx.seg_blocks,
        };
        // Empty unless a copy finished during the read (no allocation otherwise).
        let mut redo: Vec<(u64, u64)> = Vec::new();
        sec.revalidate_base_read(&seg, |l, k| redo.push((l, k)));
        if redo.is_empty() {
            finish_gated(sec, bdev_io, true);
            return;
        }
        exec::spawn(async move {
            let r = req(bdev_io);
            let mut ok = true;
            for (lba, k) in redo {
                ok &= read_into_guest(sec.hidden(), &r, lba, k).await.is_ok();
            }
            finish_gated(sec, bdev_io, ok);
        });
    }
}

pub(super) unsafe fn ingress(node: &Node, chan: &Channel, bdev_io: *mut s::spdk_bdev_io) {
    unsafe {
        let Some(sec) = created_secondary(node) else {
            complete(bdev_io, false);
            return;
        };
        let r = req(bdev_io);
        let Some(op) = child_of(r.ty) else {
            complete(bdev_io, false);
            return;
        };
        match op {
            // The base is shared with the SVM: resetting it for the primary's sake would
            // abort the SVM's I/O. SPDK's bdev layer has already drained the ingress's own
            // I/O before it hands us a reset, so there is nothing left to do.
            Child::Reset => complete(bdev_io, true),
            Child::Flush if !node.legs[BASE].supports_flush() => complete(bdev_io, true),
            Child::Read | Child::Flush => {
                if matches!(op, Child::Flush) {
                    sec.count_base_flush();
                }
                issue_on(node, chan, BASE, op, bdev_io, Some(pass_done), false)
            }
            Child::Write | Child::WriteZeroes | Child::Unmap => {
                if !sec.gate().try_enter_raw() {
                    slow(bdev_io);
                    return;
                }
                match sec.plan_ingress_write(r.lba, r.blocks) {
                    IngressWritePlan::Direct => {
                        issue_on(node, chan, BASE, op, bdev_io, Some(gated_done), true)
                    }
                    IngressWritePlan::Cow => {
                        sec.gate().exit();
                        slow(bdev_io);
                    }
                    IngressWritePlan::Refused => {
                        sec.count_ingress_refused();
                        finish_gated(sec, bdev_io, false);
                    }
                }
            }
        }
    }
}

unsafe fn zero_iovs(r: &Req) {
    unsafe {
        for i in 0..r.iovcnt as usize {
            let v = &*r.iovs.add(i);
            std::ptr::write_bytes(v.iov_base as *mut u8, 0, v.iov_len);
        }
    }
}
