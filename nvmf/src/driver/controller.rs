//! The initiator's controller: the admin queue bring-up (Connect, CC.EN, Identify, number
//! of queues, namespaces), the I/O queues, keep alive, and SPDK-style reconnects. I/O is
//! async and runtime-agnostic (futures woken from the reader threads); [`Blocking`] wraps it.

use super::Error;
use super::block_on::{block_on, block_on_timeout};
use super::qpair::QPair;
use crate::host::{HostQueueConfig, LinkState, Reconnect, ReconnectOpts};
use crate::nvme::cmd::{Cqe, DsmRange, Sqe, admin, io};
use crate::nvme::fabrics::{self, CATTR_DISABLE_SQ_FLOW, Connect, DISCOVERY_NQN, cc, csts, prop};
use crate::nvme::identify::{self, ControllerData, NamespaceData, cns, nidt};
use crate::nvme::log::{self, DiscoveryEntry};
use bytes::Bytes;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub hdgst: bool,
    pub ddgst: bool,
    pub io_queues: u16,
    /// Entries per I/O queue (the queue depth); capped by CAP.MQES.
    pub queue_size: u16,
    /// Keep alive timeout; zero disables keep alive.
    pub kato: Duration,
    pub reconnect: ReconnectOpts,
    pub hostid: [u8; 16],
    /// Bound on each step of the bring-up.
    pub connect_timeout: Duration,
    /// Largest read the host asks for in one command.
    pub max_transfer: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            hdgst: false,
            ddgst: false,
            io_queues: 1,
            queue_size: 32,
            kato: Duration::from_secs(10),
            reconnect: ReconnectOpts::default(),
            hostid: [0x11; 16],
            connect_timeout: Duration::from_secs(5),
            max_transfer: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub num_blocks: u64,
    pub block_size: u32,
    pub nguid: Option<[u8; 16]>,
    pub uuid: Option<[u8; 16]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    pub cntlid: u16,
    pub data: ControllerData,
    pub namespaces: Vec<NamespaceInfo>,
    /// Volatile write cache present (Flush is meaningful).
    pub vwc: bool,
    pub io_queues: usize,
    pub queue_size: u16,
    /// Largest transfer per command (from MDTS, capped by the options).
    pub max_transfer: usize,
}

impl ControllerInfo {
    pub fn namespace(&self, nsid: u32) -> Option<&NamespaceInfo> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
    }
}

struct Session {
    admin: Arc<QPair>,
    io: Vec<Arc<QPair>>,
    info: ControllerInfo,
}

impl Session {
    fn fail(&self, reason: &str) {
        self.admin.fail(reason);
        for q in &self.io {
            q.fail(reason);
        }
    }
    fn any_failed(&self) -> bool {
        self.admin.is_failed() || self.io.iter().any(|q| q.is_failed())
    }
}

struct St {
    session: Option<Arc<Session>>,
    rc: Reconnect,
    waiters: Vec<Waker>,
    rr: usize,
    info: ControllerInfo,
}

struct Shared {
    addr: SocketAddr,
    subnqn: String,
    hostnqn: String,
    opts: ConnectOptions,
    st: Mutex<St>,
    stop: AtomicBool,
    reconnects: AtomicU64,
    supervisor: Mutex<Option<Thread>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_supervisor(&self) {
        if let Some(t) = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }

    /// Marks the association lost: the session's queues fail and reconnecting begins.
    fn lost(&self, reason: &str) {
        let old = {
            let mut st = self.lock();
            if st.rc.state == LinkState::Connected {
                st.rc.lost(Instant::now());
            }
            st.session.take()
        };
        if let Some(s) = old {
            warn!(subnqn = %self.subnqn, reason, "controller connection lost");
            s.fail(reason);
        }
        self.wake_supervisor();
    }

    fn wake_all(&self) {
        let w = std::mem::take(&mut self.lock().waiters);
        for w in w {
            w.wake();
        }
    }
}

