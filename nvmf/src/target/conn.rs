//! One host connection (one queue) on the target, sans-I/O: the driver feeds received
//! bytes, timer ticks and backend completions; it collects bytes to send and I/O requests.
//! A protocol violation queues a C2HTermReq and closes the connection; nothing here
//! panics on network input and every buffer is bounded by the negotiated limits.

use super::TxBatch;
use super::backend::{IoRequest, IoResult, NsError};
use super::stats::Counters;
use super::subsystem::{CtrlHandle, Target};
use crate::nvme::cmd::{Cqe, Sqe, Status, admin};
use crate::nvme::fabrics::{self, fctype};
use crate::pdu::{self, DecodeError, Decoder, DecoderCfg, Fes, IcResp, Pdu, WireCfg};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How often a connection re-checks its controller (alive, not reset).
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// A host that connects but never completes Connect is dropped after this long.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitIcReq,
    Running,
    Closed,
}

pub(crate) struct QueueCtx {
    pub qid: u16,
    pub ctrl: Arc<CtrlHandle>,
    pub generation: u64,
    /// Queue size (sqsize + 1).
    pub qsize: u16,
    pub sqhd: u16,
    pub sq_flow_disabled: bool,
}

pub(crate) enum Cmd {
    /// Waiting for H2CData after our R2T.
    AwaitData {
        sqe: Sqe,
        buf: Vec<u8>,
        received: usize,
        ttag: u16,
    },
    /// Handed to the backend; `read_len` bytes come back for reads.
    Running { read_len: usize },
    /// An Asynchronous Event Request, held until an event (or the end of the association).
    HeldAer,
}

/// What a command's execution produced.
pub(crate) enum Outcome {
    Done {
        status: Status,
        dw0: u32,
        dw1: u32,
        data: Vec<u8>,
    },
    /// The command now waits (an AER, or I/O on the backend).
    Pending,
}

impl Outcome {
    pub fn status(s: Status) -> Self {
        Outcome::Done {
            status: s,
            dw0: 0,
            dw1: 0,
            data: Vec::new(),
        }
    }
    pub fn ok_dw0(dw0: u32) -> Self {
        Outcome::Done {
            status: Status::SUCCESS,
            dw0,
            dw1: 0,
            data: Vec::new(),
        }
    }
    pub fn data(data: Vec<u8>) -> Self {
        Outcome::Done {
            status: Status::SUCCESS,
            dw0: 0,
            dw1: 0,
            data,
        }
    }
}

pub struct TargetConn {
    pub(crate) target: Arc<Target>,
    state: State,
    dec: Decoder,
    rx: Vec<u8>,
    pub(crate) tx: TxBatch,
    /// Read data is spliced into the output rather than copied ([`Self::set_gather`]).
    gather: bool,
    pub(crate) wire: WireCfg,
    pub(crate) q: Option<QueueCtx>,
    pub(crate) cmds: HashMap<u16, Cmd>,
    pub(crate) ios: VecDeque<IoRequest>,
    pub(crate) tags: HashMap<u64, u16>,
    pub(crate) next_tag: u64,
    pub(crate) next_ttag: u16,
    pub(crate) now: Instant,
    created: Instant,
    last_check: Instant,
    close_reason: Option<String>,
    /// Set by a Disconnect command: close once the response is out.
    close_after_flush: bool,
}

impl TargetConn {
    pub fn new(target: Arc<Target>, now: Instant) -> Self {
        let cfg = &target.cfg;
        let icd = cfg.in_capsule_data.max(cfg.admin_in_capsule_data) as usize;
        let dec = Decoder::new(DecoderCfg::controller(icd, cfg.maxh2cdata as usize));
        Self {
            target,
            state: State::AwaitIcReq,
            dec,
            rx: Vec::new(),
            tx: TxBatch::default(),
            gather: false,
            wire: WireCfg::default(),
            q: None,
            cmds: HashMap::new(),
            ios: VecDeque::new(),
            tags: HashMap::new(),
            next_tag: 1,
            next_ttag: 0,
            now,
            created: now,
            last_check: now,
            close_reason: None,
            close_after_flush: false,
        }
    }

