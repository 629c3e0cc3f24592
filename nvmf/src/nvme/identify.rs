//! Identify data structures (4096 bytes each): controller, namespace, active namespace
//! list, namespace identification descriptors. Builders for the target, parsers for the host.

use super::cmd::{Sgl, Sqe, admin};
use crate::wire::{
    get_ascii, get_cstr, le16, le32, le64, put_ascii_padded, put_bytes, put_cstr, put8, put16,
    put32, put64, u8_at,
};

pub const IDENTIFY_LEN: usize = 4096;

pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_DESCRIPTORS: u8 = 0x03;
}

pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
}

/// ONCS bits.
pub const ONCS_DSM: u16 = 1 << 2;
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// OAES bit 8: namespace attribute notices.
pub const OAES_NS_ATTR: u32 = 1 << 8;

pub fn identify_cmd(cns: u8, nsid: u32) -> Sqe {
    let mut sqe = Sqe::new(admin::IDENTIFY);
    sqe.nsid = nsid;
    sqe.cdw10 = u32::from(cns);
    sqe.dptr = Sgl::transport(IDENTIFY_LEN as u32);
    sqe
}

/// The fields of Identify Controller that either side cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerData {
    pub vid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum data transfer size as a power of two of 4 KiB pages (0 = no limit).
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub oaes: u32,
    pub cntrltype: u8,
    /// Abort command limit and AER limit, zero-based.
    pub acl: u8,
    pub aerl: u8,
    pub elpe: u8,
    /// Keep alive granularity, 100 ms units.
    pub kas: u16,
    pub maxcmd: u16,
    pub nn: u32,
    pub oncs: u16,
    pub vwc: u8,
    pub sgls: u32,
    pub subnqn: String,
    /// I/O queue command capsule size in 16-byte units (SQE included).
    pub ioccsz: u32,
    pub iorcsz: u32,
    pub msdbd: u8,
}

impl ControllerData {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put16(&mut b, 0, self.vid);
        put16(&mut b, 2, self.vid);
        put_ascii_padded(&mut b, 4, 20, &self.serial);
        put_ascii_padded(&mut b, 24, 40, &self.model);
        put_ascii_padded(&mut b, 64, 8, &self.firmware);
        put8(&mut b, 72, 6); // RAB
        put8(&mut b, 77, self.mdts);
        put16(&mut b, 78, self.cntlid);
        put32(&mut b, 80, self.ver);
        put32(&mut b, 92, self.oaes);
        put8(&mut b, 111, self.cntrltype);
        put8(&mut b, 258, self.acl);
        put8(&mut b, 259, self.aerl);
        put8(&mut b, 260, 0x03); // FRMW: slot 1 read only, one slot
        put8(&mut b, 261, 0x04); // LPA: extended data for Get Log Page
        put8(&mut b, 262, self.elpe);
        put16(&mut b, 320, self.kas);
        put8(&mut b, 512, 0x66); // SQES
        put8(&mut b, 513, 0x44); // CQES
        put16(&mut b, 514, self.maxcmd);
        put32(&mut b, 516, self.nn);
        put16(&mut b, 520, self.oncs);
        put8(&mut b, 525, self.vwc);
        put16(&mut b, 526, 0); // AWUN
        put32(&mut b, 536, self.sgls);
        put_cstr(&mut b, 768, 256, &self.subnqn);
        put32(&mut b, 1792, self.ioccsz);
        put32(&mut b, 1796, self.iorcsz);
        put16(&mut b, 1800, 0); // ICDOFF
        put8(&mut b, 1803, self.msdbd);
        // Power state 0: 25 W max power (an arbitrary but plausible figure).
        put16(&mut b, 2048, 2500);
        b
    }

    pub fn parse(b: &[u8]) -> Self {
        Self {
            vid: le16(b, 0),
            serial: get_ascii(b, 4, 20),
            model: get_ascii(b, 24, 40),
            firmware: get_ascii(b, 64, 8),
            mdts: u8_at(b, 77),
            cntlid: le16(b, 78),
            ver: le32(b, 80),
            oaes: le32(b, 92),
            cntrltype: u8_at(b, 111),
            acl: u8_at(b, 258),
            aerl: u8_at(b, 259),
            elpe: u8_at(b, 262),
            kas: le16(b, 320),
            maxcmd: le16(b, 514),
            nn: le32(b, 516),
            oncs: le16(b, 520),
            vwc: u8_at(b, 525),
            sgls: le32(b, 536),
            subnqn: get_cstr(b, 768, 256),
            ioccsz: le32(b, 1792),
            iorcsz: le32(b, 1796),
            msdbd: u8_at(b, 1803),
        }
    }
}

