//! NVM I/O commands: validated here, then handed to the namespace backend as an
//! [`IoRequest`]; the completion comes back through `TargetConn::complete_io`.

use super::backend::{IoOp, IoRequest};
use super::conn::{Cmd, Outcome, TargetConn};
use crate::nvme::cmd::{DsmRange, Sqe, Status, io};
use std::sync::atomic::Ordering;

/// DSM attribute: deallocate.
const DSM_AD: u32 = 1 << 2;

impl TargetConn {
    pub(crate) fn io(&mut self, sqe: &Sqe, data: Vec<u8>) -> Outcome {
        let Some(q) = &self.q else {
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        };
        let ctrl = q.ctrl.clone();
        if !ctrl.is_alive() || ctrl.generation.load(Ordering::Acquire) != q.generation {
            return Outcome::status(Status::ABORTED_SQ_DELETION);
        }
        if !matches!(
            sqe.opcode,
            io::READ | io::WRITE | io::FLUSH | io::WRITE_ZEROES | io::DATASET_MANAGEMENT
        ) {
            return Outcome::status(Status::INVALID_OPCODE);
        }
        let Some(ns) = ctrl.subsys.namespaces.get(&sqe.nsid) else {
            return Outcome::status(Status::INVALID_NAMESPACE);
        };
        let bs = u64::from(ns.backend.block_size());
        let nblocks = ns.backend.num_blocks();
        let slba = u64::from(sqe.cdw10) | (u64::from(sqe.cdw11) << 32);
        let nlb = (sqe.cdw12 & 0xFFFF) + 1;
        let in_range = |lba: u64, n: u64| lba.checked_add(n).is_some_and(|e| e <= nblocks);
        let mut read_len = 0usize;
        let op = match sqe.opcode {
            io::READ | io::WRITE => {
                if !in_range(slba, u64::from(nlb)) {
                    return Outcome::status(Status::LBA_OUT_OF_RANGE);
                }
                let len = u64::from(nlb) * bs;
                if len > u64::from(self.target.cfg.max_io_size) {
                    return Outcome::status(Status::INVALID_FIELD);
                }
                if u64::from(sqe.dptr.len) != len {
                    return Outcome::status(Status::SGL_LENGTH_INVALID);
                }
                if sqe.opcode == io::READ {
                    read_len = len as usize;
                    IoOp::Read {
                        lba: slba,
                        nblocks: nlb,
                    }
                } else {
                    if data.len() as u64 != len {
                        return Outcome::status(Status::SGL_LENGTH_INVALID);
                    }
                    IoOp::Write { lba: slba, data }
                }
            }
            io::FLUSH => IoOp::Flush,
            io::WRITE_ZEROES => {
                if !in_range(slba, u64::from(nlb)) {
                    return Outcome::status(Status::LBA_OUT_OF_RANGE);
                }
                IoOp::WriteZeroes {
                    lba: slba,
                    nblocks: nlb,
                }
            }
            _ => {
                let nr = ((sqe.cdw10 & 0xFF) + 1) as usize;
                if data.len() < nr * 16 {
                    return Outcome::status(Status::SGL_LENGTH_INVALID);
                }
                if sqe.cdw11 & DSM_AD == 0 {
                    // Only deallocate changes anything; the other attributes are hints.
                    return Outcome::status(Status::SUCCESS);
                }
                let mut ranges = Vec::with_capacity(nr);
                for r in DsmRange::parse_all(&data, nr) {
                    if r.nlb == 0 {
                        continue;
                    }
                    if !in_range(r.slba, u64::from(r.nlb)) {
                        return Outcome::status(Status::LBA_OUT_OF_RANGE);
                    }
                    ranges.push((r.slba, r.nlb));
                }
                IoOp::Deallocate { ranges }
            }
        };
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        self.tags.insert(tag, sqe.cid);
        self.cmds.insert(sqe.cid, Cmd::Running { read_len });
        self.ios.push_back(IoRequest {
            tag,
            nsid: sqe.nsid,
            backend: ns.backend.clone(),
            op,
        });
        Outcome::Pending
    }
}
