//! Submission/completion queue entries, SGL descriptors, opcodes and status codes.

use crate::wire::{le16, le32, le64, put_bytes, put16, put32, put64, u8_at};

/// Admin opcodes.
pub mod admin {
    pub const DELETE_SQ: u8 = 0x00;
    pub const CREATE_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_CQ: u8 = 0x04;
    pub const CREATE_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const FABRICS: u8 = 0x7F;
}

/// NVM command set opcodes.
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// SGL descriptor identifiers (type << 4 | subtype) used by NVMe/TCP.
pub mod sgl {
    /// Data block, offset addressing: data in the capsule.
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport SGL data block: data moved by R2T/H2CData or C2HData.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5A;
}

/// SQE flags byte (CDW0 bits 15:8): PSDT in bits 7:6. NVMe-oF commands must say
/// 01b, "SGLs, MPTR is a contiguous buffer"; Linux nvmet fails any other value with
/// Invalid Field (even Connect), SPDK's host and Linux's host always send 01b.
pub mod flags {
    pub const PSDT_MASK: u8 = 0xC0;
    pub const PSDT_SGL_MPTR_CONTIG: u8 = 0x40;
}

/// A 16-byte SGL descriptor (DPTR for Fabrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sgl {
    pub addr: u64,
    pub len: u32,
    pub id: u8,
}

impl Sgl {
    pub fn in_capsule(len: u32) -> Self {
        Self {
            addr: 0,
            len,
            id: sgl::DATA_BLOCK_OFFSET,
        }
    }
    pub fn transport(len: u32) -> Self {
        Self {
            addr: 0,
            len,
            id: sgl::TRANSPORT_DATA_BLOCK,
        }
    }
}

/// A submission queue entry (64 bytes). Fields not named are carried in `cdw*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sqe {
    pub opcode: u8,
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub dptr: Sgl,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

impl Sqe {
    pub fn new(opcode: u8) -> Self {
        Self {
            opcode,
            ..Self::default()
        }
    }

    pub fn parse(b: &[u8; 64]) -> Self {
        Self {
            opcode: u8_at(b, 0),
            flags: u8_at(b, 1),
            cid: le16(b, 2),
            nsid: le32(b, 4),
            cdw2: le32(b, 8),
            cdw3: le32(b, 12),
            mptr: le64(b, 16),
            dptr: Sgl {
                addr: le64(b, 24),
                len: le32(b, 32),
                id: u8_at(b, 39),
            },
            cdw10: le32(b, 40),
            cdw11: le32(b, 44),
            cdw12: le32(b, 48),
            cdw13: le32(b, 52),
            cdw14: le32(b, 56),
            cdw15: le32(b, 60),
        }
    }

    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = self.opcode;
        b[1] = self.flags;
        put16(&mut b, 2, self.cid);
        put32(&mut b, 4, self.nsid);
        put32(&mut b, 8, self.cdw2);
        put32(&mut b, 12, self.cdw3);
        put64(&mut b, 16, self.mptr);
        put64(&mut b, 24, self.dptr.addr);
        put32(&mut b, 32, self.dptr.len);
        b[39] = self.dptr.id;
        for (i, v) in [
            self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15,
        ]
        .iter()
        .enumerate()
        {
            put32(&mut b, 40 + 4 * i, *v);
        }
        b
    }

    /// Fabrics command type (byte 4 of a Fabrics SQE, which overlays NSID).
    pub fn fctype(&self) -> u8 {
        (self.nsid & 0xFF) as u8
    }
}

