//! The slow path: requests the fast paths do not take (COW, multi-source reads, merging
//! writes, failover-failed splits, flush, a primary's writes under a sync's region locks)
//! run through the engine's driver as a task on the reactor.

use super::dev::SpdkBuf;
use super::exec;
use super::io::{Child, Req, child_of, complete_with, our_bdev, req};
use super::node::{Kind, Node};
use super::secondary::created_secondary;
use crate::control::RoleRef;
use crate::engine::{BlockDevice, IoError};
use spdk_sys as s;

/// Copies between a contiguous buffer and the request's iovecs, from byte `skip` on.
pub(super) unsafe fn copy_iovs(r: &Req, skip: usize, buf: &SpdkBuf, to_iovs: bool) {
    unsafe {
        let mut skip = skip;
        let mut done = 0usize;
        let total = crate::engine::IoBuf::len(buf);
        for i in 0..r.iovcnt as usize {
            if done == total {
                break;
            }
            let v = &*r.iovs.add(i);
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - skip).min(total - done);
            let iov = (v.iov_base as *mut u8).add(skip);
            let b = buf.as_ptr().add(done);
            if to_iovs {
                std::ptr::copy_nonoverlapping(b, iov, n);
            } else {
                std::ptr::copy_nonoverlapping(iov, b, n);
            }
            skip = 0;
            done += n;
        }
    }
}

pub(super) fn block_size(r_node: &Node) -> u64 {
    u64::from(r_node.legs[0].block_size())
}

/// Reads `k` blocks at `lba` of `dev` into the part of the request's buffer they map to.
pub(super) async unsafe fn read_into_guest(
    dev: &super::dev::SpdkDev,
    r: &Req,
    lba: u64,
    k: u64,
) -> Result<(), IoError> {
    let bs = u64::from(dev.block_size());
    let skip = ((lba - r.lba) * bs) as usize;
    let len = (k * bs) as usize;
    unsafe {
        if r.iovcnt == 1 {
            let v = &*r.iovs;
            let buf = SpdkBuf::borrowed((v.iov_base as *mut u8).add(skip), len);
            dev.read(lba, buf).await
        } else {
            let buf = SpdkBuf::alloc(len)?;
            dev.read(lba, buf.clone()).await?;
            copy_iovs(r, skip, &buf, true);
            Ok(())
        }
    }
}

/// The request's whole buffer as one engine buffer (bounced when scattered).
unsafe fn guest_buf(r: &Req, bs: u64, fill_from_iovs: bool) -> Result<(SpdkBuf, bool), IoError> {
    unsafe {
        let len = (r.blocks * bs) as usize;
        if r.iovcnt == 1 && (*r.iovs).iov_len >= len {
            Ok((SpdkBuf::borrowed((*r.iovs).iov_base as *mut u8, len), false))
        } else {
            let b = SpdkBuf::alloc(len)?;
            if fill_from_iovs {
                copy_iovs(r, 0, &b, false);
            }
            Ok((b, true))
        }
    }
}

/// Runs the request through the engine's driver on this reactor.
pub(super) unsafe fn slow(bdev_io: *mut s::spdk_bdev_io) {
    exec::spawn(async move {
        // SAFETY: the bdev (and node) cannot go away while this request is outstanding.
        let r = unsafe { run_slow(bdev_io).await };
        unsafe { complete_with(bdev_io, r) };
    });
}

async unsafe fn run_slow(bdev_io: *mut s::spdk_bdev_io) -> Result<(), IoError> {
    unsafe {
        let ob = our_bdev(bdev_io);
        let node = &*ob.node;
        let r = req(bdev_io);
        let bs = block_size(node);
        let op = child_of(r.ty).ok_or(IoError::Io)?;
        if let RoleRef::Primary(p) = node.role() {
            if ob.kind == Kind::Ingress {
                // Routed before a reprotect retired the ingress: refused, as in `done`.
                return Err(IoError::Io);
            }
            // Writes while a sync or verify runs: under the region locks.
            let rt = super::exec::SpdkRuntime;
            return match op {
                Child::Write => {
                    // Owned, never the guest's: a timed-out remote leg outlives the guest
                    // request (spec 4).
                    let buf = SpdkBuf::alloc((r.blocks * bs) as usize)?;
                    copy_iovs(&r, 0, &buf, false);
                    p.write(&rt, r.lba, buf).await
                }
                Child::WriteZeroes => p.write_zeroes(&rt, r.lba, r.blocks).await,
                Child::Unmap => p.unmap(&rt, r.lba, r.blocks).await,
                _ => Err(IoError::Io),
            };
        }
        let Some(sec) = created_secondary(node) else {
            return Err(IoError::Io);
        };
        match (ob.kind, op) {
            (Kind::Top, Child::Read) => {
                let (buf, bounced) = guest_buf(&r, bs, false)?;
                sec.top_read(r.lba, buf.clone()).await?;
                if bounced {
                    copy_iovs(&r, 0, &buf, true);
                }
                Ok(())
            }
            (Kind::Top, Child::Write) => sec.top_write(r.lba, guest_buf(&r, bs, true)?.0).await,
            (Kind::Top, Child::WriteZeroes) => sec.top_write_zeroes(r.lba, r.blocks).await,
            (Kind::Top, Child::Unmap) => sec.top_unmap(r.lba, r.blocks).await,
            (Kind::Top, Child::Flush) => sec.top_flush().await,
            // Like the ingress: never reset devices the other side uses.
            (Kind::Top, Child::Reset) => Ok(()),
            (Kind::Ingress, Child::Write) => {
                sec.ingress_write(r.lba, guest_buf(&r, bs, true)?.0).await
            }
            (Kind::Ingress, Child::WriteZeroes) => sec.ingress_write_zeroes(r.lba, r.blocks).await,
            (Kind::Ingress, Child::Unmap) => sec.ingress_unmap(r.lba, r.blocks).await,
            _ => Err(IoError::Io),
        }
    }
}
