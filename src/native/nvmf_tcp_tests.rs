//! The reactor-served target against the project's initiator and against hostile bytes:
//! data intact across in-capsule, R2T and multi-PDU transfers at queue depth, a hostile
//! or silent connection ends (or idles) alone, and shutdown reaches every connection.

use super::*;
use crate::native::reactor::Reactors;
use nvmf::driver::{ConnectOptions, Controller};
use nvmf::pdu::{self, IcReq};
use nvmf::target::{NamespaceConfig, RamBackend, SubsystemConfig, TargetConfig};
use std::io::{Read, Write};
use std::time::Duration;

const NQN: &str = "nqn.2024-01.io.spdk-replication:reactor-test";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000002";

fn serve_ram(reactors: &Reactors) -> ReactorServer {
    // Small in-capsule size, MAXH2CDATA and C2H chunks, so a few blocks already take the
    // R2T path and several data PDUs each way.
    let t = Target::new(TargetConfig {
        maxh2cdata: 16 * 1024,
        c2h_chunk: 8 * 1024,
        in_capsule_data: 4096,
        ..TargetConfig::default()
    });
    let mut s = SubsystemConfig::new(NQN).namespace(NamespaceConfig::new(
        1,
        Arc::new(RamBackend::new(512, 8192).with_write_cache(true)),
    ));
    s.allow_any_host = true;
    t.add_subsystem(s).unwrap();
    ReactorServer::start(t, "127.0.0.1:0", reactors.handles()).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn data_roundtrips_at_depth_over_the_reactors() {
    roundtrips(false, false);
}

/// Read data is sent from its buffer (gathered): its data digest, and sends that stop
/// part way through the iovecs (1 MiB reads fill the socket) and resume.
#[test]
fn data_roundtrips_with_digests_and_partial_gather_sends() {
    roundtrips(true, true);
}

fn roundtrips(hdgst: bool, ddgst: bool) {
    let r = Reactors::start(&[0, 1]).unwrap();
    let srv = serve_ram(&r);
    let opts = ConnectOptions {
        io_queues: 2,
        hdgst,
        ddgst,
        ..ConnectOptions::default()
    };
    let c = Controller::connect(srv.local_addr(), NQN, HOSTNQN, opts).unwrap();
    // One block, in-capsule, R2T with one and several H2CData, several C2HData, and
    // reads of more C2HData PDUs than one send's iovecs.
    let sizes = [1u32, 8, 9, 32, 33, 512, 2048, 2048, 1024];
    let mut lba = 0u64;
    let mut futs = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let data = pattern(n as usize * 512, i as u8);
        futs.push((lba, n, data));
        lba += u64::from(n);
    }
    futures::executor::block_on(futures::future::join_all(
        futs.iter()
            .map(|(lba, _, d)| c.write(1, *lba, d.clone()))
            .collect::<Vec<_>>(),
    ))
    .into_iter()
    .for_each(|r| r.unwrap());
    let reads = futures::executor::block_on(futures::future::join_all(
        futs.iter()
            .map(|(lba, n, _)| c.read(1, *lba, *n))
            .collect::<Vec<_>>(),
    ));
    for ((_, _, want), got) in futs.iter().zip(reads) {
        assert!(got.unwrap() == *want, "data differs");
    }
    c.blocking().flush(1).unwrap();
    c.disconnect();
    srv.shutdown();
    r.stop();
}

#[test]
fn hostile_and_silent_connections_stay_alone() {
    let r = Reactors::start(&[0]).unwrap();
    let srv = serve_ram(&r);
    // A silent host holds a connection (and its pending receive) open throughout.
    let _silent = TcpStream::connect(srv.local_addr()).unwrap();
    let c = Controller::connect(srv.local_addr(), NQN, HOSTNQN, ConnectOptions::default()).unwrap();
    // A hostile host: a valid ICReq, then a PDU with a bad header length.
    let mut bad = TcpStream::connect(srv.local_addr()).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = Vec::new();
    pdu::encode_ic_req(
        &mut b,
        &IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: false,
            ddgst: false,
            maxr2t: 0,
        },
    );
    b.extend_from_slice(&[0x04, 0, 71, 0, 80, 0, 0, 0]);
    b.resize(b.len() + 72, 0);
    bad.write_all(&b).unwrap();
    // ICResp, then a C2HTermReq (PDU type 3), then the end of the stream.
    let mut got = Vec::new();
    bad.read_to_end(&mut got).unwrap();
    let icresp_len = 128;
    assert!(got.len() > icresp_len, "no TermReq: {got:?}");
    assert_eq!(got[icresp_len], 0x03, "expected a C2HTermReq");
    // The good connection never noticed.
    c.blocking().write(1, 7, pattern(4096, 9)).unwrap();
    assert_eq!(c.blocking().read(1, 7, 8).unwrap(), pattern(4096, 9));
    // Shutdown ends every connection, the silent one included.
    srv.shutdown();
    let mut silent = _silent;
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)));
    r.stop();
}
