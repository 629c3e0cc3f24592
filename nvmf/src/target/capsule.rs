//! Command capsules and host data: SGL checks, in-capsule data, R2T and in-order H2CData.

use super::conn::{Cmd, TargetConn};
use super::stats::Counters;
use crate::nvme::Status;
use crate::nvme::cmd::{Sqe, admin, sgl};
use crate::nvme::fabrics::fctype;
use crate::pdu::{self, Fes, WireCfg};

impl TargetConn {
    /// Whether the command moves data host to controller (opcode bits 1:0 = 01b; for
    /// Fabrics, only Connect does).
    fn is_h2c(sqe: &Sqe) -> bool {
        if sqe.opcode == admin::FABRICS {
            sqe.fctype() == fctype::CONNECT
        } else {
            sqe.opcode & 3 == 1
        }
    }

    pub(crate) fn on_capsule(&mut self, sqe: Sqe, data: Vec<u8>) {
        Counters::bump(&self.target.counters.capsules);
        if let Some(q) = &mut self.q {
            q.sqhd = (q.sqhd + 1) % q.qsize.max(1);
            // Bounded work per connection: a host may not exceed its queue size (AERs ride
            // on the admin queue on top of it).
            if self.cmds.len() > usize::from(q.qsize) + 8 {
                let hdr = sqe.encode();
                self.term(Fes::PduSequenceError, 0, &hdr[..8], "queue overflow");
                return;
            }
        } else if !self.cmds.is_empty() {
            self.term(
                Fes::PduSequenceError,
                0,
                &[],
                "command before Connect completed",
            );
            return;
        }
        if self.cmds.contains_key(&sqe.cid) {
            self.send_resp(sqe.cid, Status::CID_CONFLICT, 0, 0);
            return;
        }
        let dptr = sqe.dptr;
        if Self::is_h2c(&sqe) && dptr.len > 0 {
            match dptr.id {
                sgl::DATA_BLOCK_OFFSET => {
                    if data.len() > dptr.len as usize {
                        self.term(
                            Fes::DataOutOfRange,
                            0,
                            &[],
                            "in-capsule data beyond the command",
                        );
                    } else if dptr.addr != 0 {
                        self.send_resp(sqe.cid, Status::INVALID_SGL_OFFSET, 0, 0);
                    } else if data.len() < dptr.len as usize {
                        self.send_resp(sqe.cid, Status::SGL_LENGTH_INVALID, 0, 0);
                    } else {
                        Counters::bump(&self.target.counters.in_capsule_writes);
                        self.execute(sqe, data);
                    }
                }
                sgl::TRANSPORT_DATA_BLOCK => {
                    if !data.is_empty() {
                        self.term(
                            Fes::DataOutOfRange,
                            0,
                            &[],
                            "in-capsule data with a transport SGL",
                        );
                    } else if dptr.len > self.target.cfg.max_io_size {
                        self.send_resp(sqe.cid, Status::SGL_LENGTH_INVALID, 0, 0);
                    } else {
                        self.request_data(sqe);
                    }
                }
                _ => self.send_resp(sqe.cid, Status::SGL_TYPE_INVALID, 0, 0),
            }
            return;
        }
        if !data.is_empty() {
            self.term(
                Fes::DataOutOfRange,
                0,
                &[],
                "in-capsule data for a command without host data",
            );
            return;
        }
        if dptr.len > 0 && dptr.id != sgl::TRANSPORT_DATA_BLOCK {
            self.send_resp(sqe.cid, Status::SGL_TYPE_INVALID, 0, 0);
            return;
        }
        self.execute(sqe, Vec::new());
    }

    /// Asks for the whole transfer with one R2T (the host splits it by MAXH2CDATA).
    fn request_data(&mut self, sqe: Sqe) {
        let len = sqe.dptr.len;
        self.next_ttag = self.next_ttag.wrapping_add(1);
        let ttag = self.next_ttag;
        let r2t = pdu::R2T {
            cccid: sqe.cid,
            ttag,
            r2to: 0,
            r2tl: len,
        };
        pdu::encode_r2t(self.tx.bytes_mut(), &r2t, &self.wire);
        Counters::bump(&self.target.counters.r2ts);
        let buf = vec![0u8; len as usize];
        self.cmds.insert(
            sqe.cid,
            Cmd::AwaitData {
                sqe,
                buf,
                received: 0,
                ttag,
            },
        );
    }

    pub(crate) fn on_h2c_data(&mut self, d: pdu::H2CData) {
        Counters::bump(&self.target.counters.h2c_data_pdus);
        let mut hdr = Vec::new();
        pdu::encode_h2c_data(
            &mut hdr,
            d.cccid,
            d.ttag,
            d.datao,
            &[],
            d.last,
            &WireCfg::default(),
        );
        let Some(Cmd::AwaitData {
            buf,
            received,
            ttag,
            ..
        }) = self.cmds.get_mut(&d.cccid)
        else {
            self.term(
                Fes::UnsupportedParameter,
                pdu::fei::CCCID,
                &hdr,
                "H2CData for no R2T",
            );
            return;
        };
        if *ttag != d.ttag {
            self.term(
                Fes::UnsupportedParameter,
                pdu::fei::TTAG,
                &hdr,
                "H2CData with a wrong TTAG",
            );
            return;
        }
        let datao = d.datao as usize;
        if datao != *received {
            self.term(
                Fes::DataOutOfRange,
                pdu::fei::DATAO,
                &hdr,
                "H2CData out of order",
            );
            return;
        }
        let end = datao.checked_add(d.data.len());
        let Some(dst) = end.and_then(|e| buf.get_mut(datao..e)) else {
            self.term(
                Fes::DataOutOfRange,
                pdu::fei::DATAL,
                &hdr,
                "H2CData beyond the command",
            );
            return;
        };
        dst.copy_from_slice(&d.data);
        *received += d.data.len();
        if *received == buf.len()
            && let Some(Cmd::AwaitData { sqe, buf, .. }) = self.cmds.remove(&d.cccid)
        {
            self.execute(sqe, buf);
        }
    }
}
