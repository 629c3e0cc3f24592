//! The initiator's controller: a live association (see `bringup`), keep alive, and
//! SPDK-style reconnects. I/O is
//! async and runtime-agnostic (futures woken from the reader threads); [`Blocking`] wraps it.

use super::Error;
use super::block_on::{block_on, block_on_timeout};
use super::bringup::{Session, establish};
use super::qpair::{QPair, RxDriver};
use crate::host::{LinkState, Reconnect, ReconnectOpts};
use crate::nvme::cmd::{Cqe, DsmRange, Sqe, admin, io};
use crate::nvme::fabrics::{self, DISCOVERY_NQN, cc, prop};
use crate::nvme::identify::ControllerData;
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
    /// Who reads the queues' sockets: `None` for a reader thread per queue.
    pub rx: Option<Arc<dyn RxDriver>>,
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
            rx: None,
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
    /// The controller's MAXH2CDATA (ICResp of the admin queue): larger writes are sent in
    /// several H2CData PDUs.
    pub maxh2cdata: usize,
    /// In-capsule data the I/O queues accept (IOCCSZ × 16 − 64): larger writes wait for R2T.
    pub in_capsule_data: usize,
}

impl ControllerInfo {
    pub fn namespace(&self, nsid: u32) -> Option<&NamespaceInfo> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
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
