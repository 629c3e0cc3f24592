//! Fabrics Connect (creating a controller on the admin queue, attaching I/O queues) and
//! Property Get/Set (CAP, VS, CC with enable/shutdown/reset, CSTS).

use super::conn::{Outcome, QueueCtx, TargetConn};
use super::stats::Counters;
use super::subsystem::{CtrlHandle, CtrlState};
use crate::nvme::cmd::{Sqe, Status};
use crate::nvme::fabrics::{self, CATTR_DISABLE_SQ_FLOW, Connect, cc, csts, prop};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tracing::{debug, info};

/// Connect Invalid Parameters: DW0 = IATTR (1 = in the SQE, 0 = in the data) | IPO << 16.
fn invalid_param(in_sqe: bool, offset: u16) -> Outcome {
    Outcome::Done {
        status: Status::CONNECT_INVALID_PARAMETERS,
        dw0: u32::from(in_sqe) | (u32::from(offset) << 16),
        dw1: 0,
        data: Vec::new(),
    }
}

impl TargetConn {
    pub(crate) fn connect(&mut self, sqe: &Sqe, data: &[u8]) -> Outcome {
        if data.len() < fabrics::CONNECT_DATA_LEN {
            return Outcome::status(Status::SGL_LENGTH_INVALID);
        }
        let c = Connect::from_sqe(sqe, data);
        if c.recfmt != 0 {
            return Outcome::status(Status::CONNECT_INCOMPATIBLE_FORMAT);
        }
        let cfg = self.target.cfg.clone();
        let qsize = u32::from(c.sqsize) + 1;
        if c.sqsize == 0 || qsize > u32::from(cfg.max_queue_size) {
            return invalid_param(true, fabrics::CONNECT_SQE_SQSIZE);
        }
        let mut st = self.target.lock();
        let Some(sub) = st.subsystems.get(&c.subnqn).cloned() else {
            return invalid_param(false, fabrics::CONNECT_DATA_SUBNQN);
        };
        if !sub.host_allowed(&c.hostnqn) {
            return Outcome::status(Status::CONNECT_INVALID_HOST);
        }
        let ctrl = if c.qid == 0 {
            if c.cntlid != 0xFFFF {
                return invalid_param(false, fabrics::CONNECT_DATA_CNTLID);
            }
            // Dynamic controller model: pick a free ID in 1..=0xFFEF.
            let mut id = st.next_cntlid;
            let mut tries = 0u32;
            while st.controllers.contains_key(&id) || id == 0 || id > 0xFFEF {
                id = if id >= 0xFFEF { 1 } else { id + 1 };
                tries += 1;
                if tries > 0xFFEF {
                    return Outcome::status(Status::CONNECT_CONTROLLER_BUSY);
                }
            }
            st.next_cntlid = if id >= 0xFFEF { 1 } else { id + 1 };
            let h = Arc::new(CtrlHandle {
                cntlid: id,
                subsys: sub,
                hostnqn: c.hostnqn.clone(),
                alive: AtomicBool::new(true),
                generation: AtomicU64::new(0),
                state: std::sync::Mutex::new(CtrlState {
                    cc: 0,
                    csts: 0,
                    kato_ms: c.kato,
                    last_keepalive: self.now,
                    num_io_queues: cfg.max_io_queues,
                    io_qids: HashSet::new(),
                    aec: 0,
                    vwc_enabled: true,
                }),
            });
            st.controllers.insert(id, h.clone());
            Counters::bump(&self.target.counters.controllers);
            info!(cntlid = id, subnqn = %c.subnqn, hostnqn = %c.hostnqn, "controller created");
            h
        } else {
            let Some(h) = st.controllers.get(&c.cntlid).cloned() else {
                return invalid_param(false, fabrics::CONNECT_DATA_CNTLID);
            };
            if h.subsys.nqn != c.subnqn || h.hostnqn != c.hostnqn {
                return invalid_param(false, fabrics::CONNECT_DATA_CNTLID);
            }
            if h.subsys.discovery {
                return invalid_param(true, fabrics::CONNECT_SQE_QID);
            }
            let mut cs = h.lock();
            if cs.csts & csts::RDY == 0 {
                return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
            }
            if c.qid > cs.num_io_queues || !cs.io_qids.insert(c.qid) {
                return invalid_param(true, fabrics::CONNECT_SQE_QID);
            }
            drop(cs);
            h.clone()
        };
        drop(st);
        let generation = ctrl.generation.load(Ordering::Acquire);
        let cntlid = ctrl.cntlid;
        self.q = Some(QueueCtx {
            qid: c.qid,
            ctrl,
            generation,
            qsize: qsize as u16,
            sqhd: 0,
            sq_flow_disabled: c.cattr & CATTR_DISABLE_SQ_FLOW != 0,
        });
        let icd = if c.qid == 0 {
            cfg.admin_in_capsule_data
        } else {
            cfg.in_capsule_data
        };
        self.set_capsule_limit(icd as usize);
        debug!(cntlid, qid = c.qid, qsize, "queue connected");
        Outcome::ok_dw0(u32::from(cntlid))
    }

    pub(crate) fn property(&mut self, sqe: &Sqe) -> Outcome {
        let Some(q) = &self.q else {
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        };
        let ctrl = q.ctrl.clone();
        let (size8, ofst, value) = fabrics::property_fields(sqe);
        let get = sqe.fctype() == fabrics::fctype::PROPERTY_GET;
        let cfg = &self.target.cfg;
        let mut st = ctrl.lock();
        if get {
            let v: u64 = match (ofst, size8) {
                (prop::CAP, true) => fabrics::cap_value(cfg.max_queue_size.saturating_sub(1), 20),
                (prop::VS, false) => u64::from(fabrics::VS_1_3),
                (prop::CC, false) => u64::from(st.cc),
                (prop::CSTS, false) => u64::from(st.csts),
                _ => return Outcome::status(Status::INVALID_FIELD),
            };
            return Outcome::Done {
                status: Status::SUCCESS,
                dw0: v as u32,
                dw1: (v >> 32) as u32,
                data: Vec::new(),
            };
        }
        match (ofst, size8) {
            (prop::CC, false) => {
                let new = value as u32;
                let old = st.cc;
                st.cc = new;
                if new & cc::EN != 0 && old & cc::EN == 0 {
                    // Only 4 KiB pages, 64/16-byte entries and the NVM command set exist here.
                    let mps = (new >> 7) & 0xF;
                    let css = (new >> 4) & 7;
                    if mps != 0 || css != 0 {
                        st.csts |= csts::CFS;
                    } else {
                        st.csts |= csts::RDY;
                    }
                } else if new & cc::EN == 0 && old & cc::EN != 0 {
                    // Controller reset: the I/O queues are deleted.
                    st.csts &= !(csts::RDY | csts::SHST_MASK | csts::CFS);
                    st.io_qids.clear();
                    ctrl.generation.fetch_add(1, Ordering::AcqRel);
                    info!(cntlid = ctrl.cntlid, "controller reset");
                }
                if new & cc::SHN_MASK != 0 {
                    // Nothing is cached above the backends; shutdown completes at once.
                    st.csts = (st.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
                } else if old & cc::SHN_MASK != 0 {
                    st.csts &= !csts::SHST_MASK;
                }
                Outcome::status(Status::SUCCESS)
            }
            (prop::NSSR, false) => Outcome::status(Status::INVALID_FIELD),
            _ => Outcome::status(Status::INVALID_FIELD),
        }
    }
}
