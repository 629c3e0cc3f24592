//! One host queue pair (one TCP connection) of the initiator, sans-I/O: submit commands
//! with their data, feed received bytes, collect bytes to send and completion events.
//! R2T is answered here (H2CData split by the controller's MAXH2CDATA) and C2HData is
//! reassembled into the command's read buffer, strictly in order and within bounds.

use crate::nvme::cmd::{Cqe, Sgl, Sqe, Status, admin, flags};
use crate::pdu::{self, DecodeError, Decoder, DecoderCfg, Fes, IcReq, Pdu, WireCfg, fei};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone)]
pub struct HostQueueConfig {
    pub hdgst: bool,
    pub ddgst: bool,
    /// Largest read we will ever ask for: bounds what one C2HData may carry.
    pub max_transfer: usize,
    /// Queue depth: commands outstanding at once.
    pub depth: u16,
}

impl Default for HostQueueConfig {
    fn default() -> Self {
        Self {
            hdgst: false,
            ddgst: false,
            max_transfer: 1024 * 1024,
            depth: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue full")]
    Busy,
    #[error("queue not connected yet")]
    NotReady,
    #[error("queue failed: {0}")]
    Failed(String),
    #[error("transfer too large")]
    TooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// ICResp arrived: commands may be submitted.
    Ready,
    /// A command finished; `data` is what the controller sent for reads.
    Completion { cid: u16, cqe: Cqe, data: Vec<u8> },
    /// The connection is unusable; every outstanding command is lost.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitIcResp,
    Running,
    Failed,
}

struct HostCmd {
    /// Data still owed to the controller (for R2T).
    write: Bytes,
    read: Vec<u8>,
    received: usize,
}

pub struct HostQueue {
    cfg: HostQueueConfig,
    state: State,
    dec: Decoder,
    rx: Vec<u8>,
    tx: Vec<u8>,
    wire: WireCfg,
    maxh2cdata: usize,
    icd_limit: usize,
    cmds: HashMap<u16, HostCmd>,
    next_cid: u16,
    events: VecDeque<HostEvent>,
}

impl HostQueue {
    /// A new queue; the ICReq is queued for sending at once.
    pub fn new(cfg: HostQueueConfig) -> Self {
        let dec = Decoder::new(DecoderCfg::host(cfg.max_transfer.max(4096)));
        let mut q = Self {
            state: State::AwaitIcResp,
            dec,
            rx: Vec::new(),
            tx: Vec::new(),
            wire: WireCfg::default(),
            maxh2cdata: 4096,
            // Until Identify says otherwise: 8 KiB, which covers Connect's 1 KiB.
            icd_limit: 8192,
            cmds: HashMap::new(),
            next_cid: 0,
            events: VecDeque::new(),
            cfg,
        };
        let req = IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: q.cfg.hdgst,
            ddgst: q.cfg.ddgst,
            maxr2t: 0,
        };
        pdu::encode_ic_req(&mut q.tx, &req);
        q
    }

    /// In-capsule data the controller accepts on this queue (from IOCCSZ for I/O queues).
    pub fn set_in_capsule_limit(&mut self, n: usize) {
        self.icd_limit = n;
    }

    pub fn maxh2cdata(&self) -> usize {
        self.maxh2cdata
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Running
    }

    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    pub fn outstanding(&self) -> usize {
        self.cmds.len()
    }

    pub fn has_room(&self) -> bool {
        self.cmds.len() < usize::from(self.cfg.depth.max(1))
    }

    /// Submits a command. `write` is data to the controller (in the capsule when small
    /// enough, else on R2T); `read_len` is how much the controller returns. Returns the CID.
    pub fn submit(
        &mut self,
        mut sqe: Sqe,
        write: Bytes,
        read_len: usize,
    ) -> Result<u16, QueueError> {
        match self.state {
            State::AwaitIcResp => return Err(QueueError::NotReady),
            State::Failed => return Err(QueueError::Failed("queue failed".into())),
            State::Running => {}
        }
        if !self.has_room() {
            return Err(QueueError::Busy);
        }
        if read_len > self.cfg.max_transfer || write.len() > u32::MAX as usize {
            return Err(QueueError::TooLarge);
        }
        let mut cid = self.next_cid;
        while self.cmds.contains_key(&cid) {
            cid = cid.wrapping_add(1);
        }
        self.next_cid = cid.wrapping_add(1);
        sqe.cid = cid;
        sqe.flags = (sqe.flags & !flags::PSDT_MASK) | flags::PSDT_SGL_MPTR_CONTIG;
        // Fabrics commands always carry their data in the capsule.
        let in_capsule =
            !write.is_empty() && (write.len() <= self.icd_limit || sqe.opcode == admin::FABRICS);
        let (capsule_data, owed) = if in_capsule {
            sqe.dptr = Sgl::in_capsule(write.len() as u32);
            (write, Bytes::new())
        } else if !write.is_empty() {
            sqe.dptr = Sgl::transport(write.len() as u32);
            (Bytes::new(), write)
        } else {
            sqe.dptr = Sgl::transport(read_len as u32);
            (Bytes::new(), Bytes::new())
        };
        pdu::encode_capsule_cmd(&mut self.tx, &sqe.encode(), &capsule_data, &self.wire);
        self.cmds.insert(
            cid,
            HostCmd {
                write: owed,
                read: vec![0u8; read_len],
                received: 0,
            },
        );
        Ok(cid)
    }

    pub fn handle_input(&mut self, data: &[u8]) {
        if self.state == State::Failed {
            return;
        }
        self.rx.extend_from_slice(data);
        let mut off = 0;
        while self.state != State::Failed {
            match self.dec.decode(self.rx.get(off..).unwrap_or(&[])) {
                Ok(Some((p, n))) => {
                    off += n;
                    self.handle_pdu(p);
                }
                Ok(None) => break,
                Err(e) => {
                    self.protocol_error(e);
                    break;
                }
            }
        }
        if self.state == State::Failed {
            self.rx = Vec::new();
        } else {
            self.rx.drain(..off.min(self.rx.len()));
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.tx.is_empty()).then(|| std::mem::take(&mut self.tx))
    }

    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }

