//! NVMe/TCP PDUs (NVMe/TCP transport specification 1.0): encoding, and a stream decoder
//! that validates the common header (type, lengths, digest flags, data offset) before it
//! waits for the rest of a PDU, so a hostile length can never make us buffer or allocate
//! more than the negotiated limits.

use crate::wire::{put16, put32};

pub const CH_LEN: usize = 8;
pub const DIGEST_LEN: usize = 4;
pub const IC_LEN: usize = 128;
pub const CMD_HLEN: usize = 72;
pub const RESP_HLEN: usize = 24;
pub const DATA_HLEN: usize = 24;
pub const R2T_HLEN: usize = 24;
pub const TERM_HLEN: usize = 24;
/// A TermReq carries at most the offending PDU's header (the spec caps the PDU at 152 bytes).
pub const TERM_MAX_DATA: usize = 128;
pub const TERM_MAX_PLEN: usize = TERM_HLEN + TERM_MAX_DATA;

/// Common-header flag bits.
pub mod flags {
    pub const HDGSTF: u8 = 0x01;
    pub const DDGSTF: u8 = 0x02;
    pub const LAST_PDU: u8 = 0x04;
    pub const SUCCESS: u8 = 0x08;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0,
    IcResp = 1,
    H2CTermReq = 2,
    C2HTermReq = 3,
    CapsuleCmd = 4,
    CapsuleResp = 5,
    H2CData = 6,
    C2HData = 7,
    R2T = 9,
}

impl PduType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::IcReq,
            1 => Self::IcResp,
            2 => Self::H2CTermReq,
            3 => Self::C2HTermReq,
            4 => Self::CapsuleCmd,
            5 => Self::CapsuleResp,
            6 => Self::H2CData,
            7 => Self::C2HData,
            9 => Self::R2T,
            _ => return None,
        })
    }

    /// The only header length the spec allows for this type.
    pub fn hlen(self) -> usize {
        match self {
            Self::IcReq | Self::IcResp => IC_LEN,
            Self::H2CTermReq | Self::C2HTermReq => TERM_HLEN,
            Self::CapsuleCmd => CMD_HLEN,
            Self::CapsuleResp => RESP_HLEN,
            Self::H2CData | Self::C2HData => DATA_HLEN,
            Self::R2T => R2T_HLEN,
        }
    }

    /// Whether the PDU is sent by the host (as opposed to the controller).
    pub fn from_host(self) -> bool {
        matches!(
            self,
            Self::IcReq | Self::H2CTermReq | Self::CapsuleCmd | Self::H2CData
        )
    }

    /// ICReq/ICResp and TermReqs never carry digests.
    fn digests_apply(self) -> bool {
        !matches!(
            self,
            Self::IcReq | Self::IcResp | Self::H2CTermReq | Self::C2HTermReq
        )
    }
}

/// Fatal Error Status of a TermReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Fes {
    InvalidHeaderField = 1,
    PduSequenceError = 2,
    /// Also used for data digest errors, as SPDK's target does.
    HeaderDigestError = 3,
    DataOutOfRange = 4,
    DataLimitExceeded = 5,
    UnsupportedParameter = 6,
}