/// A completion status: status code type and status code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Status {
    pub const SUCCESS: Status = Status::generic(0x00);
    pub const INVALID_OPCODE: Status = Status::generic(0x01).no_retry();
    pub const INVALID_FIELD: Status = Status::generic(0x02).no_retry();
    pub const CID_CONFLICT: Status = Status::generic(0x03).no_retry();
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL_ERROR: Status = Status::generic(0x06);
    pub const ABORT_REQUESTED: Status = Status::generic(0x07);
    pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0B).no_retry();
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0C).no_retry();
    pub const SGL_LENGTH_INVALID: Status = Status::generic(0x0F).no_retry();
    pub const SGL_TYPE_INVALID: Status = Status::generic(0x11).no_retry();
    pub const INVALID_SGL_OFFSET: Status = Status::generic(0x16).no_retry();
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22);
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80).no_retry();
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81).no_retry();
    pub const NAMESPACE_NOT_READY: Status = Status::generic(0x82);
    // Command specific (SCT 1).
    pub const INVALID_QUEUE_ID: Status = Status::specific(0x01);
    pub const ABORT_LIMIT_EXCEEDED: Status = Status::specific(0x03);
    pub const AER_LIMIT_EXCEEDED: Status = Status::specific(0x05);
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09);
    pub const FEATURE_NOT_CHANGEABLE: Status = Status::specific(0x0E);
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::specific(0x80);
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::specific(0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::specific(0x82);
    pub const CONNECT_INVALID_HOST: Status = Status::specific(0x84);
    // Media errors (SCT 2).
    pub const WRITE_FAULT: Status = Status {
        sct: 2,
        sc: 0x80,
        dnr: false,
    };
    pub const UNRECOVERED_READ_ERROR: Status = Status {
        sct: 2,
        sc: 0x81,
        dnr: false,
    };

    pub const fn generic(sc: u8) -> Self {
        Self {
            sct: 0,
            sc,
            dnr: false,
        }
    }
    pub const fn specific(sc: u8) -> Self {
        Self {
            sct: 1,
            sc,
            dnr: true,
        }
    }
    pub const fn no_retry(self) -> Self {
        Self { dnr: true, ..self }
    }
    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 15 status bits as in CQE DW3[31:17] (without the phase bit).
    pub fn to_field(self) -> u16 {
        (u16::from(self.sc) << 1) | (u16::from(self.sct & 7) << 9) | (u16::from(self.dnr) << 15)
    }

    pub fn from_field(v: u16) -> Self {
        Self {
            sc: ((v >> 1) & 0xFF) as u8,
            sct: ((v >> 9) & 7) as u8,
            dnr: v & 0x8000 != 0,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sct {:#x} sc {:#04x}", self.sct, self.sc)
    }
}

/// A completion queue entry (16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl Cqe {
    pub fn parse(b: &[u8; 16]) -> Self {
        Self {
            dw0: le32(b, 0),
            dw1: le32(b, 4),
            sqhd: le16(b, 8),
            sqid: le16(b, 10),
            cid: le16(b, 12),
            status: Status::from_field(le16(b, 14)),
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put32(&mut b, 0, self.dw0);
        put32(&mut b, 4, self.dw1);
        put16(&mut b, 8, self.sqhd);
        put16(&mut b, 10, self.sqid);
        put16(&mut b, 12, self.cid);
        put16(&mut b, 14, self.status.to_field());
        b
    }

    /// The 64-bit result of Property Get (DW0 | DW1 << 32).
    pub fn result64(&self) -> u64 {
        u64::from(self.dw0) | (u64::from(self.dw1) << 32)
    }
}

/// One Dataset Management range (16 bytes each in the command's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsmRange {
    pub attributes: u32,
    pub nlb: u32,
    pub slba: u64,
}

impl DsmRange {
    pub fn parse_all(data: &[u8], count: usize) -> Vec<DsmRange> {
        data.chunks_exact(16)
            .take(count)
            .map(|c| DsmRange {
                attributes: le32(c, 0),
                nlb: le32(c, 4),
                slba: le64(c, 8),
            })
            .collect()
    }

    pub fn encode_all(ranges: &[DsmRange]) -> Vec<u8> {
        let mut out = vec![0u8; ranges.len() * 16];
        for (i, r) in ranges.iter().enumerate() {
            let mut e = [0u8; 16];
            put32(&mut e, 0, r.attributes);
            put32(&mut e, 4, r.nlb);
            put64(&mut e, 8, r.slba);
            put_bytes(&mut out, i * 16, &e);
        }
        out
    }
}