    /// Marks the queue failed (socket error, timeout): outstanding commands are dropped.
    pub fn fail(&mut self, reason: &str) {
        if self.state != State::Failed {
            self.state = State::Failed;
            self.cmds.clear();
            self.events.push_back(HostEvent::Failed(reason.to_string()));
        }
    }

    fn protocol_error(&mut self, e: DecodeError) {
        tracing::warn!(fes = ?e.fes, fei = e.fei, reason = e.reason, "host terminates connection");
        self.term(e.fes, e.fei, &e.header, e.reason);
    }

    fn term(&mut self, fes: Fes, fei: u32, header: &[u8], reason: &str) {
        pdu::encode_term_req(&mut self.tx, true, fes, fei, header);
        self.fail(reason);
    }

    fn handle_pdu(&mut self, p: Pdu) {
        match p {
            Pdu::IcResp(r) => {
                if r.hdgst != self.cfg.hdgst || r.ddgst != self.cfg.ddgst {
                    self.term(
                        Fes::InvalidHeaderField,
                        11,
                        &[],
                        "controller refused digests",
                    );
                    return;
                }
                self.maxh2cdata = r.maxh2cdata as usize;
                self.wire = WireCfg {
                    hdgst: r.hdgst,
                    ddgst: r.ddgst,
                    pda: r.cpda,
                };
                self.dec.cfg.ic_done = true;
                self.dec.cfg.hdgst = r.hdgst;
                self.dec.cfg.ddgst = r.ddgst;
                self.state = State::Running;
                self.events.push_back(HostEvent::Ready);
            }
            Pdu::C2HTermReq(t) => {
                self.fail(&format!(
                    "controller sent C2HTermReq fes {} fei {}",
                    t.fes, t.fei
                ));
            }
            Pdu::CapsuleResp(r) => {
                let cqe = Cqe::parse(&r.cqe);
                let Some(cmd) = self.cmds.remove(&cqe.cid) else {
                    self.term(
                        Fes::InvalidHeaderField,
                        20,
                        &[],
                        "completion for no command",
                    );
                    return;
                };
                self.events.push_back(HostEvent::Completion {
                    cid: cqe.cid,
                    cqe,
                    data: cmd.read,
                });
            }
            Pdu::C2HData(d) => self.on_c2h(d),
            Pdu::R2T(r) => self.on_r2t(r),
            _ => self.fail("unexpected PDU"),
        }
    }

