//! Property tests: the PDU decoder and the target connection state machine fed random and
//! mutated byte streams in random chunkings never panic, only ever emit valid PDUs, and
//! never buffer more than the negotiated bounds. Longer runs: `PROPTEST_CASES=100000
//! cargo test -p nvmf --release --test fuzz`.

mod common;
use common::raw::{admin_conn, drive, io_prefix, read_cmd, small_target, wire, write_cmd};
use nvmf::pdu::{self, Decoder, DecoderCfg, Pdu, WireCfg};
use nvmf::target::TargetConn;
use proptest::prelude::*;
use std::time::Instant;

fn decoder(controller: bool, ic_done: bool, hdgst: bool, ddgst: bool) -> Decoder {
    let mut c = if controller {
        DecoderCfg::controller(8192, 8192)
    } else {
        DecoderCfg::host(65536)
    };
    c.ic_done = ic_done;
    c.hdgst = hdgst;
    c.ddgst = ddgst;
    Decoder::new(c)
}

fn arb_pdu() -> impl Strategy<Value = Pdu> {
    let data = proptest::collection::vec(any::<u8>(), 1..600);
    prop_oneof![
        (
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 0..600)
        )
            .prop_map(|(h, d)| {
                let mut sqe = [0u8; 64];
                sqe[..32].copy_from_slice(&h);
                Pdu::CapsuleCmd(pdu::CapsuleCmd { sqe, data: d })
            }),
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<bool>(),
            data.clone()
        )
            .prop_map(
                |(cccid, ttag, datao, last, data)| Pdu::H2CData(pdu::H2CData {
                    cccid,
                    ttag,
                    datao,
                    last,
                    data
                })
            ),
        (
            1u16..7,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..128)
        )
            .prop_map(|(fes, fei, data)| Pdu::H2CTermReq(pdu::TermReq { fes, fei, data })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10000, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics_on_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        controller in any::<bool>(), ic in any::<bool>(), h in any::<bool>(), d in any::<bool>(),
    ) {
        let dec = decoder(controller, ic, h, d);
        if let Ok(Some((_, n))) = dec.decode(&bytes) {
            prop_assert!(n > 0 && n <= bytes.len());
        }
    }

    #[test]
    fn encode_decode_roundtrip(p in arb_pdu(), h in any::<bool>(), d in any::<bool>()) {
        let mut out = Vec::new();
        p.encode(&mut out, &WireCfg { hdgst: h, ddgst: d, pda: 0 });
        let dec = decoder(true, true, h, d);
        let (q, n) = dec.decode(&out).unwrap().unwrap();
        prop_assert_eq!(n, out.len());
        prop_assert_eq!(q, p);
        // Any strict prefix needs more bytes, never errors or yields a PDU.
        for cut in [1, out.len() / 2, out.len() - 1] {
            prop_assert_eq!(dec.decode(&out[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn mutated_pdus_are_refused_or_parsed(p in arb_pdu(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let mut out = Vec::new();
        p.encode(&mut out, &WireCfg { hdgst: true, ddgst: true, pda: 0 });
        for (i, x) in flips {
            let i = i % out.len();
            out[i] ^= x | 1;
        }
        let dec = decoder(true, true, true, true);
        // Digests catch every flip past the common header; common-header flips give
        // an error, a shorter/longer PDU, or a wait — never a panic.
        let _ = dec.decode(&out);
    }
}

/// A valid I/O session body: writes (in-capsule and R2T with H2CData) and reads.
fn io_body(hdgst: bool, ddgst: bool, ops: &[(bool, u8, u16)]) -> Vec<u8> {
    let w = wire(hdgst, ddgst);
    let mut b = Vec::new();
    let mut ttag = 0u16;
    for (i, &(write, nlb, lba)) in ops.iter().enumerate() {
        let cid = 10 + i as u16;
        let nlb = u32::from(nlb % 24) + 1;
        let lba = u64::from(lba % 1000);
        if write {
            let data = vec![i as u8; nlb as usize * 512];
            if data.len() <= 4096 {
                write_cmd(&mut b, &w, cid, lba, nlb, Some(&data));
            } else {
                write_cmd(&mut b, &w, cid, lba, nlb, None);
                ttag = ttag.wrapping_add(1);
                for (k, c) in data.chunks(8192).enumerate() {
                    let last = (k + 1) * 8192 >= data.len();
                    pdu::encode_h2c_data(&mut b, cid, ttag, (k * 8192) as u32, c, last, &w);
                }
            }
        } else {
            read_cmd(&mut b, &w, cid, lba, nlb);
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The valid stream runs cleanly: every command gets its completion.
    #[test]
    fn target_serves_valid_streams_in_any_chunking(
        ops in proptest::collection::vec((any::<bool>(), any::<u8>(), any::<u16>()), 1..12),
        chunk in 1usize..3000, h in any::<bool>(), d in any::<bool>(),
    ) {
        let t = small_target();
        let (_admin, cntlid) = admin_conn(&t);
        let mut c = TargetConn::new(t.clone(), Instant::now());
        let mut s = io_prefix(cntlid, h, d);
        s.extend(io_body(h, d, &ops));
        let (pdus, closed) = drive(&mut c, &s, chunk, h, d);
        prop_assert!(!closed, "closed: {:?}", c.close_reason());
        let resps = pdus.iter().filter(|p| matches!(p, Pdu::CapsuleResp(_))).count();
        prop_assert_eq!(resps, ops.len() + 1);
    }

    /// Mutated streams: never a panic; output stays valid (checked by `drive`); and a
    /// connection that closed says why.
    #[test]
    fn target_survives_mutated_streams(
        ops in proptest::collection::vec((any::<bool>(), any::<u8>(), any::<u16>()), 1..8),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(), chunk in 1usize..5000, h in any::<bool>(), d in any::<bool>(),
    ) {
        let t = small_target();
        let (_admin, cntlid) = admin_conn(&t);
        let mut c = TargetConn::new(t.clone(), Instant::now());
        let mut s = io_prefix(cntlid, h, d);
        s.extend(io_body(h, d, &ops));
        for (i, x) in flips {
            let i = i % s.len();
            s[i] ^= x | 1;
        }
        s.truncate(cut % (s.len() + 1));
        let (_pdus, closed) = drive(&mut c, &s, chunk, h, d);
        if closed {
            prop_assert!(c.close_reason().is_some());
        }
    }

    /// Random bytes after a valid prefix (or from the start).
    #[test]
    fn target_survives_random_streams(
        junk in proptest::collection::vec(any::<u8>(), 0..2000),
        prefix in any::<bool>(), chunk in 1usize..700,
    ) {
        let t = small_target();
        let (_admin, cntlid) = admin_conn(&t);
        let mut c = TargetConn::new(t.clone(), Instant::now());
        let mut s = if prefix { io_prefix(cntlid, false, false) } else { Vec::new() };
        s.extend(junk);
        let _ = drive(&mut c, &s, chunk, false, false);
    }
}
