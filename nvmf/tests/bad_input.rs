//! Named regression cases for hostile input: each ends the offending connection with a
//! C2HTermReq carrying the right FES, never panics, and leaves other connections working.

mod common;
use common::raw::{
    admin_conn, drive, ic_req, io_prefix, named_bad_inputs, read_cmd, small_target, term_of, wire,
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

/// Each named hostile input (bad lengths, unknown types, bad digests, digest flags not
/// negotiated, data beyond the command, out-of-order or unsolicited H2CData, oversize
/// data refused from the header, a second ICReq) gets its TermReq.
#[test]
fn each_named_bad_input_gets_its_term_req() {
    let cases = named_bad_inputs();
    assert!(cases.len() >= 15);
    for (name, bad, hdgst, ddgst, fes, want_fei) in cases {
        let (got_fes, got_fei) = io_case(bad, hdgst, ddgst);
        assert_eq!(got_fes, fes as u16, "{name}: FES");
        if let Some(f) = want_fei {
            assert_eq!(got_fei, f, "{name}: FEI");
        }
    }
}

/// Unknown PDU types beyond the table's one.
#[test]
fn unknown_pdu_types() {
    for ty in [8u8, 10, 0xFF] {
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
