//! Hand-built host byte streams and a synchronous driver for a sans-I/O `TargetConn`, for
//! regression and fuzz tests of hostile input.
#![allow(dead_code)]

use nvmf::nvme::cmd::{Sgl, Sqe, io};
use nvmf::nvme::fabrics::{self, Connect, cc, prop};
use nvmf::pdu::{self, Decoder, DecoderCfg, Fes, IcReq, Pdu, WireCfg, fei};
use nvmf::target::{Target, TargetConn};
use std::sync::Arc;
use std::time::Instant;

pub fn wire(hdgst: bool, ddgst: bool) -> WireCfg {
    WireCfg {
        hdgst,
        ddgst,
        pda: 0,
    }
}

pub fn ic_req(out: &mut Vec<u8>, hdgst: bool, ddgst: bool) {
    pdu::encode_ic_req(
        out,
        &IcReq {
            pfv: 0,
            hpda: 0,
            hdgst,
            ddgst,
            maxr2t: 0,
        },
    );
}

pub fn connect(out: &mut Vec<u8>, w: &WireCfg, qid: u16, cntlid: u16, cid: u16) {
    let c = Connect {
        recfmt: 0,
        qid,
        sqsize: 31,
        cattr: 0,
        kato: 0,
        hostid: [3; 16],
        cntlid,
        subnqn: super::NQN.into(),
        hostnqn: super::HOSTNQN.into(),
    };
    let (mut sqe, data) = c.to_sqe();
    sqe.cid = cid;
    pdu::encode_capsule_cmd(out, &sqe.encode(), &data, w);
}

pub fn enable(out: &mut Vec<u8>, w: &WireCfg, cid: u16) {
    let mut s = fabrics::property_set(prop::CC, u64::from(cc::EN | cc::IOSQES_IOCQES), false);
    s.cid = cid;
    pdu::encode_capsule_cmd(out, &s.encode(), &[], w);
}

/// A Write of `nlb` 512-byte blocks; with `data` the data rides in the capsule, else the
/// SGL asks for R2T.
pub fn write_cmd(
    out: &mut Vec<u8>,
    w: &WireCfg,
    cid: u16,
    lba: u64,
    nlb: u32,
    data: Option<&[u8]>,
) {
    let mut s = Sqe::new(io::WRITE);
    s.cid = cid;
    s.nsid = 1;
    s.cdw10 = lba as u32;
    s.cdw11 = (lba >> 32) as u32;
    s.cdw12 = nlb - 1;
    let len = nlb * 512;
    match data {
        Some(d) => {
            s.dptr = Sgl::in_capsule(len);
            pdu::encode_capsule_cmd(out, &s.encode(), d, w);
        }
        None => {
            s.dptr = Sgl::transport(len);
            pdu::encode_capsule_cmd(out, &s.encode(), &[], w);
        }
    }
}

pub fn read_cmd(out: &mut Vec<u8>, w: &WireCfg, cid: u16, lba: u64, nlb: u32) {
    let mut s = Sqe::new(io::READ);
    s.cid = cid;
    s.nsid = 1;
    s.cdw10 = lba as u32;
    s.cdw12 = nlb - 1;
    s.dptr = Sgl::transport(nlb * 512);
    pdu::encode_capsule_cmd(out, &s.encode(), &[], w);
}

/// Feeds `input` in `chunks`-sized pieces, running backend I/O inline; returns every PDU
/// the target sent and whether it closed. Panics if the target's output is not valid.
pub fn drive(
    conn: &mut TargetConn,
    input: &[u8],
    chunk: usize,
    hdgst: bool,
    ddgst: bool,
) -> (Vec<Pdu>, bool) {
    drive_from(conn, input, chunk, hdgst, ddgst, false)
}

/// Like [`drive`], for a connection whose ICReq/ICResp exchange is already over.
pub fn drive_running(
    conn: &mut TargetConn,
    input: &[u8],
    hdgst: bool,
    ddgst: bool,
) -> (Vec<Pdu>, bool) {
    drive_from(conn, input, 1 << 20, hdgst, ddgst, true)
}

