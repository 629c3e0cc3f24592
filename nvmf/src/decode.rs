//! The PDU stream decoder. It is fed the bytes received so far and returns one PDU at a
//! time; every field that sizes a buffer is checked against the negotiated limits while
//! only the 8-byte common header is known, so a peer can never make us wait for (or
//! allocate) more than one bounded PDU.

use crate::pdu::*;
use crate::wire::{le16, le32, u8_at};

/// What the receiving side accepts.
#[derive(Debug, Clone)]
pub struct DecoderCfg {
    /// True on the controller side: accept host PDUs (ICReq, CapsuleCmd, H2CData, H2CTermReq).
    pub controller: bool,
    /// Whether the ICReq/ICResp exchange is over; before it only the IC PDU is accepted.
    pub ic_done: bool,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Largest in-capsule data accepted (controller side).
    pub max_capsule_data: usize,
    /// Largest data in one H2CData (our MAXH2CDATA) or C2HData PDU.
    pub max_data_pdu: usize,
}

impl DecoderCfg {
    pub fn controller(max_capsule_data: usize, maxh2cdata: usize) -> Self {
        Self {
            controller: true,
            ic_done: false,
            hdgst: false,
            ddgst: false,
            max_capsule_data,
            max_data_pdu: maxh2cdata,
        }
    }

    pub fn host(max_c2h_data: usize) -> Self {
        Self {
            controller: false,
            ic_done: false,
            hdgst: false,
            ddgst: false,
            max_capsule_data: 0,
            max_data_pdu: max_c2h_data,
        }
    }
}

/// A fatal protocol error: the connection must end with a TermReq carrying `fes`/`fei`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NVMe/TCP protocol error {fes:?} at offset {fei}: {reason}")]
pub struct DecodeError {
    pub fes: Fes,
    pub fei: u32,
    /// The offending PDU's header (as much of it as arrived), for the TermReq data.
    pub header: Vec<u8>,
    pub reason: &'static str,
}

/// Stateless apart from its configuration; the caller owns the receive buffer.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub cfg: DecoderCfg,
}

fn err(buf: &[u8], hlen: usize, fes: Fes, fei: u32, reason: &'static str) -> DecodeError {
    let n = buf.len().min(hlen).min(TERM_MAX_DATA);
    DecodeError {
        fes,
        fei,
        header: buf.get(..n).unwrap_or(&[]).to_vec(),
        reason,
    }
}

/// Layout of a PDU whose common header passed the checks.
struct Layout {
    ty: PduType,
    flags: u8,
    hlen: usize,
    plen: usize,
    /// Start and length of the data, if any.
    data: Option<(usize, usize)>,
    hdgst: bool,
    ddgst: bool,
}

impl Decoder {
    pub fn new(cfg: DecoderCfg) -> Self {
        Self { cfg }
    }

    /// Decodes the PDU at the front of `buf`. `Ok(None)` means more bytes are needed (never
    /// more than the bound checked from the common header); `Ok(Some((pdu, n)))` consumed
    /// `n` bytes.
    pub fn decode(&self, buf: &[u8]) -> Result<Option<(Pdu, usize)>, DecodeError> {
        if buf.len() < CH_LEN {
            return Ok(None);
        }
        let l = self.check_common(buf)?;
        if buf.len() < l.plen {
            return Ok(None);
        }
        let pdu_bytes = buf.get(..l.plen).unwrap_or(&[]);
        if l.hdgst {
            let hd = pdu_bytes.get(..l.hlen).unwrap_or(&[]);
            let got = le32(pdu_bytes, l.hlen);
            if crc32c::crc32c(hd) != got {
                return Err(err(buf, l.hlen, Fes::HeaderDigestError, 0, "header digest"));
            }
        }
        let data: &[u8] = match l.data {
            Some((off, len)) => {
                let d = pdu_bytes.get(off..off.saturating_add(len)).unwrap_or(&[]);
                if l.ddgst {
                    let got = le32(pdu_bytes, off.saturating_add(len));
                    if crc32c::crc32c(d) != got {
                        return Err(err(buf, l.hlen, Fes::HeaderDigestError, 0, "data digest"));
                    }
                }
                d
            }
            None => &[],
        };
        let pdu = self.parse(pdu_bytes, &l, data)?;
        Ok(Some((pdu, l.plen)))
    }

