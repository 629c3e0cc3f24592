//! Admin commands: Identify, Get Log Page, Get/Set Features, Keep Alive, Asynchronous
//! Event Request (held), Abort.

use super::conn::{Cmd, Outcome, TargetConn};
use super::subsystem::CtrlHandle;
use crate::nvme::cmd::{Sqe, Status, admin};
use crate::nvme::fabrics::csts;
use crate::nvme::identify::{self, ControllerData, NamespaceData, cns, cntrltype};
use crate::nvme::log::{self, lid};
use std::sync::Arc;

pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
}

/// Zero-based AER limit advertised (AERL): four AERs may be held.
const AERL: u8 = 3;
/// Zero-based abort command limit.
const ACL: u8 = 3;

impl TargetConn {
    fn ctrl(&self) -> Option<Arc<CtrlHandle>> {
        self.q.as_ref().map(|q| q.ctrl.clone())
    }

    pub(crate) fn admin(&mut self, sqe: &Sqe) -> Outcome {
        let Some(ctrl) = self.ctrl() else {
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        };
        {
            let mut st = ctrl.lock();
            // Any admin command shows the host is alive (Linux/SPDK send Keep Alive anyway).
            st.last_keepalive = self.now;
            if st.csts & csts::RDY == 0 {
                return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
            }
        }
        match sqe.opcode {
            admin::IDENTIFY => self.identify(&ctrl, sqe),
            admin::GET_LOG_PAGE => self.get_log_page(&ctrl, sqe),
            admin::GET_FEATURES => self.features(&ctrl, sqe, false),
            admin::SET_FEATURES => self.features(&ctrl, sqe, true),
            admin::KEEP_ALIVE => Outcome::status(Status::SUCCESS),
            admin::ASYNC_EVENT_REQUEST => {
                let held = self
                    .cmds
                    .values()
                    .filter(|c| matches!(c, Cmd::HeldAer))
                    .count();
                if held > usize::from(AERL) {
                    Outcome::status(Status::AER_LIMIT_EXCEEDED)
                } else {
                    // Held until an event; we raise none yet, so it ends with the association.
                    self.cmds.insert(sqe.cid, Cmd::HeldAer);
                    Outcome::Pending
                }
            }
            admin::ABORT => self.abort(sqe),
            _ => Outcome::status(Status::INVALID_OPCODE),
        }
    }

    fn abort(&mut self, sqe: &Sqe) -> Outcome {
        let sqid = (sqe.cdw10 & 0xFFFF) as u16;
        let cid = (sqe.cdw10 >> 16) as u16;
        // Only a held AER on this admin queue can be aborted; anything else already runs
        // on a backend that cannot cancel it. DW0 bit 0 = 1 says "not aborted".
        if sqid == 0 && matches!(self.cmds.get(&cid), Some(Cmd::HeldAer)) {
            self.respond(cid, Status::ABORT_REQUESTED, 0, 0);
            return Outcome::ok_dw0(0);
        }
        Outcome::ok_dw0(1)
    }

    fn identify(&mut self, ctrl: &CtrlHandle, sqe: &Sqe) -> Outcome {
        let cfg = &self.target.cfg;
        let sub = &ctrl.subsys;
        let c = (sqe.cdw10 & 0xFF) as u8;
        let nsid = sqe.nsid;
        match c {
            cns::CONTROLLER => {
                let mdts = (cfg.max_io_size / 4096).max(1).ilog2() as u8;
                let vwc = sub.vwc();
                let d = ControllerData {
                    vid: 0,
                    serial: sub.serial.clone(),
                    model: sub.model.clone(),
                    firmware: env!("CARGO_PKG_VERSION").to_string(),
                    mdts,
                    cntlid: ctrl.cntlid,
                    ver: crate::nvme::fabrics::VS_1_3,
                    oaes: if sub.discovery {
                        0
                    } else {
                        identify::OAES_NS_ATTR
                    },
                    cntrltype: if sub.discovery {
                        cntrltype::DISCOVERY
                    } else {
                        cntrltype::IO
                    },
                    acl: ACL,
                    aerl: AERL,
                    elpe: 0,
                    kas: cfg.kas,
                    maxcmd: cfg.max_queue_size,
                    nn: sub.nn(),
                    oncs: if sub.discovery {
                        0
                    } else {
                        identify::ONCS_DSM | identify::ONCS_WRITE_ZEROES
                    },
                    // Bit 0: present; bits 2:1 = 10b: Flush to all namespaces not supported.
                    vwc: if vwc { 0x05 } else { 0 },
                    // SGLs supported, with the offset (in-capsule) addressing.
                    sgls: 1 | (1 << 20),
                    subnqn: sub.nqn.clone(),
                    ioccsz: (64 + cfg.in_capsule_data) / 16,
                    iorcsz: 1,
                    msdbd: 1,
                };
                Outcome::data(d.encode())
            }
            cns::NAMESPACE => {
                if nsid == 0 || nsid > sub.nn() {
                    return Outcome::status(Status::INVALID_NAMESPACE);
                }
                // An inactive NSID in range reads as all zeroes.
                let Some(ns) = sub.namespaces.get(&nsid) else {
                    return Outcome::data(vec![0u8; identify::IDENTIFY_LEN]);
                };
                let nblocks = ns.backend.num_blocks();
                let d = NamespaceData {
                    nsze: nblocks,
                    ncap: nblocks,
                    nuse: nblocks,
                    nsfeat: 0,
                    lbads: ns.backend.block_size().ilog2() as u8,
                    // Deallocated blocks read as zeroes.
                    dlfeat: 0x01,
                    nguid: ns.nguid,
                    eui64: [0; 8],
                };
                Outcome::data(d.encode())
            }
            cns::ACTIVE_NS_LIST => {
                if nsid >= 0xFFFF_FFFE {
                    return Outcome::status(Status::INVALID_NAMESPACE);
                }
                let ids: Vec<u32> = sub.namespaces.keys().copied().collect();
                Outcome::data(identify::encode_ns_list(&ids, nsid))
            }
            cns::NS_DESCRIPTORS => match sub.namespaces.get(&nsid) {
                Some(ns) => Outcome::data(identify::encode_ns_descriptors(&ns.nguid, &ns.uuid)),
                None => Outcome::status(Status::INVALID_NAMESPACE),
            },
            _ => Outcome::status(Status::INVALID_FIELD),
        }
    }

