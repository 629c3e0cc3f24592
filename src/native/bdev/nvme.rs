//! `bdev_nvme_attach_controller`: namespaces of an NVMe-oF/TCP controller, through the
//! project's initiator (`nvmf`), one bdev `<name>n<nsid>` per namespace, with SPDK's
//! reconnect parameters. Transfers above the controller's limit are split.

use crate::engine::{IoBuf, IoError};
use crate::native::buf::NativeBuf;
use crate::native::reactor::{self, Reactor};
use bytes::Bytes;
use io_uring::{opcode, types};
use nvmf::driver::{ConnectOptions, Controller, Error as NvmfError, QueueRx, QueueTx, RxDriver};
use nvmf::host::ReconnectOpts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// SPDK's `bdev_nvme_attach_controller` params (the TCP subset).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AttachParams {
    pub name: String,
    pub trtype: String,
    pub traddr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adrfam: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trsvcid: Option<String>,
    pub subnqn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnqn: Option<String>,
    #[serde(default)]
    pub hdgst: bool,
    #[serde(default)]
    pub ddgst: bool,
    #[serde(default)]
    pub ctrlr_loss_timeout_sec: i64,
    #[serde(default)]
    pub reconnect_delay_sec: u64,
    #[serde(default)]
    pub fast_io_fail_timeout_sec: u64,
    /// Accepted for compatibility with SPDK scripts; the native host has one path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipath: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prchk_reftag: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prchk_guard: Option<bool>,
}

impl AttachParams {
    pub fn addr(&self) -> Result<SocketAddr, String> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(format!(
                "trtype: {} is not supported (TCP only)",
                self.trtype
            ));
        }
        let port = self.trsvcid.as_deref().unwrap_or("4420");
        let port: u16 = port
            .parse()
            .map_err(|_| format!("trsvcid: {port} is not a port"))?;
        (self.traddr.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("traddr: cannot resolve {}", self.traddr))
    }

    pub fn reconnect(&self) -> Result<ReconnectOpts, String> {
        let r = ReconnectOpts {
            ctrlr_loss_timeout: match self.ctrlr_loss_timeout_sec {
                -1 => None,
                s if s >= 0 => Some(Duration::from_secs(s as u64)),
                s => return Err(format!("ctrlr_loss_timeout_sec: {s} is invalid")),
            },
            reconnect_delay: Duration::from_secs(self.reconnect_delay_sec),
            fast_io_fail_timeout: (self.fast_io_fail_timeout_sec > 0)
                .then(|| Duration::from_secs(self.fast_io_fail_timeout_sec)),
        };
        r.validate()
            .map_err(|e| format!("invalid reconnect parameters: {e}"))?;
        Ok(r)
    }
}

/// The initiator's queues on the node's reactors, as SPDK's bdev_nvme polls its qpairs from
/// its poll groups: each queue's socket is received from through one reactor's io_uring
/// (round robin), and the commands a reactor submits in one turn leave in one `send`.
/// Before, a reader thread per queue took every completion and woke the reactor.
struct ReactorRx {
    reactors: Vec<Reactor>,
    next: AtomicUsize,
}

impl std::fmt::Debug for ReactorRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReactorRx({} reactors)", self.reactors.len())
    }
}

const RECV_BUF: usize = 64 * 1024;

impl RxDriver for ReactorRx {
    fn spawn(&self, rx: QueueRx) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match self.reactors.get(i % self.reactors.len().max(1)) {
            Some(r) => r.send(move || reactor::spawn_local(receive(rx))),
            None => rx.closed("no reactor to receive on"),
        }
    }

    fn defer_flush(&self, tx: QueueTx) {
        reactor::defer(move || tx.flush());
    }
}

/// Feeds one queue's socket to it until the queue ends.
async fn receive(rx: QueueRx) {
    let buf = Rc::new(RefCell::new(vec![0u8; RECV_BUF]));
    loop {
        let ptr = buf.borrow_mut().as_mut_ptr();
        let e = opcode::Recv::new(types::Fd(rx.fd()), ptr, RECV_BUF as u32).build();
        // The op keeps the buffer alive until its completion, even if this task is dropped.
        let n = reactor::uring(e, Some(Box::new(buf.clone()))).await;
        match n {
            n if n == -libc::EINTR || n == -libc::EAGAIN => continue,
            0 => return rx.closed("connection closed"),
            n if n < 0 => {
                let e = std::io::Error::from_raw_os_error(-n);
                return rx.closed(&format!("recv: {e}"));
            }
            n => {
                let b = buf.borrow();
                if rx.input(b.get(..n as usize).unwrap_or(&[])) {
                    return;
                }
            }
        }
    }
}

/// An attached controller and its namespace bdevs.
pub struct NvmeController {
    pub params: AttachParams,
    pub ctrl: Arc<Controller>,
    pub namespaces: Vec<(String, Arc<NvmeNs>)>,
}