    fn check_common(&self, buf: &[u8]) -> Result<Layout, DecodeError> {
        let c = &self.cfg;
        let raw_ty = u8_at(buf, 0);
        let fl = u8_at(buf, 1);
        let hlen = usize::from(u8_at(buf, 2));
        let pdo = usize::from(u8_at(buf, 3));
        // u32 always fits usize on the targets we support; saturate defensively.
        let plen = usize::try_from(le32(buf, 4)).unwrap_or(usize::MAX);
        let Some(ty) = PduType::from_u8(raw_ty) else {
            return Err(err(
                buf,
                CH_LEN,
                Fes::InvalidHeaderField,
                fei::TYPE,
                "unknown PDU type",
            ));
        };
        if ty.from_host() != c.controller {
            return Err(err(
                buf,
                CH_LEN,
                Fes::InvalidHeaderField,
                fei::TYPE,
                "PDU from the wrong side",
            ));
        }
        let is_ic = matches!(ty, PduType::IcReq | PduType::IcResp);
        let is_term = matches!(ty, PduType::H2CTermReq | PduType::C2HTermReq);
        if is_ic == c.ic_done && !is_term {
            return Err(err(
                buf,
                CH_LEN,
                Fes::PduSequenceError,
                0,
                "PDU out of sequence",
            ));
        }
        if hlen != ty.hlen() {
            return Err(err(
                buf,
                CH_LEN,
                Fes::InvalidHeaderField,
                fei::HLEN,
                "bad header length",
            ));
        }
        let mk = |data, hdgst, ddgst| Layout {
            ty,
            flags: fl,
            hlen,
            plen,
            data,
            hdgst,
            ddgst,
        };
        if is_ic {
            if plen != IC_LEN {
                return Err(err(
                    buf,
                    CH_LEN,
                    Fes::InvalidHeaderField,
                    fei::PLEN,
                    "bad IC PDU length",
                ));
            }
            return Ok(mk(None, false, false));
        }
        if is_term {
            if !(TERM_HLEN..=TERM_MAX_PLEN).contains(&plen) {
                return Err(err(
                    buf,
                    CH_LEN,
                    Fes::InvalidHeaderField,
                    fei::PLEN,
                    "bad TermReq length",
                ));
            }
            let data = (plen > TERM_HLEN).then_some((TERM_HLEN, plen - TERM_HLEN));
            return Ok(mk(data, false, false));
        }
        let hdgst = fl & flags::HDGSTF != 0;
        if hdgst != c.hdgst {
            return Err(err(
                buf,
                CH_LEN,
                Fes::InvalidHeaderField,
                fei::FLAGS,
                "header digest flag",
            ));
        }
        let hd_end = hlen + if hdgst { DIGEST_LEN } else { 0 };
        if plen < hd_end {
            return Err(err(
                buf,
                CH_LEN,
                Fes::InvalidHeaderField,
                fei::PLEN,
                "PDU shorter than header",
            ));
        }
        let ddgst_flag = fl & flags::DDGSTF != 0;
        if ddgst_flag && !c.ddgst {
            return Err(err(
                buf,
                CH_LEN,
                Fes::InvalidHeaderField,
                fei::FLAGS,
                "data digest flag",
            ));
        }
        let may_carry = matches!(
            ty,
            PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData
        );
        let must_carry = matches!(ty, PduType::H2CData | PduType::C2HData);
        if plen == hd_end {
            if must_carry {
                return Err(err(
                    buf,
                    CH_LEN,
                    Fes::InvalidHeaderField,
                    fei::PLEN,
                    "data PDU without data",
                ));
            }
            return Ok(mk(None, hdgst, false));
        }
        if !may_carry {
            return Err(err(
                buf,
                CH_LEN,
                Fes::InvalidHeaderField,
                fei::PLEN,
                "PDU length beyond header",
            ));
        }
        if c.ddgst && !ddgst_flag {
            return Err(err(
                buf,
                CH_LEN,
                Fes::InvalidHeaderField,
                fei::FLAGS,
                "data digest flag",
            ));
        }
        let dd_len = if ddgst_flag { DIGEST_LEN } else { 0 };
        if pdo < hd_end || pdo.saturating_add(dd_len) >= plen {
            return Err(err(
                buf,
                CH_LEN,
                Fes::InvalidHeaderField,
                fei::PDO,
                "bad data offset",
            ));
        }
        let data_len = plen - pdo - dd_len;
        let limit = if ty == PduType::CapsuleCmd {
            c.max_capsule_data
        } else {
            c.max_data_pdu
        };
        if data_len > limit {
            return Err(err(
                buf,
                CH_LEN,
                Fes::DataLimitExceeded,
                fei::PLEN,
                "PDU data above the limit",
            ));
        }
        Ok(mk(Some((pdo, data_len)), hdgst, ddgst_flag))
    }

