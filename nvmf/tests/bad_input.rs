//! Named regression cases for hostile input: each ends the offending connection with a
//! C2HTermReq carrying the right FES, never panics, and leaves other connections working.

mod common;
use common::raw::{
    admin_conn, drive, ic_req, io_prefix, read_cmd, small_target, term_of, wire, write_cmd,
};
use common::*;
use nvmf::driver::{ConnectOptions, TargetServer};
use nvmf::nvme::Cqe;
use nvmf::pdu::{self, Fes, Pdu};
use nvmf::target::TargetConn;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Runs `bad` after a valid I/O-queue prefix; returns (FES, FEI) of the TermReq.
fn io_case(bad: impl FnOnce(&mut Vec<u8>), hdgst: bool, ddgst: bool) -> (u16, u32) {
    let t = small_target();
    let (_admin, cntlid) = admin_conn(&t);
    let mut c = TargetConn::new(t.clone(), Instant::now());
    let mut b = io_prefix(cntlid, hdgst, ddgst);
    bad(&mut b);
    let (pdus, closed) = drive(&mut c, &b, 1 << 20, hdgst, ddgst);
    assert!(closed, "connection must end; got {pdus:?}");
    // The Connect itself succeeded before the hostile PDU.
    assert!(
        pdus.iter()
            .any(|p| matches!(p, Pdu::CapsuleResp(r) if Cqe::parse(&r.cqe).status.is_success()))
    );
    term_of(&pdus).expect("a C2HTermReq")
}

#[test]
fn bad_header_length() {
    let r = io_case(
        |b| {
            let start = b.len();
            read_cmd(b, &wire(false, false), 5, 0, 1);
            b[start + 2] = 71;
        },
        false,
        false,
    );
    assert_eq!(r, (Fes::InvalidHeaderField as u16, pdu::fei::HLEN));
}

#[test]
fn bad_pdu_length() {
    let r = io_case(
        |b| {
            let start = b.len();
            read_cmd(b, &wire(false, false), 5, 0, 1);
            b[start + 4..start + 8].copy_from_slice(&10u32.to_le_bytes());
        },
        false,
        false,
    );
    assert_eq!(r, (Fes::InvalidHeaderField as u16, pdu::fei::PLEN));
}

#[test]
fn unknown_pdu_type() {
    for ty in [8u8, 10, 0x7F, 0xFF, 1 /* ICResp from a host */] {
        let r = io_case(
            |b| b.extend_from_slice(&[ty, 0, 24, 0, 24, 0, 0, 0]),
            false,
            false,
        );
        assert_eq!(
            r,
            (Fes::InvalidHeaderField as u16, pdu::fei::TYPE),
            "type {ty}"
        );
    }
}

#[test]
fn bad_header_digest() {
    let r = io_case(
        |b| {
            let start = b.len();
            read_cmd(b, &wire(true, false), 5, 0, 1);
            let n = b.len();
            b[n - 1] ^= 0xFF; // the header digest is the last 4 bytes of a data-less capsule
            let _ = start;
        },
        true,
        false,
    );
    assert_eq!(r.0, Fes::HeaderDigestError as u16);
}

#[test]
fn bad_data_digest() {
    let r = io_case(
        |b| {
            write_cmd(b, &wire(false, true), 5, 0, 1, Some(&[0x5A; 512]));
            let n = b.len();
            b[n - 1] ^= 0x01;
        },
        false,
        true,
    );
    assert_eq!(r.0, Fes::HeaderDigestError as u16);
}

#[test]
fn digest_flag_not_negotiated() {
    let r = io_case(|b| read_cmd(b, &wire(true, false), 5, 0, 1), false, false);
    assert_eq!(r, (Fes::InvalidHeaderField as u16, pdu::fei::FLAGS));
}

#[test]
fn in_capsule_data_beyond_the_command() {
    // SGL says one block, the capsule carries two.
    let r = io_case(
        |b| {
            let mut s = nvmf::nvme::Sqe::new(nvmf::nvme::cmd::io::WRITE);
            s.cid = 5;
            s.nsid = 1;
            s.dptr = nvmf::nvme::Sgl::in_capsule(512);
            pdu::encode_capsule_cmd(b, &s.encode(), &[1u8; 1024], &wire(false, false));
        },
        false,
        false,
    );
    assert_eq!(r.0, Fes::DataOutOfRange as u16);
}

#[test]
fn in_capsule_data_on_a_read() {
    let r = io_case(
        |b| {
            let mut s = nvmf::nvme::Sqe::new(nvmf::nvme::cmd::io::READ);
            s.cid = 5;
            s.nsid = 1;
            s.dptr = nvmf::nvme::Sgl::transport(512);
            pdu::encode_capsule_cmd(b, &s.encode(), &[1u8; 512], &wire(false, false));
        },
        false,
        false,
    );
    assert_eq!(r.0, Fes::DataOutOfRange as u16);
}

#[test]
fn h2c_data_beyond_the_command() {
    let r = io_case(
        |b| {
            let w = wire(false, false);
            write_cmd(b, &w, 5, 0, 2, None); // 1024 bytes on R2T (ttag 1), 1536 sent
            pdu::encode_h2c_data(b, 5, 1, 0, &[2u8; 1536], true, &w);
        },
        false,
        false,
    );
    assert_eq!(r, (Fes::DataOutOfRange as u16, pdu::fei::DATAL));
}