    fn get_log_page(&mut self, ctrl: &CtrlHandle, sqe: &Sqe) -> Outcome {
        let (id, offset, len) = log::get_log_fields(sqe);
        // The transfer is bounded by the host's buffer, which is bounded by MDTS: never
        // build more than that, whatever NUMD says.
        if len > u64::from(sqe.dptr.len) || offset % 4 != 0 {
            return Outcome::status(Status::INVALID_FIELD);
        }
        let page = match id {
            // One (empty) error information entry: ELPE is zero.
            lid::ERROR => vec![0u8; 64],
            lid::SMART => log::smart_log(),
            // We advertise namespace attribute notices (OAES bit 8), which makes this page
            // mandatory; no namespace ever changes under a controller yet: an empty list.
            lid::CHANGED_NS_LIST if !ctrl.subsys.discovery => vec![0u8; 4096],
            lid::FIRMWARE_SLOT => log::firmware_log(env!("CARGO_PKG_VERSION")),
            lid::DISCOVERY if ctrl.subsys.discovery => {
                let (genctr, entries) = self.target.discovery_entries(&ctrl.hostnqn);
                log::discovery_log(genctr, &entries)
            }
            _ => return Outcome::status(Status::INVALID_LOG_PAGE),
        };
        let Ok(off) = usize::try_from(offset) else {
            return Outcome::status(Status::INVALID_FIELD);
        };
        if off > page.len() {
            return Outcome::status(Status::INVALID_FIELD);
        }
        // Past the end of the page reads as zeroes, as hosts reading fixed chunks expect.
        let mut out = vec![0u8; len as usize];
        let avail = page.get(off..).unwrap_or(&[]);
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        Outcome::data(out)
    }

    fn features(&mut self, ctrl: &CtrlHandle, sqe: &Sqe, set: bool) -> Outcome {
        let f = (sqe.cdw10 & 0xFF) as u8;
        let sel = (sqe.cdw10 >> 8) & 7;
        let cfg = &self.target.cfg;
        let vwc = ctrl.subsys.vwc();
        let mut st = ctrl.lock();
        if !set && sel == 3 {
            // Supported capabilities: nothing saveable, everything changeable per controller.
            return Outcome::ok_dw0(0b100);
        }
        match (f, set) {
            (fid::NUMBER_OF_QUEUES, true) => {
                let nsqr = sqe.cdw11 & 0xFFFF;
                let ncqr = sqe.cdw11 >> 16;
                if nsqr == 0xFFFF || ncqr == 0xFFFF {
                    return Outcome::status(Status::INVALID_FIELD);
                }
                let want = (nsqr.min(ncqr) + 1).min(u32::from(cfg.max_io_queues));
                // Once I/O queues exist the count stays (the spec's "changeable once").
                if st.io_qids.is_empty() {
                    st.num_io_queues = want as u16;
                }
                let n = u32::from(st.num_io_queues).saturating_sub(1);
                Outcome::ok_dw0(n | (n << 16))
            }
            (fid::NUMBER_OF_QUEUES, false) => {
                let n = u32::from(st.num_io_queues).saturating_sub(1);
                Outcome::ok_dw0(n | (n << 16))
            }
            (fid::KEEP_ALIVE_TIMER, true) => {
                st.kato_ms = sqe.cdw11;
                st.last_keepalive = self.now;
                Outcome::ok_dw0(0)
            }
            (fid::KEEP_ALIVE_TIMER, false) => Outcome::ok_dw0(st.kato_ms),
            (fid::ASYNC_EVENT_CONFIG, true) => {
                st.aec = sqe.cdw11;
                Outcome::ok_dw0(0)
            }
            (fid::ASYNC_EVENT_CONFIG, false) => Outcome::ok_dw0(st.aec),
            (fid::VOLATILE_WRITE_CACHE, _) if !vwc => Outcome::status(Status::INVALID_FIELD),
            (fid::VOLATILE_WRITE_CACHE, true) => {
                st.vwc_enabled = sqe.cdw11 & 1 != 0;
                Outcome::ok_dw0(0)
            }
            (fid::VOLATILE_WRITE_CACHE, false) => Outcome::ok_dw0(u32::from(st.vwc_enabled)),
            (
                fid::ARBITRATION
                | fid::POWER_MANAGEMENT
                | fid::TEMPERATURE_THRESHOLD
                | fid::ERROR_RECOVERY
                | fid::INTERRUPT_COALESCING
                | fid::INTERRUPT_VECTOR_CONFIG
                | fid::WRITE_ATOMICITY,
                false,
            ) => Outcome::ok_dw0(0),
            (
                fid::ARBITRATION
                | fid::POWER_MANAGEMENT
                | fid::TEMPERATURE_THRESHOLD
                | fid::ERROR_RECOVERY
                | fid::INTERRUPT_COALESCING
                | fid::WRITE_ATOMICITY,
                true,
            ) => Outcome::ok_dw0(0),
            _ => Outcome::status(Status::INVALID_FIELD),
        }
    }
}