impl NvmeController {
    /// Connects (blocking: call it off the reactors); `reactors` receive its queues.
    pub fn attach(params: AttachParams, reactors: Vec<Reactor>) -> Result<Self, String> {
        let addr = params.addr()?;
        let rx: Arc<dyn RxDriver> = Arc::new(ReactorRx {
            reactors,
            next: AtomicUsize::new(0),
        });
        let opts = ConnectOptions {
            hdgst: params.hdgst,
            ddgst: params.ddgst,
            reconnect: params.reconnect()?,
            rx: Some(rx),
            ..ConnectOptions::default()
        };
        let hostnqn = params.hostnqn.clone().unwrap_or_else(|| {
            "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000000".into()
        });
        let ctrl = Controller::connect(addr, &params.subnqn, &hostnqn, opts).map_err(|e| {
            format!(
                "cannot attach controller {} ({}:{} {}): {e}",
                params.name,
                params.traddr,
                params.trsvcid.as_deref().unwrap_or("4420"),
                params.subnqn
            )
        })?;
        let ctrl = Arc::new(ctrl);
        let info = ctrl.info();
        let namespaces = info
            .namespaces
            .iter()
            .map(|ns| {
                (
                    format!("{}n{}", params.name, ns.nsid),
                    Arc::new(NvmeNs {
                        ctrl: ctrl.clone(),
                        nsid: ns.nsid,
                        block_size: ns.block_size,
                        num_blocks: ns.num_blocks,
                        vwc: info.vwc,
                        max_transfer: info.max_transfer.max(ns.block_size as usize),
                        params: params.clone(),
                    }),
                )
            })
            .collect();
        Ok(Self {
            params,
            ctrl,
            namespaces,
        })
    }
}

pub struct NvmeNs {
    ctrl: Arc<Controller>,
    nsid: u32,
    block_size: u32,
    num_blocks: u64,
    vwc: bool,
    max_transfer: usize,
    params: AttachParams,
}

/// A buffer slice lent to the transport for a write, without a copy.
struct Lent(NativeBuf);

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the request's buffer, not written while the write is in flight.
        unsafe { self.0.bytes() }
    }
}

fn io_err(e: NvmfError) -> IoError {
    tracing::debug!(error = %e, "NVMe-oF I/O failed");
    IoError::Io
}

impl NvmeNs {
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    pub fn write_cache(&self) -> bool {
        self.vwc
    }

    pub fn driver_specific(&self) -> Value {
        json!({ "nvme": [{
            "trid": {
                "trtype": "TCP",
                "traddr": self.params.traddr,
                "trsvcid": self.params.trsvcid,
                "subnqn": self.params.subnqn,
            },
            "ctrlr_data": { "cntlid": self.ctrl.info().cntlid },
        }]})
    }

    /// Parts of at most the controller's transfer size: (block offset, blocks).
    fn parts(&self, nblocks: u64) -> impl Iterator<Item = (u64, u32)> + use<> {
        let per = (self.max_transfer / self.block_size as usize).clamp(1, 65536) as u64;
        (0..nblocks.div_ceil(per)).map(move |i| {
            let at = i * per;
            (at, (nblocks - at).min(per) as u32)
        })
    }

    fn nblocks(&self, lba: u64, len: usize) -> Result<u64, IoError> {
        let bs = self.block_size as usize;
        if !len.is_multiple_of(bs) {
            return Err(IoError::OutOfRange);
        }
        let n = (len / bs) as u64;
        super::check_range(lba, n, self.num_blocks)?;
        Ok(n)
    }

    pub async fn read(&self, lba: u64, buf: NativeBuf) -> Result<(), IoError> {
        let n = self.nblocks(lba, buf.len())?;
        let bs = self.block_size as usize;
        for (at, cnt) in self.parts(n) {
            let data = self
                .ctrl
                .read(self.nsid, lba + at, cnt)
                .await
                .map_err(io_err)?;
            if data.len() != cnt as usize * bs {
                return Err(IoError::Io);
            }
            buf.copy_in(at as usize * bs, &data);
        }
        Ok(())
    }

    pub async fn write(&self, lba: u64, buf: NativeBuf) -> Result<(), IoError> {
        let n = self.nblocks(lba, buf.len())?;
        let bs = self.block_size as usize;
        for (at, cnt) in self.parts(n) {
            let part = buf.slice(at as usize * bs, cnt as usize * bs);
            self.ctrl
                .write(self.nsid, lba + at, Bytes::from_owner(Lent(part)))
                .await
                .map_err(io_err)?;
        }
        Ok(())
    }

    pub async fn write_zeroes(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        super::check_range(lba, nblocks, self.num_blocks)?;
        let mut at = 0;
        while at < nblocks {
            let cnt = (nblocks - at).min(65536) as u32;
            self.ctrl
                .write_zeroes(self.nsid, lba + at, cnt)
                .await
                .map_err(io_err)?;
            at += u64::from(cnt);
        }
        Ok(())
    }

    pub async fn unmap(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        super::check_range(lba, nblocks, self.num_blocks)?;
        let mut ranges = Vec::new();
        let mut at = 0;
        while at < nblocks {
            let cnt = (nblocks - at).min(u64::from(u32::MAX)) as u32;
            ranges.push((lba + at, cnt));
            at += u64::from(cnt);
        }
        for chunk in ranges.chunks(256) {
            self.ctrl
                .deallocate(self.nsid, chunk)
                .await
                .map_err(io_err)?;
        }
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), IoError> {
        self.ctrl.flush(self.nsid).await.map_err(io_err)
    }
}
