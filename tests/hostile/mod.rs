//! A raw NVMe/TCP host for hostile-input tests of the native host's reactor driver, and a
//! test bed: one reactor serving a small RAM target, with a good host connected to it.
#![allow(dead_code)]

use nvmf::driver::{ConnectOptions, Controller};
use nvmf::nvme::Cqe;
use nvmf::pdu::{Decoder, DecoderCfg, Pdu};
use spdk_replication::native::nvmf_tcp::ReactorServer;
use spdk_replication::native::reactor::Reactors;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `nvmf` crate's test helpers: its RAM target, patterns and raw PDU builders.
#[path = "../../nvmf/tests/common/mod.rs"]
pub mod common;
pub use common::{HOSTNQN, NQN, pattern, raw};
use raw::{enable, ic_req, small_target, wire};

pub const BS: usize = 512;
/// `small_target`'s namespace: 1024 blocks of 512 bytes.
pub const NS_BYTES: usize = 1024 * BS;

/// The tests measure this process's memory: one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// One reactor serving `small_target` (in-capsule 4096, MAXH2CDATA 8192, C2H chunks of
/// 4096), a good host connected to it, and the namespace filled with a known pattern.
pub struct Bed {
    pub srv: Option<ReactorServer>,
    pub reactors: Option<Reactors>,
    pub good: Controller,
    pub cntlid: u16,
    /// Keeps the raw admin connection (and so controller `cntlid`) alive.
    _admin: TcpStream,
    pub image: Vec<u8>,
}

impl Bed {
    pub fn new() -> Self {
        let reactors = Reactors::start(&[0]).unwrap();
        let srv = ReactorServer::start(small_target(), "127.0.0.1:0", reactors.handles()).unwrap();
        let good =
            Controller::connect(srv.local_addr(), NQN, HOSTNQN, ConnectOptions::default()).unwrap();
        let image = pattern(NS_BYTES, 1);
        good.blocking().write(1, 0, image.clone()).unwrap();
        let (admin, cntlid) = raw_admin(srv.local_addr());
        Self {
            srv: Some(srv),
            reactors: Some(reactors),
            good,
            cntlid,
            _admin: admin,
            image,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.srv.as_ref().unwrap().local_addr()
    }

    /// The good host writes a fresh pattern in the upper half of the namespace (the raw
    /// hosts read and write the lower half) and reads it back byte-exact.
    pub fn good_host_works(&mut self, seed: u64) {
        let lba = 512 + (seed * 37) % 504;
        let data = pattern(8 * BS, seed);
        let b = self.good.blocking();
        b.write(1, lba, data.clone()).unwrap();
        let got = b.read(1, lba, 8).unwrap();
        assert!(got == data, "good host read back other bytes (seed {seed})");
        let off = lba as usize * BS;
        self.image[off..off + data.len()].copy_from_slice(&data);
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        drop(self.srv.take());
        if let Some(r) = self.reactors.take() {
            r.stop();
        }
    }
}

/// An admin queue over a raw socket, connected and enabled: I/O queues of raw hosts attach
/// to its controller.
pub fn raw_admin(addr: SocketAddr) -> (TcpStream, u16) {
    let mut s = TcpStream::connect(addr).unwrap();
    let w = wire(false, false);
    let mut b = Vec::new();
    ic_req(&mut b, false, false);
    raw::connect(&mut b, &w, 0, 0xFFFF, 1);
    enable(&mut b, &w, 2);
    s.write_all(&b).unwrap();
    let mut rx = RawRx::new(false, false);
    let mut resps = Vec::new();
    while resps.len() < 2 {
        match rx.next(&mut s, Duration::from_secs(10)) {
            Some(Pdu::CapsuleResp(r)) => resps.push(Cqe::parse(&r.cqe)),
            Some(_) => {}
            None => panic!("admin connection ended: {:?}", rx.ended),
        }
    }
    assert!(resps.iter().all(|c| c.status.is_success()), "{resps:?}");
    (s, resps[0].dw0 as u16)
}

/// PDUs from a raw socket, decoded as a host would.
pub struct RawRx {
    dec: Decoder,
    buf: Vec<u8>,
    hdgst: bool,
    ddgst: bool,
    /// Why the stream ended, once it did: EOF, a reset, or a timeout.
    pub ended: Option<String>,
}

impl RawRx {
    pub fn new(hdgst: bool, ddgst: bool) -> Self {
        Self {
            dec: Decoder::new(DecoderCfg::host(16 << 20)),
            buf: Vec::new(),
            hdgst,
            ddgst,
            ended: None,
        }
    }

    /// The next PDU, or None once the stream ended or `wait` passed without one.
    pub fn next(&mut self, s: &mut TcpStream, wait: Duration) -> Option<Pdu> {
        let deadline = Instant::now() + wait;
        loop {
            match self.dec.decode(&self.buf) {
                Ok(Some((p, n))) => {
                    self.buf.drain(..n);
                    if matches!(p, Pdu::IcResp(_)) {
                        self.dec.cfg.ic_done = true;
                        self.dec.cfg.hdgst = self.hdgst;
                        self.dec.cfg.ddgst = self.ddgst;
                    }
                    return Some(p);
                }
                Ok(None) => {}
                Err(e) => panic!("the target sent an invalid PDU: {e}"),
            }
            if self.ended.is_some() {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.ended = Some("timeout".into());
                return None;
            }
            s.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match s.read(&mut chunk) {
                Ok(0) => self.ended = Some("eof".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.ended = Some("timeout".into())
                }
                Err(e) => self.ended = Some(format!("{e}")),
            }
        }
    }

    /// Every PDU until the target closes the connection (panics if it does not within
    /// `wait`).
    pub fn until_closed(&mut self, s: &mut TcpStream, wait: Duration) -> Vec<Pdu> {
        let mut pdus = Vec::new();
        while let Some(p) = self.next(s, wait) {
            pdus.push(p);
        }
        assert_ne!(
            self.ended.as_deref(),
            Some("timeout"),
            "the target did not close the connection; got {pdus:?}"
        );
        pdus
    }
}

pub fn term_of(pdus: &[Pdu]) -> Option<(u16, u32)> {
    pdus.iter().rev().find_map(|p| match p {
        Pdu::C2HTermReq(t) => Some((t.fes, t.fei)),
        _ => None,
    })
}

/// Resident memory of this process, in bytes.
pub fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}