    fn parse(&self, b: &[u8], l: &Layout, data: &[u8]) -> Result<Pdu, DecodeError> {
        let e = |fes, fei, reason| err(b, l.hlen, fes, fei, reason);
        Ok(match l.ty {
            PduType::IcReq => {
                let pfv = le16(b, 8);
                if pfv != 0 {
                    return Err(e(Fes::InvalidHeaderField, fei::IC_PFV, "unsupported PFV"));
                }
                let hpda = u8_at(b, 10);
                if hpda > 31 {
                    return Err(e(Fes::InvalidHeaderField, fei::IC_PDA, "HPDA above 31"));
                }
                let dg = u8_at(b, 11);
                Pdu::IcReq(IcReq {
                    pfv,
                    hpda,
                    hdgst: dg & 1 != 0,
                    ddgst: dg & 2 != 0,
                    maxr2t: le32(b, 12),
                })
            }
            PduType::IcResp => {
                let pfv = le16(b, 8);
                if pfv != 0 {
                    return Err(e(Fes::InvalidHeaderField, fei::IC_PFV, "unsupported PFV"));
                }
                let cpda = u8_at(b, 10);
                if cpda > 31 {
                    return Err(e(Fes::InvalidHeaderField, fei::IC_PDA, "CPDA above 31"));
                }
                let maxh2cdata = le32(b, 12);
                if maxh2cdata < 4096 || !maxh2cdata.is_multiple_of(4) {
                    return Err(e(
                        Fes::InvalidHeaderField,
                        fei::IC_MAXH2CDATA,
                        "bad MAXH2CDATA",
                    ));
                }
                let dg = u8_at(b, 11);
                Pdu::IcResp(IcResp {
                    pfv,
                    cpda,
                    hdgst: dg & 1 != 0,
                    ddgst: dg & 2 != 0,
                    maxh2cdata,
                })
            }
            PduType::H2CTermReq | PduType::C2HTermReq => {
                let t = TermReq {
                    fes: le16(b, 8),
                    fei: le32(b, 10),
                    data: data.to_vec(),
                };
                if l.ty == PduType::H2CTermReq {
                    Pdu::H2CTermReq(t)
                } else {
                    Pdu::C2HTermReq(t)
                }
            }
            PduType::CapsuleCmd => {
                let mut sqe = [0u8; 64];
                if let Some(s) = b.get(CH_LEN..CH_LEN + 64) {
                    sqe.copy_from_slice(s);
                }
                Pdu::CapsuleCmd(CapsuleCmd {
                    sqe,
                    data: data.to_vec(),
                })
            }
            PduType::CapsuleResp => {
                let mut cqe = [0u8; 16];
                if let Some(s) = b.get(CH_LEN..CH_LEN + 16) {
                    cqe.copy_from_slice(s);
                }
                Pdu::CapsuleResp(CapsuleResp { cqe })
            }
            PduType::H2CData | PduType::C2HData => {
                let datal = le32(b, 16);
                if usize::try_from(datal).ok() != Some(data.len()) {
                    return Err(e(
                        Fes::InvalidHeaderField,
                        fei::DATAL,
                        "DATAL disagrees with PLEN",
                    ));
                }
                let last = l.flags & flags::LAST_PDU != 0;
                if l.ty == PduType::H2CData {
                    Pdu::H2CData(H2CData {
                        cccid: le16(b, 8),
                        ttag: le16(b, 10),
                        datao: le32(b, 12),
                        last,
                        data: data.to_vec(),
                    })
                } else {
                    let success = l.flags & flags::SUCCESS != 0;
                    if success && !last {
                        return Err(e(
                            Fes::InvalidHeaderField,
                            fei::FLAGS,
                            "SUCCESS without LAST_PDU",
                        ));
                    }
                    Pdu::C2HData(C2HData {
                        cccid: le16(b, 8),
                        datao: le32(b, 12),
                        last,
                        success,
                        data: data.to_vec(),
                    })
                }
            }
            PduType::R2T => Pdu::R2T(R2T {
                cccid: le16(b, 8),
                ttag: le16(b, 10),
                r2to: le32(b, 12),
                r2tl: le32(b, 16),
            }),
        })
    }
}