    /// Feeds received bytes.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.now = now;
        if self.state == State::Closed {
            return;
        }
        self.rx.extend_from_slice(data);
        let mut off = 0;
        while self.state != State::Closed {
            let rest = self.rx.get(off..).unwrap_or(&[]);
            match self.dec.decode(rest) {
                Ok(Some((pdu, n))) => {
                    off += n;
                    self.handle_pdu(pdu);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fatal(e);
                    break;
                }
            }
        }
        if self.state == State::Closed {
            self.rx = Vec::new();
        } else {
            self.rx.drain(..off.min(self.rx.len()));
        }
    }

    /// Bytes to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.tx.is_empty() {
            if self.close_after_flush {
                self.close("host disconnected");
            }
            return None;
        }
        Some(self.tx.flatten())
    }

    /// Hands the bytes to send over by swapping them with `out`, which must be empty (the
    /// driver's buffer whose previous contents are all sent). Unlike
    /// [`Self::poll_transmit`] this neither allocates nor copies once the two buffers have
    /// grown: the connection keeps encoding into the vector it got back, so responses
    /// produced while a send is in flight gather there for the next one.
    pub fn transmit_into(&mut self, out: &mut Vec<u8>) {
        if self.tx.is_empty() {
            if self.close_after_flush {
                self.close("host disconnected");
            }
            return;
        }
        if self.gather {
            *out = self.tx.flatten();
            return;
        }
        out.clear();
        std::mem::swap(out, self.tx.bytes_mut());
    }

    /// Read data goes out from its own buffer: the driver sends with
    /// [`Self::transmit_gather`] (and `complete_io_keep` no longer hands buffers back:
    /// [`TxBatch::clear`] does once they are sent).
    pub fn set_gather(&mut self, on: bool) {
        self.gather = on;
    }

    /// As [`Self::transmit_into`] for a gather send: `out` (empty, all of it sent) and
    /// the connection's output trade places.
    pub fn transmit_gather(&mut self, out: &mut TxBatch) {
        if self.tx.is_empty() {
            if self.close_after_flush {
                self.close("host disconnected");
            }
            return;
        }
        out.clear(drop);
        self.tx.swap(out);
    }

    /// Bytes queued for sending and not yet handed to the driver.
    pub fn pending_transmit(&self) -> usize {
        self.tx.len()
    }

    /// The next I/O request for the driver to hand to its backend.
    pub fn poll_io(&mut self) -> Option<IoRequest> {
        self.ios.pop_front()
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn close_reason(&self) -> Option<&str> {
        self.close_reason.as_deref()
    }

    /// The queue this connection serves, once connected.
    pub fn qid(&self) -> Option<u16> {
        self.q.as_ref().map(|q| q.qid)
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.last_check + CHECK_INTERVAL;
        match &self.q {
            None => t = t.min(self.created + CONNECT_DEADLINE),
            Some(q) if q.qid == 0 => {
                let st = q.ctrl.lock();
                if st.kato_ms != 0 {
                    t = t.min(st.last_keepalive + Duration::from_millis(u64::from(st.kato_ms)));
                }
            }
            Some(_) => {}
        }
        Some(t)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.state == State::Closed {
            return;
        }
        self.last_check = now;
        let Some(q) = &self.q else {
            if now >= self.created + CONNECT_DEADLINE {
                self.close("no Connect in time");
            }
            return;
        };
        let ctrl = q.ctrl.clone();
        if q.qid == 0 {
            let expired = {
                let mut st = ctrl.lock();
                let kato = Duration::from_millis(u64::from(st.kato_ms));
                let expired = st.kato_ms != 0 && now >= st.last_keepalive + kato;
                if expired {
                    st.csts |= fabrics::csts::CFS;
                }
                expired
            };
            if expired {
                warn!(cntlid = ctrl.cntlid, "keep alive timeout: controller ends");
                Counters::bump(&self.target.counters.keep_alive_timeouts);
                self.end_controller();
                self.close("keep alive timeout");
                return;
            }
        }
        if !ctrl.is_alive() {
            self.close("controller ended");
        } else if q.qid != 0 && ctrl.generation.load(Ordering::Acquire) != q.generation {
            self.close("controller reset");
        }
    }

    /// Delivers a backend completion.
    pub fn complete_io(&mut self, tag: u64, res: IoResult) {
        drop(self.complete_io_keep(tag, res));
    }

    /// As [`Self::complete_io`], and hands back the read data's buffer once its bytes are
    /// queued for sending, so that a driver can reuse the allocation for the next read.
    pub fn complete_io_keep(&mut self, tag: u64, res: IoResult) -> Option<Vec<u8>> {
        let cid = self.tags.remove(&tag)?;
        let Some(Cmd::Running { read_len }) = self.cmds.remove(&cid) else {
            return None;
        };
        if self.state == State::Closed {
            return None;
        }
        match res {
            Ok(data) if read_len > 0 => {
                if data.len() != read_len {
                    self.respond(cid, Status::INTERNAL_ERROR, 0, 0);
                } else if self.gather {
                    self.respond_data_spliced(cid, data, 0);
                    return None;
                } else {
                    self.respond_data(cid, &data, 0);
                }
                Some(data)
            }
            Ok(_) => {
                self.respond(cid, Status::SUCCESS, 0, 0);
                None
            }
            Err(e) => {
                let s = match e {
                    NsError::Io if read_len > 0 => Status::UNRECOVERED_READ_ERROR,
                    NsError::Io => Status::WRITE_FAULT,
                    NsError::OutOfRange => Status::LBA_OUT_OF_RANGE,
                    NsError::NotReady => Status::NAMESPACE_NOT_READY,
                    NsError::NoSpace => Status::CAPACITY_EXCEEDED,
                    NsError::Internal => Status::INTERNAL_ERROR,
                };
                self.respond(cid, s, 0, 0);
                None
            }
        }
    }

    pub(crate) fn close(&mut self, reason: &str) {
        if self.state != State::Closed {
            debug!(reason, qid = ?self.qid(), "target connection closes");
            self.state = State::Closed;
            self.close_reason = Some(reason.to_string());
            self.ios.clear();
        }
    }

    fn fatal(&mut self, e: DecodeError) {
        warn!(fes = ?e.fes, fei = e.fei, reason = e.reason, "terminating connection");
        self.term(e.fes, e.fei, &e.header.clone(), e.reason);
    }

    pub(crate) fn term(&mut self, fes: Fes, fei: u32, header: &[u8], reason: &str) {
        pdu::encode_term_req(self.tx.bytes_mut(), false, fes, fei, header);
        Counters::bump(&self.target.counters.term_reqs);
        self.close(reason);
    }

    fn handle_pdu(&mut self, p: Pdu) {
        match p {
            Pdu::IcReq(r) => {
                let cfg = &self.target.cfg;
                pdu::encode_ic_resp(
                    self.tx.bytes_mut(),
                    &IcResp {
                        pfv: 0,
                        cpda: 0,
                        hdgst: r.hdgst,
                        ddgst: r.ddgst,
                        maxh2cdata: cfg.maxh2cdata,
                    },
                );
                self.wire = WireCfg {
                    hdgst: r.hdgst,
                    ddgst: r.ddgst,
                    pda: r.hpda,
                };
                let c = &self.target.counters;
                Counters::bump(&c.connections);
                if r.hdgst {
                    Counters::bump(&c.hdgst_connections);
                }
                if r.ddgst {
                    Counters::bump(&c.ddgst_connections);
                }
                self.dec.cfg.ic_done = true;
                self.dec.cfg.hdgst = r.hdgst;
                self.dec.cfg.ddgst = r.ddgst;
                self.state = State::Running;
            }
            Pdu::H2CTermReq(t) => {
                warn!(fes = t.fes, fei = t.fei, "host terminated the connection");
                self.close("host sent H2CTermReq");
            }
            Pdu::CapsuleCmd(c) => self.on_capsule(Sqe::parse(&c.sqe), c.data),
            Pdu::H2CData(d) => self.on_h2c_data(d),
            // The decoder only lets host PDUs through.
            _ => self.close("unexpected PDU"),
        }
    }

    pub(crate) fn execute(&mut self, sqe: Sqe, data: Vec<u8>) {
        let cid = sqe.cid;
        let outcome = if sqe.opcode == admin::FABRICS {
            self.fabrics(&sqe, &data)
        } else {
            match self.q.as_ref().map(|q| q.qid) {
                None => Outcome::status(Status::COMMAND_SEQUENCE_ERROR),
                Some(0) => self.admin(&sqe),
                Some(_) => self.io(&sqe, data),
            }
        };
        match outcome {
            Outcome::Done {
                status,
                dw0,
                dw1,
                data,
            } => {
                if status.is_success() && !data.is_empty() {
                    // Send no more than the host's buffer holds.
                    let n = data.len().min(sqe.dptr.len as usize);
                    self.respond_data(cid, data.get(..n).unwrap_or(&[]), dw0);
                } else {
                    self.respond(cid, status, dw0, dw1);
                }
            }
            Outcome::Pending => {}
        }
    }

    fn fabrics(&mut self, sqe: &Sqe, data: &[u8]) -> Outcome {
        match sqe.fctype() {
            fctype::CONNECT if self.q.is_none() => self.connect(sqe, data),
            fctype::CONNECT => Outcome::status(Status::COMMAND_SEQUENCE_ERROR),
            fctype::PROPERTY_GET | fctype::PROPERTY_SET => match self.q.as_ref().map(|q| q.qid) {
                Some(0) => self.property(sqe),
                Some(_) => Outcome::status(Status::INVALID_FIELD),
                None => Outcome::status(Status::COMMAND_SEQUENCE_ERROR),
            },
            fctype::DISCONNECT => {
                self.close_after_flush = true;
                Outcome::status(Status::SUCCESS)
            }
            _ => Outcome::status(Status::INVALID_OPCODE),
        }
    }

    pub(crate) fn send_resp(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32) {
        let (sqhd, sqid) = self.q.as_ref().map(|q| (q.sqhd, q.qid)).unwrap_or((0, 0));
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd,
            sqid,
            cid,
            status,
        };
        pdu::encode_capsule_resp(self.tx.bytes_mut(), &cqe.encode(), &self.wire);
    }

    /// Completes a command (dropping its state) with a CapsuleResp.
    pub(crate) fn respond(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32) {
        self.cmds.remove(&cid);
        self.send_resp(cid, status, dw0, dw1);
    }

    /// Sends data in C2HData chunks, then the completion (or SUCCESS on the last chunk
    /// when the host disabled SQ flow control, which is the only time that is allowed).
    pub(crate) fn respond_data(&mut self, cid: u16, data: &[u8], dw0: u32) {
        let wire = self.wire;
        self.respond_chunks(cid, data.len(), dw0, |tx, cid, off, r, last, success| {
            let c = data.get(r).unwrap_or(&[]);
            pdu::encode_c2h_data(tx.bytes_mut(), cid, off, c, last, success, &wire);
        });
    }

    /// As [`Self::respond_data`], with `data` spliced into the output, not copied.
    fn respond_data_spliced(&mut self, cid: u16, data: Vec<u8>, dw0: u32) {
        let (wire, len) = (self.wire, data.len());
        let buf = self.tx.add_buf(data);
        self.respond_chunks(cid, len, dw0, |tx, cid, off, r, last, success| {
            tx.encode_spliced(buf, r, |out, c| {
                pdu::encode_c2h_data_header(out, cid, off, c, last, success, &wire)
            });
        });
    }

    fn respond_chunks(
        &mut self,
        cid: u16,
        len: usize,
        dw0: u32,
        mut emit: impl FnMut(&mut TxBatch, u16, u32, std::ops::Range<usize>, bool, bool),
    ) {
        self.cmds.remove(&cid);
        let chunk = (self.target.cfg.c2h_chunk as usize).max(4096);
        let success = self.target.cfg.c2h_success
            && dw0 == 0
            && self.q.as_ref().is_some_and(|q| q.sq_flow_disabled);
        let n = len.div_ceil(chunk);
        for i in 0..n {
            let last = i + 1 == n;
            let off = u32::try_from(i * chunk).unwrap_or(u32::MAX);
            let r = i * chunk..((i + 1) * chunk).min(len);
            emit(&mut self.tx, cid, off, r, last, success && last);
            Counters::bump(&self.target.counters.c2h_data_pdus);
        }
        if success && n > 0 {
            Counters::bump(&self.target.counters.c2h_success);
        }
        if !success {
            self.send_resp(cid, Status::SUCCESS, dw0, 0);
        }
    }

    pub(crate) fn set_capsule_limit(&mut self, n: usize) {
        self.dec.cfg.max_capsule_data = n;
    }

    /// Ends this connection's controller (admin queue gone or keep alive expired).
    pub(crate) fn end_controller(&mut self) {
        if let Some(q) = &self.q {
            q.ctrl.alive.store(false, Ordering::Release);
            let mut st = self.target.lock();
            if st
                .controllers
                .get(&q.ctrl.cntlid)
                .is_some_and(|c| Arc::ptr_eq(c, &q.ctrl))
            {
                st.controllers.remove(&q.ctrl.cntlid);
            }
        }
    }
}

impl Drop for TargetConn {
    fn drop(&mut self) {
        match self.q.as_ref().map(|q| q.qid) {
            Some(0) => self.end_controller(),
            Some(qid) => {
                if let Some(q) = &self.q {
                    q.ctrl.lock().io_qids.remove(&qid);
                }
            }
            None => {}
        }
    }
}
