//! Log pages: error information, SMART / health, firmware slot, and the discovery log.

use super::cmd::{Sgl, Sqe, admin};
use crate::wire::{
    get_ascii, get_cstr, le16, le64, put_ascii_padded, put_cstr, put8, put16, put64, u8_at,
};

pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    /// Changed Namespace List: required with OAES "namespace attribute notices".
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const DISCOVERY: u8 = 0x70;
}

pub const DISCOVERY_HEADER_LEN: usize = 1024;
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

/// Get Log Page fields: (lid, offset in bytes, length in bytes).
pub fn get_log_fields(sqe: &Sqe) -> (u8, u64, u64) {
    let lid = (sqe.cdw10 & 0xFF) as u8;
    let numdl = u64::from(sqe.cdw10 >> 16);
    let numdu = u64::from(sqe.cdw11 & 0xFFFF);
    let numd = ((numdu << 16) | numdl) + 1;
    let offset = u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32);
    (lid, offset, numd * 4)
}

pub fn get_log_cmd(lid: u8, offset: u64, len: u32) -> Sqe {
    let mut sqe = Sqe::new(admin::GET_LOG_PAGE);
    let numd = (len / 4).saturating_sub(1);
    sqe.nsid = 0xFFFF_FFFF;
    sqe.cdw10 = u32::from(lid) | ((numd & 0xFFFF) << 16);
    sqe.cdw11 = numd >> 16;
    sqe.cdw12 = offset as u32;
    sqe.cdw13 = (offset >> 32) as u32;
    sqe.dptr = Sgl::transport(len);
    sqe
}

/// SMART / health information (512 bytes): healthy, 300 K, full spare.
pub fn smart_log() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    put16(&mut b, 1, 300); // composite temperature, kelvin
    put8(&mut b, 3, 100); // available spare %
    put8(&mut b, 4, 10); // available spare threshold
    b
}

/// Firmware slot information (512 bytes): slot 1 active.
pub fn firmware_log(fw: &str) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    put8(&mut b, 0, 1);
    put_ascii_padded(&mut b, 8, 8, fw);
    b
}

/// Discovery log entry TREQ bit: SQ flow control disable supported.
pub const TREQ_DISABLE_SQFLOW: u8 = 0x04;

pub mod subtype {
    /// A referral to another discovery controller.
    pub const DISCOVERY: u8 = 1;
    pub const NVME: u8 = 2;
    /// The discovery controller answering (Linux nvmet lists itself this way).
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// One discovery log entry (TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub subtype: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
    /// 1 = IPv4, 2 = IPv6.
    pub adrfam: u8,
}

impl DiscoveryEntry {
    fn encode_into(&self, b: &mut [u8]) {
        put8(b, 0, 3); // TRTYPE: TCP
        put8(b, 1, self.adrfam);
        put8(b, 2, self.subtype);
        // TREQ: secure channel "not specified" (no TLS here) and SQ flow control disable
        // supported, as Linux nvmet says it. nvme-cli 2.3 looks the whole TREQ value up in
        // {0, 1, 2, 4}: "not required" + sqflow (0x06) printed as "unrecognized".
        put8(b, 3, TREQ_DISABLE_SQFLOW);
        put16(b, 4, self.portid);
        put16(b, 6, self.cntlid);
        put16(b, 8, self.asqsz);
        put_ascii_padded(b, 32, 32, &self.trsvcid);
        put_cstr(b, 256, 256, &self.subnqn);
        put_ascii_padded(b, 512, 256, &self.traddr);
        put8(b, 768, 0); // TSAS: SECTYPE none
    }

    fn parse(b: &[u8]) -> Self {
        Self {
            adrfam: u8_at(b, 1),
            subtype: u8_at(b, 2),
            portid: le16(b, 4),
            cntlid: le16(b, 6),
            asqsz: le16(b, 8),
            trsvcid: get_ascii(b, 32, 32),
            subnqn: get_cstr(b, 256, 256),
            traddr: get_ascii(b, 512, 256),
        }
    }
}

/// The whole discovery log page: header then entries.
pub fn discovery_log(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut b = vec![0u8; DISCOVERY_HEADER_LEN + entries.len() * DISCOVERY_ENTRY_LEN];
    put64(&mut b, 0, genctr);
    put64(&mut b, 8, entries.len() as u64);
    put16(&mut b, 16, 0); // RECFMT
    for (i, e) in entries.iter().enumerate() {
        let off = DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN;
        if let Some(slot) = b.get_mut(off..off + DISCOVERY_ENTRY_LEN) {
            e.encode_into(slot);
        }
    }
    b
}

/// (genctr, numrec) from a discovery log header.
pub fn parse_discovery_header(b: &[u8]) -> (u64, u64) {
    (le64(b, 0), le64(b, 8))
}

pub fn parse_discovery_entries(b: &[u8]) -> Vec<DiscoveryEntry> {
    b.chunks_exact(DISCOVERY_ENTRY_LEN)
        .map(DiscoveryEntry::parse)
        .collect()
}