/// Identify Namespace, the fields we use: one LBA format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceData {
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    /// Bit 0 thin provisioning; bit 2 deallocated-or-unwritten error support.
    pub nsfeat: u8,
    /// log2 of the block size.
    pub lbads: u8,
    /// DLFEAT: 001b = deallocated blocks read as zeroes; bit 3 write zeroes may deallocate.
    pub dlfeat: u8,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

impl NamespaceData {
    pub fn block_size(&self) -> u32 {
        1u32.checked_shl(u32::from(self.lbads)).unwrap_or(0)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put64(&mut b, 0, self.nsze);
        put64(&mut b, 8, self.ncap);
        put64(&mut b, 16, self.nuse);
        put8(&mut b, 24, self.nsfeat);
        put8(&mut b, 25, 0); // NLBAF: one format
        put8(&mut b, 26, 0); // FLBAS: format 0
        put8(&mut b, 33, self.dlfeat);
        put_bytes(&mut b, 104, &self.nguid);
        put_bytes(&mut b, 120, &self.eui64);
        // LBAF0: no metadata, LBADS, relative performance 0 (best).
        put32(&mut b, 128, u32::from(self.lbads) << 16);
        b
    }

    pub fn parse(b: &[u8]) -> Self {
        let flbas = u8_at(b, 26) & 0xF;
        let lbaf = le32(b, 128 + 4 * usize::from(flbas));
        let mut nguid = [0u8; 16];
        if let Some(s) = b.get(104..120) {
            nguid.copy_from_slice(s);
        }
        let mut eui64 = [0u8; 8];
        if let Some(s) = b.get(120..128) {
            eui64.copy_from_slice(s);
        }
        Self {
            nsze: le64(b, 0),
            ncap: le64(b, 8),
            nuse: le64(b, 16),
            nsfeat: u8_at(b, 24),
            lbads: ((lbaf >> 16) & 0xFF) as u8,
            dlfeat: u8_at(b, 33),
            nguid,
            eui64,
        }
    }
}

/// Active namespace list: NSIDs greater than `after`, ascending, at most 1024.
pub fn encode_ns_list(nsids: &[u32], after: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut sorted: Vec<u32> = nsids.iter().copied().filter(|&n| n > after).collect();
    sorted.sort_unstable();
    for (i, n) in sorted.iter().take(IDENTIFY_LEN / 4).enumerate() {
        put32(&mut b, i * 4, *n);
    }
    b
}

pub fn parse_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| le32(c, 0))
        .take_while(|&n| n != 0)
        .collect()
}

pub mod nidt {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
}

/// Namespace identification descriptor list.
pub fn encode_ns_descriptors(nguid: &[u8; 16], uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut off = 0;
    for (t, v) in [(nidt::NGUID, nguid), (nidt::UUID, uuid)] {
        put8(&mut b, off, t);
        put8(&mut b, off + 1, 16);
        put_bytes(&mut b, off + 4, v);
        off += 20;
    }
    b
}

/// (type, value) pairs of a descriptor list; stops at the terminator or a malformed entry.
pub fn parse_ns_descriptors(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while let (t @ 1..=255, len) = (u8_at(b, off), usize::from(u8_at(b, off + 1))) {
        let Some(v) = b.get(off + 4..off + 4 + len) else {
            break;
        };
        out.push((t, v.to_vec()));
        off += 4 + len;
    }
    out
}
