//! Fabrics commands (Connect, Property Get/Set) and the controller properties
//! (CAP, VS, CC, CSTS) they address.

use super::cmd::{Sgl, Sqe, admin};
use crate::wire::{get_cstr, le16, put_bytes, put_cstr, put16};

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const DISCONNECT: u8 = 0x08;
}

/// Property offsets.
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
    pub const NSSR: u32 = 0x20;
}

pub mod cc {
    pub const EN: u32 = 1;
    pub const SHN_SHIFT: u32 = 14;
    pub const SHN_MASK: u32 = 3 << SHN_SHIFT;
    /// IOSQES 6 (64 bytes) and IOCQES 4 (16 bytes), the only entry sizes NVMe-oF allows.
    pub const IOSQES_IOCQES: u32 = (6 << 16) | (4 << 20);
}

pub mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;
    pub const SHST_MASK: u32 = 3 << 2;
}

/// The 1024-byte Connect data.
pub const CONNECT_DATA_LEN: usize = 1024;
/// Offsets inside the Connect data, reported in Connect Invalid Parameters.
pub const CONNECT_DATA_CNTLID: u16 = 16;
pub const CONNECT_DATA_SUBNQN: u16 = 256;
pub const CONNECT_DATA_HOSTNQN: u16 = 512;
/// Offsets inside the Connect SQE.
pub const CONNECT_SQE_QID: u16 = 42;
pub const CONNECT_SQE_SQSIZE: u16 = 44;
/// CATTR bit: the host disables SQ flow control (then sqhd is meaningless and the
/// controller may use C2HData SUCCESS).
pub const CATTR_DISABLE_SQ_FLOW: u8 = 1 << 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub recfmt: u16,
    pub qid: u16,
    /// Zero-based queue size.
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep alive timeout, milliseconds.
    pub kato: u32,
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

impl Connect {
    pub fn from_sqe(sqe: &Sqe, data: &[u8]) -> Self {
        let mut hostid = [0u8; 16];
        if let Some(h) = data.get(..16) {
            hostid.copy_from_slice(h);
        }
        Self {
            recfmt: (sqe.cdw10 & 0xFFFF) as u16,
            qid: (sqe.cdw10 >> 16) as u16,
            sqsize: (sqe.cdw11 & 0xFFFF) as u16,
            cattr: ((sqe.cdw11 >> 16) & 0xFF) as u8,
            kato: sqe.cdw12,
            hostid,
            cntlid: le16(data, usize::from(CONNECT_DATA_CNTLID)),
            subnqn: get_cstr(data, usize::from(CONNECT_DATA_SUBNQN), 256),
            hostnqn: get_cstr(data, usize::from(CONNECT_DATA_HOSTNQN), 256),
        }
    }

    /// The command (with an SGL for in-capsule data) and its 1024 bytes of data.
    pub fn to_sqe(&self) -> (Sqe, Vec<u8>) {
        let mut sqe = Sqe::new(admin::FABRICS);
        sqe.nsid = u32::from(fctype::CONNECT);
        sqe.cdw10 = u32::from(self.recfmt) | (u32::from(self.qid) << 16);
        sqe.cdw11 = u32::from(self.sqsize) | (u32::from(self.cattr) << 16);
        sqe.cdw12 = self.kato;
        sqe.dptr = Sgl::in_capsule(CONNECT_DATA_LEN as u32);
        let mut d = vec![0u8; CONNECT_DATA_LEN];
        put_bytes(&mut d, 0, &self.hostid);
        put16(&mut d, usize::from(CONNECT_DATA_CNTLID), self.cntlid);
        put_cstr(&mut d, usize::from(CONNECT_DATA_SUBNQN), 256, &self.subnqn);
        put_cstr(
            &mut d,
            usize::from(CONNECT_DATA_HOSTNQN),
            256,
            &self.hostnqn,
        );
        (sqe, d)
    }
}

/// Property Get: `size8` selects an 8-byte property (CAP).
pub fn property_get(offset: u32, size8: bool) -> Sqe {
    let mut sqe = Sqe::new(admin::FABRICS);
    sqe.nsid = u32::from(fctype::PROPERTY_GET);
    sqe.dptr = Sgl::transport(0);
    sqe.cdw10 = u32::from(size8);
    sqe.cdw11 = offset;
    sqe
}

pub fn property_set(offset: u32, value: u64, size8: bool) -> Sqe {
    let mut sqe = Sqe::new(admin::FABRICS);
    sqe.nsid = u32::from(fctype::PROPERTY_SET);
    sqe.dptr = Sgl::transport(0);
    sqe.cdw10 = u32::from(size8);
    sqe.cdw11 = offset;
    sqe.cdw12 = value as u32;
    sqe.cdw13 = (value >> 32) as u32;
    sqe
}

/// Decoded Property Get/Set fields: (8-byte?, offset, value).
pub fn property_fields(sqe: &Sqe) -> (bool, u32, u64) {
    let size8 = sqe.cdw10 & 7 == 1;
    (
        size8,
        sqe.cdw11,
        u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32),
    )
}

/// CAP for our controllers: MQES (zero-based), CQR=1, TO in 500 ms units, CSS=NVM,
/// MPSMIN=MPSMAX=0 (4 KiB) as Linux requires.
pub fn cap_value(mqes: u16, timeout_500ms: u8) -> u64 {
    u64::from(mqes) | (1 << 16) | (u64::from(timeout_500ms) << 24) | (1 << 37)
}

pub fn cap_mqes(cap: u64) -> u16 {
    (cap & 0xFFFF) as u16
}

pub fn cap_timeout_ms(cap: u64) -> u64 {
    ((cap >> 24) & 0xFF) * 500
}

/// VS 1.3.0: Linux then reads the namespace descriptors, and NGUID/UUID are meaningful.
pub const VS_1_3: u32 = 0x0001_0300;