/// A connected NVMe-oF controller with its I/O queues.
pub struct Controller {
    shared: Arc<Shared>,
}

fn run<F: Future<Output = Result<T, Error>>, T>(
    f: F,
    t: Duration,
    what: &'static str,
) -> Result<T, Error> {
    block_on_timeout(f, t).unwrap_or(Err(Error::Timeout(what)))
}

fn cmd(
    qp: &Arc<QPair>,
    sqe: Sqe,
    write: Vec<u8>,
    read_len: usize,
    t: Duration,
    what: &'static str,
) -> Result<(Cqe, Vec<u8>), Error> {
    let (cqe, data) = run(qp.exec(sqe, Bytes::from(write), read_len), t, what)?;
    if !cqe.status.is_success() {
        return Err(Error::Status(cqe.status));
    }
    Ok((cqe, data))
}

fn queue_cfg(o: &ConnectOptions, depth: u16) -> HostQueueConfig {
    HostQueueConfig {
        hdgst: o.hdgst,
        ddgst: o.ddgst,
        max_transfer: o.max_transfer.max(4096),
        depth,
    }
}

fn connect_queue(
    addr: SocketAddr,
    o: &ConnectOptions,
    c: &Connect,
    depth: u16,
) -> Result<(Arc<QPair>, u16), Error> {
    let t = o.connect_timeout;
    let qp = QPair::connect(addr, queue_cfg(o, depth), t)?;
    run(qp.ready(), t, "ICResp")?;
    let (sqe, data) = c.to_sqe();
    let (cqe, _) = run(qp.exec(sqe, Bytes::from(data), 0), t, "Connect")?;
    if !cqe.status.is_success() {
        return Err(Error::Connect(cqe.status));
    }
    Ok((qp, (cqe.dw0 & 0xFFFF) as u16))
}