fn drive_from(
    conn: &mut TargetConn,
    input: &[u8],
    chunk: usize,
    hdgst: bool,
    ddgst: bool,
    ic_done: bool,
) -> (Vec<Pdu>, bool) {
    let mut dec = Decoder::new(DecoderCfg::host(16 << 20));
    dec.cfg.ic_done = ic_done;
    dec.cfg.hdgst = ic_done && hdgst;
    dec.cfg.ddgst = ic_done && ddgst;
    let mut outbuf = Vec::new();
    let mut pdus = Vec::new();
    let now = Instant::now();
    for piece in input.chunks(chunk.max(1)) {
        conn.handle_input(piece, now);
        pump(conn, &mut dec, &mut outbuf, &mut pdus, hdgst, ddgst);
        if conn.is_closed() {
            break;
        }
    }
    pump(conn, &mut dec, &mut outbuf, &mut pdus, hdgst, ddgst);
    (pdus, conn.is_closed())
}

fn pump(
    conn: &mut TargetConn,
    dec: &mut Decoder,
    outbuf: &mut Vec<u8>,
    pdus: &mut Vec<Pdu>,
    hdgst: bool,
    ddgst: bool,
) {
    loop {
        let mut progressed = false;
        while let Some(req) = conn.poll_io() {
            progressed = true;
            let (tx, rx) = std::sync::mpsc::channel();
            req.backend.submit(
                req.op,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            if let Ok(r) = rx.recv() {
                conn.complete_io(req.tag, r);
            }
        }
        if let Some(b) = conn.poll_transmit() {
            progressed = true;
            outbuf.extend_from_slice(&b);
        }
        if !progressed {
            break;
        }
    }
    loop {
        match dec.decode(outbuf) {
            Ok(Some((p, n))) => {
                outbuf.drain(..n);
                if matches!(p, Pdu::IcResp(_)) {
                    dec.cfg.ic_done = true;
                    dec.cfg.hdgst = hdgst;
                    dec.cfg.ddgst = ddgst;
                }
                pdus.push(p);
            }
            Ok(None) => break,
            Err(e) => panic!("target sent an invalid PDU: {e}"),
        }
    }
}

/// A target with one 512-byte-block RAM namespace and small limits.
pub fn small_target() -> Arc<Target> {
    super::target(
        nvmf::target::TargetConfig {
            maxh2cdata: 8192,
            in_capsule_data: 4096,
            c2h_chunk: 4096,
            ..Default::default()
        },
        512,
        1024,
        false,
    )
}

/// An admin connection that is connected and enabled, so I/O queues can attach to
/// controller `cntlid` (returned).
pub fn admin_conn(t: &Arc<Target>) -> (TargetConn, u16) {
    let mut c = TargetConn::new(t.clone(), Instant::now());
    let w = wire(false, false);
    let mut b = Vec::new();
    ic_req(&mut b, false, false);
    connect(&mut b, &w, 0, 0xFFFF, 1);
    enable(&mut b, &w, 2);
    let (pdus, closed) = drive(&mut c, &b, 1 << 20, false, false);
    assert!(!closed);
    let cntlid = pdus
        .iter()
        .find_map(|p| match p {
            Pdu::CapsuleResp(r) => Some(nvmf::nvme::Cqe::parse(&r.cqe).dw0 as u16),
            _ => None,
        })
        .unwrap();
    (c, cntlid)
}

/// The prefix of a valid I/O queue session: ICReq + Connect(qid 1).
pub fn io_prefix(cntlid: u16, hdgst: bool, ddgst: bool) -> Vec<u8> {
    let w = wire(hdgst, ddgst);
    let mut b = Vec::new();
    ic_req(&mut b, hdgst, ddgst);
    connect(&mut b, &w, 1, cntlid, 1);
    b
}

/// The TermReq the target sent last, as (FES, FEI).
pub fn term_of(pdus: &[Pdu]) -> Option<(u16, u32)> {
    pdus.iter().rev().find_map(|p| match p {
        Pdu::C2HTermReq(t) => Some((t.fes, t.fei)),
        _ => None,
    })
}

/// A named hostile input: what follows the valid prefix, the digests negotiated, and the
/// FES (and FEI where the spec fixes one) the TermReq must carry.
pub type BadInput = (&'static str, fn(&mut Vec<u8>), bool, bool, Fes, Option<u32>);

/// The named hostile inputs of issue 7, each to follow a valid I/O-queue prefix (ICReq,
/// Connect); each must end its connection with a TermReq of that FES (and FEI).
pub fn named_bad_inputs() -> Vec<BadInput> {
    vec![
        (
            "bad header length",
            |b| {
                let at = b.len();
                read_cmd(b, &wire(false, false), 5, 0, 1);
                b[at + 2] = 71;
            },
            false,
            false,
            Fes::InvalidHeaderField,
            Some(fei::HLEN),
        ),
        (
            "bad PDU length",
            |b| {
                let at = b.len();
                read_cmd(b, &wire(false, false), 5, 0, 1);
                b[at + 4..at + 8].copy_from_slice(&10u32.to_le_bytes());
            },
            false,
            false,
            Fes::InvalidHeaderField,
            Some(fei::PLEN),
        ),
        (
            "unknown PDU type",
            |b| b.extend_from_slice(&[0x7F, 0, 24, 0, 24, 0, 0, 0]),
            false,
            false,
            Fes::InvalidHeaderField,
            Some(fei::TYPE),
        ),
        (
            "ICResp from a host",
            |b| b.extend_from_slice(&[1, 0, 24, 0, 24, 0, 0, 0]),
            false,
            false,
            Fes::InvalidHeaderField,
            Some(fei::TYPE),
        ),
        (
            "bad header digest",
            |b| {
                read_cmd(b, &wire(true, false), 5, 0, 1);
                let n = b.len();
                b[n - 1] ^= 0xFF;
            },
            true,
            false,
            Fes::HeaderDigestError,
            None,
        ),
        (
            "bad data digest",
            |b| {
                write_cmd(b, &wire(false, true), 5, 0, 1, Some(&[0x5A; 512]));
                let n = b.len();
                b[n - 1] ^= 0x01;
            },
            false,
            true,
            Fes::HeaderDigestError,
            None,
        ),
        (
            "digest flag not negotiated",
            |b| read_cmd(b, &wire(true, false), 5, 0, 1),
            false,
            false,
            Fes::InvalidHeaderField,
            Some(fei::FLAGS),
        ),
        (
            "in-capsule data beyond the command",
            |b| {
                let mut s = Sqe::new(io::WRITE);
                s.cid = 5;
                s.nsid = 1;
                s.dptr = Sgl::in_capsule(512);
                pdu::encode_capsule_cmd(b, &s.encode(), &[1u8; 1024], &wire(false, false));
            },
            false,
            false,
            Fes::DataOutOfRange,
            None,
        ),
        (
            "H2CData beyond the command",
            |b| {
                let w = wire(false, false);
                write_cmd(b, &w, 5, 0, 2, None);
                pdu::encode_h2c_data(b, 5, 1, 0, &[2u8; 1536], true, &w);
            },
            false,
            false,
            Fes::DataOutOfRange,
            Some(fei::DATAL),
        ),
        (
            "out-of-order H2CData",
            |b| {
                let w = wire(false, false);
                write_cmd(b, &w, 5, 0, 4, None);
                pdu::encode_h2c_data(b, 5, 1, 0, &[2u8; 512], false, &w);
                pdu::encode_h2c_data(b, 5, 1, 1024, &[2u8; 512], false, &w);
            },
            false,
            false,
            Fes::DataOutOfRange,
            Some(fei::DATAO),
        ),
        (
            "H2CData for no R2T",
            |b| pdu::encode_h2c_data(b, 77, 1, 0, &[2u8; 512], true, &wire(false, false)),
            false,
            false,
            Fes::UnsupportedParameter,
            Some(fei::CCCID),
        ),
        (
            "oversize in-capsule data, refused from the header",
            |b| {
                b.extend_from_slice(&[4, 0, 72, 72]);
                b.extend_from_slice(&(72u32 + (1 << 20)).to_le_bytes());
            },
            false,
            false,
            Fes::DataLimitExceeded,
            None,
        ),
        (
            "in-capsule data just above the limit",
            |b| write_cmd(b, &wire(false, false), 5, 0, 9, Some(&[1u8; 4608])),
            false,
            false,
            Fes::DataLimitExceeded,
            None,
        ),
        (
            "huge H2CData, refused from the header",
            |b| {
                b.extend_from_slice(&[6, 0, 24, 24]);
                b.extend_from_slice(&u32::MAX.to_le_bytes());
            },
            false,
            false,
            Fes::DataLimitExceeded,
            None,
        ),
        (
            "a second ICReq",
            |b| ic_req(b, false, false),
            false,
            false,
            Fes::PduSequenceError,
            None,
        ),
    ]
}