/// Byte offsets within headers, reported as the Fatal Error Information.
pub mod fei {
    pub const TYPE: u32 = 0;
    pub const FLAGS: u32 = 1;
    pub const HLEN: u32 = 2;
    pub const PDO: u32 = 3;
    pub const PLEN: u32 = 4;
    pub const IC_PFV: u32 = 8;
    pub const IC_PDA: u32 = 10;
    pub const IC_MAXH2CDATA: u32 = 12;
    pub const CCCID: u32 = 8;
    pub const TTAG: u32 = 10;
    pub const DATAO: u32 = 12;
    pub const DATAL: u32 = 16;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    pub hpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Zero-based: 0 means one outstanding R2T per command.
    pub maxr2t: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    pub cpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    pub maxh2cdata: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermReq {
    pub fes: u16,
    pub fei: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleCmd {
    pub sqe: [u8; 64],
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleResp {
    pub cqe: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2CData {
    pub cccid: u16,
    pub ttag: u16,
    pub datao: u32,
    pub last: bool,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2HData {
    pub cccid: u16,
    pub datao: u32,
    pub last: bool,
    pub success: bool,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2T {
    pub cccid: u16,
    pub ttag: u16,
    pub r2to: u32,
    pub r2tl: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2CData(H2CData),
    C2HData(C2HData),
    R2T(R2T),
}

/// What the sender negotiated: digests, and the receiver's requested data alignment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireCfg {
    pub hdgst: bool,
    pub ddgst: bool,
    /// The peer's PDU data alignment (zero-based, in dwords): HPDA for C2H, CPDA for H2C.
    pub pda: u8,
}

fn digest(b: &[u8]) -> [u8; 4] {
    crc32c::crc32c(b).to_le_bytes()
}

/// Appends one PDU. `specific` is the header past the common header; data is optional.
fn encode_raw(
    out: &mut Vec<u8>,
    ty: PduType,
    extra_flags: u8,
    specific: &[u8],
    data: &[u8],
    cfg: &WireCfg,
) {
    encode_raw_parts(out, ty, extra_flags, specific, data, cfg, true);
}

/// Encodes a PDU; without `copy_data` the data's bytes are left out and the offset of
/// `out` where they belong (before the data digest, which is written) is returned, for a
/// driver that sends them from their own buffer.
fn encode_raw_parts(
    out: &mut Vec<u8>,
    ty: PduType,
    extra_flags: u8,
    specific: &[u8],
    data: &[u8],
    cfg: &WireCfg,
    copy_data: bool,
) -> usize {
    let dg = ty.digests_apply();
    let hdgst = cfg.hdgst && dg;
    let ddgst = cfg.ddgst && dg && !data.is_empty();
    let hlen = CH_LEN + specific.len();
    let hd_end = hlen + if hdgst { DIGEST_LEN } else { 0 };
    let (pdo, plen) = if data.is_empty() {
        (0, hd_end)
    } else {
        let align = (usize::from(cfg.pda.min(31)) + 1) * 4;
        let pdo = hd_end.div_ceil(align) * align;
        (pdo, pdo + data.len() + if ddgst { DIGEST_LEN } else { 0 })
    };
    let mut fl = extra_flags;
    if hdgst {
        fl |= flags::HDGSTF;
    }
    if ddgst {
        fl |= flags::DDGSTF;
    }
    let start = out.len();
    out.reserve(plen);
    out.push(ty as u8);
    out.push(fl);
    out.push(u8::try_from(hlen).unwrap_or(u8::MAX));
    out.push(u8::try_from(pdo).unwrap_or(u8::MAX));
    out.extend_from_slice(&u32::try_from(plen).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(specific);
    if hdgst {
        let d = digest(&out[start..start + hlen]);
        out.extend_from_slice(&d);
    }
    let mut at = out.len();
    if !data.is_empty() {
        out.resize(start + pdo, 0);
        at = out.len();
        if copy_data {
            out.extend_from_slice(data);
        }
        if ddgst {
            out.extend_from_slice(&digest(data));
        }
    }
    at
}

pub fn encode_ic_req(out: &mut Vec<u8>, r: &IcReq) {
    let mut s = [0u8; IC_LEN - CH_LEN];
    put16(&mut s, 0, r.pfv);
    s[2] = r.hpda;
    s[3] = u8::from(r.hdgst) | (u8::from(r.ddgst) << 1);
    put32(&mut s, 4, r.maxr2t);
    encode_raw(out, PduType::IcReq, 0, &s, &[], &WireCfg::default());
}

pub fn encode_ic_resp(out: &mut Vec<u8>, r: &IcResp) {
    let mut s = [0u8; IC_LEN - CH_LEN];
    put16(&mut s, 0, r.pfv);
    s[2] = r.cpda;
    s[3] = u8::from(r.hdgst) | (u8::from(r.ddgst) << 1);
    put32(&mut s, 4, r.maxh2cdata);
    encode_raw(out, PduType::IcResp, 0, &s, &[], &WireCfg::default());
}

/// `from_host` selects H2CTermReq (host) or C2HTermReq (controller).
pub fn encode_term_req(out: &mut Vec<u8>, from_host: bool, fes: Fes, fei: u32, header: &[u8]) {
    let mut s = [0u8; TERM_HLEN - CH_LEN];
    put16(&mut s, 0, fes as u16);
    put32(&mut s, 2, fei);
    let ty = if from_host {
        PduType::H2CTermReq
    } else {
        PduType::C2HTermReq
    };
    let data = &header[..header.len().min(TERM_MAX_DATA)];
    // TermReq data directly follows the header: no digest, no alignment padding.
    encode_raw(out, ty, 0, &s, data, &WireCfg::default());
}

pub fn encode_capsule_cmd(out: &mut Vec<u8>, sqe: &[u8; 64], data: &[u8], cfg: &WireCfg) {
    encode_raw(out, PduType::CapsuleCmd, 0, sqe, data, cfg);
}

pub fn encode_capsule_resp(out: &mut Vec<u8>, cqe: &[u8; 16], cfg: &WireCfg) {
    encode_raw(out, PduType::CapsuleResp, 0, cqe, &[], cfg);
}

pub fn encode_h2c_data(
    out: &mut Vec<u8>,
    cccid: u16,
    ttag: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    cfg: &WireCfg,
) {
    let mut s = [0u8; DATA_HLEN - CH_LEN];
    put16(&mut s, 0, cccid);
    put16(&mut s, 2, ttag);
    put32(&mut s, 4, datao);
    put32(&mut s, 8, u32::try_from(data.len()).unwrap_or(u32::MAX));
    let fl = if last { flags::LAST_PDU } else { 0 };
    encode_raw(out, PduType::H2CData, fl, &s, data, cfg);
}

pub fn encode_c2h_data(
    out: &mut Vec<u8>,
    cccid: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    success: bool,
    cfg: &WireCfg,
) {
    encode_c2h_data_parts(out, cccid, datao, data, last, success, cfg, true);
}

/// As [`encode_c2h_data`] without the data itself: `data`'s bytes belong at the returned
/// offset of `out` (a gather send takes them from their buffer, saving a copy).
pub fn encode_c2h_data_header(
    out: &mut Vec<u8>,
    cccid: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    success: bool,
    cfg: &WireCfg,
) -> usize {
    encode_c2h_data_parts(out, cccid, datao, data, last, success, cfg, false)
}

#[allow(clippy::too_many_arguments)]
fn encode_c2h_data_parts(
    out: &mut Vec<u8>,
    cccid: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    success: bool,
    cfg: &WireCfg,
    copy_data: bool,
) -> usize {
    let mut s = [0u8; DATA_HLEN - CH_LEN];
    put16(&mut s, 0, cccid);
    put32(&mut s, 4, datao);
    put32(&mut s, 8, u32::try_from(data.len()).unwrap_or(u32::MAX));
    let mut fl = if last { flags::LAST_PDU } else { 0 };
    if success && last {
        fl |= flags::SUCCESS;
    }
    encode_raw_parts(out, PduType::C2HData, fl, &s, data, cfg, copy_data)
}

pub fn encode_r2t(out: &mut Vec<u8>, r: &R2T, cfg: &WireCfg) {
    let mut s = [0u8; R2T_HLEN - CH_LEN];
    put16(&mut s, 0, r.cccid);
    put16(&mut s, 2, r.ttag);
    put32(&mut s, 4, r.r2to);
    put32(&mut s, 8, r.r2tl);
    encode_raw(out, PduType::R2T, 0, &s, &[], cfg);
}

impl Pdu {
    /// Encodes any PDU; `from_host` picks the TermReq flavour implied by the variant.
    pub fn encode(&self, out: &mut Vec<u8>, cfg: &WireCfg) {
        match self {
            Pdu::IcReq(r) => encode_ic_req(out, r),
            Pdu::IcResp(r) => encode_ic_resp(out, r),
            Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => {
                let mut s = [0u8; TERM_HLEN - CH_LEN];
                put16(&mut s, 0, t.fes);
                put32(&mut s, 2, t.fei);
                let ty = if matches!(self, Pdu::H2CTermReq(_)) {
                    PduType::H2CTermReq
                } else {
                    PduType::C2HTermReq
                };
                let d = &t.data[..t.data.len().min(TERM_MAX_DATA)];
                encode_raw(out, ty, 0, &s, d, &WireCfg::default());
            }
            Pdu::CapsuleCmd(c) => encode_capsule_cmd(out, &c.sqe, &c.data, cfg),
            Pdu::CapsuleResp(c) => encode_capsule_resp(out, &c.cqe, cfg),
            Pdu::H2CData(d) => encode_h2c_data(out, d.cccid, d.ttag, d.datao, &d.data, d.last, cfg),
            Pdu::C2HData(d) => {
                encode_c2h_data(out, d.cccid, d.datao, &d.data, d.last, d.success, cfg)
            }
            Pdu::R2T(r) => encode_r2t(out, r, cfg),
        }
    }
}

pub use crate::decode::{DecodeError, Decoder, DecoderCfg};