    fn on_c2h(&mut self, d: pdu::C2HData) {
        let Some(cmd) = self.cmds.get_mut(&d.cccid) else {
            self.term(
                Fes::UnsupportedParameter,
                fei::CCCID,
                &[],
                "C2HData for no command",
            );
            return;
        };
        let off = d.datao as usize;
        if off != cmd.received {
            self.term(Fes::DataOutOfRange, fei::DATAO, &[], "C2HData out of order");
            return;
        }
        let Some(dst) = off
            .checked_add(d.data.len())
            .and_then(|e| cmd.read.get_mut(off..e))
        else {
            self.term(
                Fes::DataOutOfRange,
                fei::DATAL,
                &[],
                "C2HData beyond the command",
            );
            return;
        };
        dst.copy_from_slice(&d.data);
        cmd.received += d.data.len();
        if d.success {
            // SUCCESS replaces the CapsuleResp: the command completed without error.
            if let Some(cmd) = self.cmds.remove(&d.cccid) {
                let cqe = Cqe {
                    cid: d.cccid,
                    status: Status::SUCCESS,
                    ..Cqe::default()
                };
                self.events.push_back(HostEvent::Completion {
                    cid: d.cccid,
                    cqe,
                    data: cmd.read,
                });
            }
        }
    }

    fn on_r2t(&mut self, r: pdu::R2T) {
        let Some(cmd) = self.cmds.get(&r.cccid) else {
            self.term(
                Fes::UnsupportedParameter,
                fei::CCCID,
                &[],
                "R2T for no command",
            );
            return;
        };
        let start = r.r2to as usize;
        let Some(end) = start
            .checked_add(r.r2tl as usize)
            .filter(|&e| e <= cmd.write.len() && r.r2tl > 0)
        else {
            self.term(
                Fes::DataOutOfRange,
                12,
                &[],
                "R2T beyond the command's data",
            );
            return;
        };
        let chunk = self.maxh2cdata.max(4096);
        let mut off = start;
        while off < end {
            let n = chunk.min(end - off);
            let last = off + n == end;
            let data = cmd.write.get(off..off + n).unwrap_or(&[]);
            pdu::encode_h2c_data(
                &mut self.tx,
                r.cccid,
                r.ttag,
                off as u32,
                data,
                last,
                &self.wire,
            );
            off += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::IcResp;

    /// Regression (Linux nvmet rejected our Connect with Invalid Field): every command the
    /// host sends says PSDT 01b (SGL, contiguous MPTR), whatever flags the caller set.
    #[test]
    fn commands_carry_psdt_sgl() {
        let mut q = HostQueue::new(HostQueueConfig::default());
        q.poll_transmit();
        let mut resp = Vec::new();
        pdu::encode_ic_resp(
            &mut resp,
            &IcResp {
                pfv: 0,
                cpda: 0,
                hdgst: false,
                ddgst: false,
                maxh2cdata: 8192,
            },
        );
        q.handle_input(&resp);
        assert!(q.is_ready());
        let mut sqe = Sqe::new(admin::FABRICS);
        sqe.flags = 0x80;
        q.submit(sqe, Bytes::from(vec![0u8; 1024]), 0).unwrap();
        q.submit(Sqe::new(admin::KEEP_ALIVE), Bytes::new(), 0)
            .unwrap();
        let out = q.poll_transmit().unwrap();
        let second = usize::from(out[3]).max(72) + 1024;
        assert_eq!(out[pdu::CH_LEN + 1] & flags::PSDT_MASK, 0x40);
        assert_eq!(out[second + pdu::CH_LEN + 1] & flags::PSDT_MASK, 0x40);
    }
}