/// The whole bring-up of one association.
fn establish(
    addr: SocketAddr,
    subnqn: &str,
    hostnqn: &str,
    o: &ConnectOptions,
) -> Result<Session, Error> {
    let t = o.connect_timeout;
    let mut c = Connect {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: CATTR_DISABLE_SQ_FLOW,
        kato: u32::try_from(o.kato.as_millis()).unwrap_or(u32::MAX),
        hostid: o.hostid,
        cntlid: 0xFFFF,
        subnqn: subnqn.to_string(),
        hostnqn: hostnqn.to_string(),
    };
    let (admin_q, cntlid) = connect_queue(addr, o, &c, 32)?;
    let get = |off, size8| -> Result<u64, Error> {
        Ok(cmd(
            &admin_q,
            fabrics::property_get(off, size8),
            Vec::new(),
            0,
            t,
            "Property Get",
        )?
        .0
        .result64())
    };
    let cap = get(prop::CAP, true)?;
    let cc0 = get(prop::CC, false)? as u32;
    let set_cc = |v: u32| {
        cmd(
            &admin_q,
            fabrics::property_set(prop::CC, u64::from(v), false),
            Vec::new(),
            0,
            t,
            "Property Set",
        )
    };
    let wait_rdy = |want: bool| -> Result<(), Error> {
        let limit = Duration::from_millis(fabrics::cap_timeout_ms(cap).clamp(500, 30_000));
        let start = Instant::now();
        loop {
            let s = get(prop::CSTS, false)? as u32;
            if s & csts::CFS != 0 {
                return Err(Error::Protocol("controller fatal status".into()));
            }
            if (s & csts::RDY != 0) == want {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout("CSTS.RDY"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    if cc0 & cc::EN != 0 {
        set_cc(0)?;
        wait_rdy(false)?;
    }
    set_cc(cc::EN | cc::IOSQES_IOCQES)?;
    wait_rdy(true)?;
    let (_, id) = cmd(
        &admin_q,
        identify::identify_cmd(cns::CONTROLLER, 0),
        Vec::new(),
        identify::IDENTIFY_LEN,
        t,
        "Identify",
    )?;
    let data = ControllerData::parse(&id);
    let mdts_bytes = if data.mdts == 0 {
        usize::MAX
    } else {
        4096usize
            .checked_shl(u32::from(data.mdts))
            .unwrap_or(usize::MAX)
    };
    let mut info = ControllerInfo {
        cntlid,
        vwc: data.vwc & 1 != 0,
        data,
        namespaces: Vec::new(),
        io_queues: 0,
        queue_size: 0,
        max_transfer: o.max_transfer.min(mdts_bytes),
    };
    if subnqn == DISCOVERY_NQN {
        return Ok(Session {
            admin: admin_q,
            io: Vec::new(),
            info,
        });
    }
    let want = u32::from(o.io_queues.max(1)) - 1;
    let mut sf = Sqe::new(admin::SET_FEATURES);
    sf.cdw10 = 0x07;
    sf.cdw11 = want | (want << 16);
    let (cqe, _) = cmd(&admin_q, sf, Vec::new(), 0, t, "Set Features")?;
    let granted = (cqe.dw0 & 0xFFFF).min(cqe.dw0 >> 16) + 1;
    let nq = granted.min(want + 1) as u16;
    let (_, list) = cmd(
        &admin_q,
        identify::identify_cmd(cns::ACTIVE_NS_LIST, 0),
        Vec::new(),
        identify::IDENTIFY_LEN,
        t,
        "Identify",
    )?;
    for nsid in identify::parse_ns_list(&list) {
        let (_, nd) = cmd(
            &admin_q,
            identify::identify_cmd(cns::NAMESPACE, nsid),
            Vec::new(),
            identify::IDENTIFY_LEN,
            t,
            "Identify",
        )?;
        let n = NamespaceData::parse(&nd);
        let mut ni = NamespaceInfo {
            nsid,
            num_blocks: n.nsze,
            block_size: n.block_size(),
            nguid: None,
            uuid: None,
        };
        // Descriptors are optional (SPDK tolerates their absence too).
        if let Ok((_, dd)) = cmd(
            &admin_q,
            identify::identify_cmd(cns::NS_DESCRIPTORS, nsid),
            Vec::new(),
            identify::IDENTIFY_LEN,
            t,
            "Identify",
        ) {
            for (ty, v) in identify::parse_ns_descriptors(&dd) {
                let arr: Option<[u8; 16]> = v.as_slice().try_into().ok();
                match ty {
                    nidt::NGUID => ni.nguid = arr,
                    nidt::UUID => ni.uuid = arr,
                    _ => {}
                }
            }
        }
        if ni.block_size >= 512 {
            info.namespaces.push(ni);
        }
    }
    let qsize = o
        .queue_size
        .max(2)
        .min(fabrics::cap_mqes(cap).saturating_add(1));
    let icd = (info.data.ioccsz as usize * 16).saturating_sub(64);
    let mut ios = Vec::new();
    for qid in 1..=nq {
        c.qid = qid;
        c.sqsize = qsize - 1;
        c.kato = 0;
        c.cntlid = cntlid;
        let (qp, _) = connect_queue(addr, o, &c, qsize)?;
        qp.set_in_capsule_limit(icd);
        ios.push(qp);
    }
    info.io_queues = ios.len();
    info.queue_size = qsize;
    Ok(Session {
        admin: admin_q,
        io: ios,
        info,
    })
}

fn supervise(shared: Arc<Shared>) {
    let kato = shared.opts.kato;
    let mut next_ka = Instant::now() + kato / 2;
    let mut last_wake = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let (state, session) = {
            let st = shared.lock();
            (st.rc.state, st.session.clone())
        };
        match (state, session) {
            (LinkState::Connected, Some(s)) => {
                if s.any_failed() {
                    shared.lost("queue failed");
                } else if !kato.is_zero() && now >= next_ka {
                    next_ka = now + kato / 2;
                    let r = block_on_timeout(
                        s.admin.exec(Sqe::new(admin::KEEP_ALIVE), Bytes::new(), 0),
                        kato,
                    );
                    if !matches!(r, Some(Ok(_))) {
                        shared.lost("keep alive failed");
                    }
                }
            }
            (LinkState::Connected, None) => shared.lost("no session"),
            (LinkState::Reconnecting { .. }, _) => {
                let due = shared.lock().rc.attempt_due(now);
                if due {
                    match establish(shared.addr, &shared.subnqn, &shared.hostnqn, &shared.opts) {
                        Ok(s) => {
                            info!(subnqn = %shared.subnqn, "controller reconnected");
                            let mut st = shared.lock();
                            st.info = s.info.clone();
                            st.session = Some(Arc::new(s));
                            st.rc.reconnected();
                            shared.reconnects.fetch_add(1, Ordering::AcqRel);
                            next_ka = Instant::now() + kato / 2;
                        }
                        Err(e) => {
                            warn!(error = %e, "reconnect attempt failed");
                            shared.lock().rc.attempt_failed(Instant::now());
                        }
                    }
                    shared.wake_all();
                } else if now.duration_since(last_wake) >= Duration::from_millis(50) {
                    // Let waiting I/O re-check fast_io_fail_timeout.
                    last_wake = now;
                    shared.wake_all();
                }
            }
            (LinkState::Failed, _) => {
                shared.wake_all();
                return;
            }
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

impl Controller {
    /// Connects the admin queue, enables the controller, identifies it and its
    /// namespaces, and connects `opts.io_queues` I/O queues. Blocks the caller.
    pub fn connect(
        addr: SocketAddr,
        subnqn: &str,
        hostnqn: &str,
        opts: ConnectOptions,
    ) -> Result<Self, Error> {
        opts.reconnect.validate().map_err(Error::InvalidArgument)?;
        let s = establish(addr, subnqn, hostnqn, &opts)?;
        let shared = Arc::new(Shared {
            addr,
            subnqn: subnqn.to_string(),
            hostnqn: hostnqn.to_string(),
            st: Mutex::new(St {
                info: s.info.clone(),
                session: Some(Arc::new(s)),
                rc: Reconnect::new(opts.reconnect),
                waiters: Vec::new(),
                rr: 0,
            }),
            opts,
            stop: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            supervisor: Mutex::new(None),
        });
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name("nvmf-host-sup".into())
            .spawn(move || supervise(sh))
            .map_err(|e| Error::Io(e.to_string()))?;
        *shared.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = Some(h.thread().clone());
        Ok(Self { shared })
    }

    /// What Identify said at the last (re)connect.
    pub fn info(&self) -> ControllerInfo {
        self.shared.lock().info.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.shared.lock().rc.state == LinkState::Connected
    }

    pub fn link_state(&self) -> LinkState {
        self.shared.lock().rc.state
    }

    /// How many times the controller reconnected.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Acquire)
    }

    /// A queue for the next command: admin (`None`) or an I/O queue, round robin.
    fn queue(&self, admin_q: bool) -> impl Future<Output = Result<Arc<QPair>, Error>> + use<> {
        let shared = self.shared.clone();
        std::future::poll_fn(move |cx| {
            if shared.stop.load(Ordering::Acquire) {
                return Poll::Ready(Err(Error::Closed));
            }
            let mut st = shared.lock();
            match (st.rc.state, st.session.clone()) {
                (LinkState::Connected, Some(s)) => {
                    let q = if admin_q {
                        Some(s.admin.clone())
                    } else {
                        st.rr = st.rr.wrapping_add(1);
                        s.io.get(st.rr % s.io.len().max(1)).cloned()
                    };
                    match q {
                        Some(q) => Poll::Ready(Ok(q)),
                        None => Poll::Ready(Err(Error::InvalidArgument("no I/O queues"))),
                    }
                }
                (LinkState::Failed, _) => Poll::Ready(Err(Error::ControllerLost)),
                _ if st.rc.io_fails(Instant::now()) => Poll::Ready(Err(Error::FastIoFail)),
                _ => {
                    st.waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }

    /// Runs a command, retrying it on another association when the transport fails
    /// (as bdev_nvme does), until the reconnect policy gives up.
    pub async fn execute(
        &self,
        admin_q: bool,
        sqe: Sqe,
        write: Bytes,
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), Error> {
        loop {
            let qp = self.queue(admin_q).await?;
            match qp.exec(sqe, write.clone(), read_len).await {
                Err(Error::Transport(r)) => self.shared.lost(&r),
                Ok((cqe, _)) if !cqe.status.is_success() => return Err(Error::Status(cqe.status)),
                other => return other,
            }
        }
    }

    fn ns(&self, nsid: u32) -> Result<NamespaceInfo, Error> {
        self.shared
            .lock()
            .info
            .namespace(nsid)
            .cloned()
            .ok_or(Error::InvalidArgument("unknown namespace"))
    }

    fn rw_sqe(&self, opcode: u8, nsid: u32, lba: u64, nblocks: u32) -> Result<(Sqe, usize), Error> {
        let ns = self.ns(nsid)?;
        if nblocks == 0 || nblocks > 65536 {
            return Err(Error::InvalidArgument("block count must be 1..=65536"));
        }
        let len = nblocks as usize * ns.block_size as usize;
        if opcode != io::WRITE_ZEROES && len > self.shared.lock().info.max_transfer {
            return Err(Error::InvalidArgument(
                "transfer above the controller's limit",
            ));
        }
        let mut sqe = Sqe::new(opcode);
        sqe.nsid = nsid;
        sqe.cdw10 = lba as u32;
        sqe.cdw11 = (lba >> 32) as u32;
        sqe.cdw12 = nblocks - 1;
        Ok((sqe, len))
    }

    pub async fn read(&self, nsid: u32, lba: u64, nblocks: u32) -> Result<Vec<u8>, Error> {
        let (sqe, len) = self.rw_sqe(io::READ, nsid, lba, nblocks)?;
        Ok(self.execute(false, sqe, Bytes::new(), len).await?.1)
    }

    pub async fn write(&self, nsid: u32, lba: u64, data: impl Into<Bytes>) -> Result<(), Error> {
        let data: Bytes = data.into();
        let bs = self.ns(nsid)?.block_size as usize;
        if data.is_empty() || !data.len().is_multiple_of(bs) {
            return Err(Error::InvalidArgument(
                "write length must be a multiple of the block size",
            ));
        }
        let (sqe, _) = self.rw_sqe(
            io::WRITE,
            nsid,
            lba,
            u32::try_from(data.len() / bs).unwrap_or(u32::MAX),
        )?;
        self.execute(false, sqe, data, 0).await.map(|_| ())
    }

    pub async fn flush(&self, nsid: u32) -> Result<(), Error> {
        let mut sqe = Sqe::new(io::FLUSH);
        sqe.nsid = nsid;
        self.execute(false, sqe, Bytes::new(), 0).await.map(|_| ())
    }

    pub async fn write_zeroes(&self, nsid: u32, lba: u64, nblocks: u32) -> Result<(), Error> {
        let (sqe, _) = self.rw_sqe(io::WRITE_ZEROES, nsid, lba, nblocks)?;
        self.execute(false, sqe, Bytes::new(), 0).await.map(|_| ())
    }

    /// Dataset Management with the deallocate attribute over `ranges` of (lba, nblocks).
    pub async fn deallocate(&self, nsid: u32, ranges: &[(u64, u32)]) -> Result<(), Error> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(Error::InvalidArgument("1..=256 ranges"));
        }
        let r: Vec<DsmRange> = ranges
            .iter()
            .map(|&(slba, nlb)| DsmRange {
                attributes: 0,
                nlb,
                slba,
            })
            .collect();
        let mut sqe = Sqe::new(io::DATASET_MANAGEMENT);
        sqe.nsid = nsid;
        sqe.cdw10 = (ranges.len() - 1) as u32;
        sqe.cdw11 = 1 << 2;
        self.execute(false, sqe, Bytes::from(DsmRange::encode_all(&r)), 0)
            .await
            .map(|_| ())
    }

    /// A raw admin command (data in `write`, `read_len` bytes back).
    pub async fn admin(
        &self,
        sqe: Sqe,
        write: Bytes,
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), Error> {
        self.execute(true, sqe, write, read_len).await
    }

    /// The discovery log (on a discovery controller): header, then every entry.
    pub async fn discovery_log(&self) -> Result<(u64, Vec<DiscoveryEntry>), Error> {
        let hdr = self
            .admin(
                log::get_log_cmd(log::lid::DISCOVERY, 0, 1024),
                Bytes::new(),
                1024,
            )
            .await?
            .1;
        let (genctr, numrec) = log::parse_discovery_header(&hdr);
        let n = usize::try_from(numrec.min(1024)).unwrap_or(0);
        let mut entries = Vec::new();
        let mut off = log::DISCOVERY_HEADER_LEN;
        let end = log::DISCOVERY_HEADER_LEN + n * log::DISCOVERY_ENTRY_LEN;
        while off < end {
            let len = (end - off).min(4096) as u32;
            let d = self
                .admin(
                    log::get_log_cmd(log::lid::DISCOVERY, off as u64, len),
                    Bytes::new(),
                    len as usize,
                )
                .await?
                .1;
            entries.extend(log::parse_discovery_entries(&d));
            off += len as usize;
        }
        Ok((genctr, entries))
    }

    /// Blocking versions of the I/O calls.
    pub fn blocking(&self) -> Blocking<'_> {
        Blocking(self)
    }

    /// Shuts the controller down (CC.SHN) and closes every queue.
    pub fn disconnect(self) {
        let s = self.shared.lock().session.clone();
        if let Some(s) = s {
            let sqe = fabrics::property_set(
                prop::CC,
                u64::from(cc::EN | cc::IOSQES_IOCQES | (1 << cc::SHN_SHIFT)),
                false,
            );
            let _ = block_on_timeout(s.admin.exec(sqe, Bytes::new(), 0), Duration::from_secs(1));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_supervisor();
        let s = self.shared.lock().session.take();
        if let Some(s) = s {
            s.fail("controller closed");
        }
        self.shared.wake_all();
    }
}

/// Blocking wrappers: each call runs the async one on the calling thread.
pub struct Blocking<'a>(&'a Controller);

impl Blocking<'_> {
    pub fn read(&self, nsid: u32, lba: u64, nblocks: u32) -> Result<Vec<u8>, Error> {
        block_on(self.0.read(nsid, lba, nblocks))
    }
    pub fn write(&self, nsid: u32, lba: u64, data: impl Into<Bytes>) -> Result<(), Error> {
        block_on(self.0.write(nsid, lba, data))
    }
    pub fn flush(&self, nsid: u32) -> Result<(), Error> {
        block_on(self.0.flush(nsid))
    }
    pub fn write_zeroes(&self, nsid: u32, lba: u64, nblocks: u32) -> Result<(), Error> {
        block_on(self.0.write_zeroes(nsid, lba, nblocks))
    }
    pub fn deallocate(&self, nsid: u32, ranges: &[(u64, u32)]) -> Result<(), Error> {
        block_on(self.0.deallocate(nsid, ranges))
    }
}

/// Connects to the discovery controller at `addr` and returns its log.
pub fn discover(
    addr: SocketAddr,
    hostnqn: &str,
    opts: ConnectOptions,
) -> Result<(u64, Vec<DiscoveryEntry>), Error> {
    let c = Controller::connect(addr, DISCOVERY_NQN, hostnqn, opts)?;
    block_on(c.discovery_log())
}