#[test]
fn out_of_order_h2c_data() {
    let r = io_case(
        |b| {
            let w = wire(false, false);
            write_cmd(b, &w, 5, 0, 4, None);
            pdu::encode_h2c_data(b, 5, 1, 0, &[2u8; 512], false, &w);
            pdu::encode_h2c_data(b, 5, 1, 1024, &[2u8; 512], false, &w);
        },
        false,
        false,
    );
    assert_eq!(r, (Fes::DataOutOfRange as u16, pdu::fei::DATAO));
}

#[test]
fn h2c_data_for_no_r2t() {
    let r = io_case(
        |b| pdu::encode_h2c_data(b, 77, 1, 0, &[2u8; 512], true, &wire(false, false)),
        false,
        false,
    );
    assert_eq!(r, (Fes::UnsupportedParameter as u16, pdu::fei::CCCID));
    let r = io_case(
        |b| {
            let w = wire(false, false);
            write_cmd(b, &w, 5, 0, 1, None);
            pdu::encode_h2c_data(b, 5, 99, 0, &[2u8; 512], true, &w);
        },
        false,
        false,
    );
    assert_eq!(r, (Fes::UnsupportedParameter as u16, pdu::fei::TTAG));
}

#[test]
fn oversize_in_capsule_data_is_refused_from_the_header() {
    // Only the 8-byte common header of a capsule claiming 1 MiB arrives: the target must
    // refuse at once instead of waiting for (or buffering) the megabyte.
    let r = io_case(
        |b| {
            let plen = 72u32 + (1 << 20);
            b.extend_from_slice(&[4, 0, 72, 72]);
            b.extend_from_slice(&plen.to_le_bytes());
        },
        false,
        false,
    );
    assert_eq!(r.0, Fes::DataLimitExceeded as u16);
    // Just above the I/O queue's in-capsule limit (4096) is refused too.
    let r = io_case(
        |b| write_cmd(b, &wire(false, false), 5, 0, 9, Some(&[1u8; 4608])),
        false,
        false,
    );
    assert_eq!(r.0, Fes::DataLimitExceeded as u16);
}

#[test]
fn huge_h2c_data_is_refused_from_the_header() {
    let r = io_case(
        |b| {
            b.extend_from_slice(&[6, 0, 24, 24]);
            b.extend_from_slice(&u32::MAX.to_le_bytes());
        },
        false,
        false,
    );
    assert_eq!(r.0, Fes::DataLimitExceeded as u16);
}

#[test]
fn pdus_out_of_sequence() {
    let t = small_target();
    // A capsule before ICReq.
    let mut c = TargetConn::new(t.clone(), Instant::now());
    let mut b = Vec::new();
    read_cmd(&mut b, &wire(false, false), 1, 0, 1);
    let (pdus, closed) = drive(&mut c, &b, 1 << 20, false, false);
    assert!(closed);
    assert_eq!(
        term_of(&pdus).map(|t| t.0),
        Some(Fes::PduSequenceError as u16)
    );
    // A second ICReq.
    let mut c = TargetConn::new(t, Instant::now());
    let mut b = Vec::new();
    ic_req(&mut b, false, false);
    ic_req(&mut b, false, false);
    let (pdus, closed) = drive(&mut c, &b, 1 << 20, false, false);
    assert!(closed);
    assert_eq!(
        term_of(&pdus).map(|t| t.0),
        Some(Fes::PduSequenceError as u16)
    );
}

#[test]
fn io_before_connect_is_a_sequence_error_status() {
    let t = small_target();
    let mut c = TargetConn::new(t, Instant::now());
    let mut b = Vec::new();
    ic_req(&mut b, false, false);
    read_cmd(&mut b, &wire(false, false), 1, 0, 1);
    let (pdus, closed) = drive(&mut c, &b, 7, false, false);
    assert!(!closed);
    let st = pdus.iter().find_map(|p| match p {
        Pdu::CapsuleResp(r) => Some(Cqe::parse(&r.cqe).status),
        _ => None,
    });
    assert_eq!(st, Some(nvmf::nvme::Status::COMMAND_SEQUENCE_ERROR));
}

/// Over real sockets: a hostile connection is terminated while a real host on the same
/// target keeps doing I/O.
#[test]
fn other_connections_keep_working() {
    let srv = TargetServer::start(small_target(), "127.0.0.1:0").unwrap();
    let good = connect(&srv, ConnectOptions::default());
    good.blocking().write(1, 0, pattern(2048, 5)).unwrap();
    for hostile in [vec![0xFFu8; 64], {
        let mut b = Vec::new();
        ic_req(&mut b, false, false);
        b.extend_from_slice(&[4, 0, 72, 72, 0xFF, 0xFF, 0xFF, 0x7F]);
        b
    }] {
        let mut s = std::net::TcpStream::connect(srv.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&hostile).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got); // ends with EOF once the target closes
        // The last PDU is a C2HTermReq (type 3).
        let mut off = 0;
        let mut last_ty = None;
        while off + 8 <= got.len() {
            last_ty = Some(got[off]);
            let plen = u32::from_le_bytes(got[off + 4..off + 8].try_into().unwrap()) as usize;
            off += plen.max(8);
        }
        assert_eq!(last_ty, Some(3), "got {got:?}");
        assert_eq!(good.blocking().read(1, 0, 4).unwrap(), pattern(2048, 5));
    }
}
