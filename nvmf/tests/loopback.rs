//! Our initiator against our target over loopback TCP: data integrity across sizes, queue
//! depths, queue counts and digests; every read buffer starts as a sentinel so a short
//! transfer cannot pass for correct data.

mod common;
use common::*;
use nvmf::driver::{ConnectOptions, Error};
use nvmf::nvme::cmd::Status;
use nvmf::target::TargetConfig;
use std::future::Future;
use std::pin::Pin;

/// Small MAXH2CDATA / C2H chunks / in-capsule size so a few blocks already need R2T,
/// several H2CData PDUs and several C2HData PDUs.
fn small_cfg() -> TargetConfig {
    TargetConfig {
        maxh2cdata: 16 * 1024,
        c2h_chunk: 8 * 1024,
        in_capsule_data: 4096,
        ..TargetConfig::default()
    }
}

#[test]
fn identify_reports_the_namespace() {
    let srv = server(TargetConfig::default(), 512, 2048);
    let c = connect(&srv, ConnectOptions::default());
    let info = c.info();
    assert_eq!(info.namespaces.len(), 1);
    let ns = &info.namespaces[0];
    assert_eq!((ns.nsid, ns.block_size, ns.num_blocks), (1, 512, 2048));
    assert!(info.vwc);
    assert!(ns.nguid.is_some() && ns.uuid.is_some());
    assert_eq!(info.data.subnqn, NQN);
    assert_eq!(info.data.cntlid, info.cntlid);
    assert!(info.data.kas > 0 && info.data.maxcmd >= info.queue_size);
    c.blocking().flush(1).unwrap();
}

fn sizes_roundtrip(hdgst: bool, ddgst: bool, bs: u32) {
    sizes_roundtrip_with(hdgst, ddgst, bs, false)
}

fn sizes_roundtrip_with(hdgst: bool, ddgst: bool, bs: u32, poll: bool) {
    let srv = server(small_cfg(), bs, 4096);
    let opts = ConnectOptions {
        hdgst,
        ddgst,
        ..ConnectOptions::default()
    };
    let (opts, _poller) = polled_if(poll, opts);
    let c = connect(&srv, opts);
    let b = c.blocking();
    // 1 block, in-capsule, exactly in-capsule, R2T with one and several H2CData, > MAXH2CDATA.
    let mut lba = 0u64;
    for blocks in [
        1u32,
        2,
        4096 / bs,
        4096 / bs + 1,
        16384 / bs,
        16384 / bs + 1,
        100_000 / bs,
        256 * 1024 / bs,
    ] {
        let blocks = blocks.max(1);
        let data = pattern(blocks as usize * bs as usize, lba + u64::from(blocks));
        b.write(1, lba, data.clone()).unwrap();
        let got = b.read(1, lba, blocks).unwrap();
        assert!(
            got == data,
            "mismatch at {blocks} blocks (hdgst {hdgst} ddgst {ddgst})"
        );
        lba += u64::from(blocks);
    }
}

#[test]
fn sizes_without_digests() {
    sizes_roundtrip(false, false, 512);
}

#[test]
fn sizes_with_header_digest() {
    sizes_roundtrip(true, false, 4096);
}

#[test]
fn sizes_with_both_digests() {
    sizes_roundtrip(true, true, 512);
}

#[test]
fn sizes_with_data_digest() {
    sizes_roundtrip(false, true, 4096);
}

/// The queues read by a polling driver (one thread for all, as an SPDK poll group; the
/// commands of one pass leave in one send) instead of a reader thread each.
#[test]
fn sizes_with_a_polling_driver() {
    sizes_roundtrip_with(false, false, 512, true);
    sizes_roundtrip_with(true, true, 4096, true);
}

#[test]
fn queue_depths_and_several_queues() {
    queue_depths(false);
}

#[test]
fn queue_depths_with_a_polling_driver() {
    queue_depths(true);
}

fn queue_depths(poll: bool) {
    let srv = server(small_cfg(), 512, 65536);
    for (queues, qd) in [(1u16, 1usize), (1, 8), (2, 32), (4, 128)] {
        let opts = ConnectOptions {
            io_queues: queues,
            queue_size: 128,
            ..ConnectOptions::default()
        };
        let (opts, _poller) = polled_if(poll, opts);
        let c = connect(&srv, opts);
        assert_eq!(c.info().io_queues, usize::from(queues));
        // Each command gets its own region; sizes vary so in-capsule and R2T mix.
        let regions: Vec<(u64, u32)> = (0..qd)
            .map(|i| (i as u64 * 64, 1 + (i as u32 * 7) % 48))
            .collect();
        let writes: Vec<BoxFut<'_, Result<(), Error>>> = regions
            .iter()
            .map(|&(lba, n)| {
                let d = pattern(n as usize * 512, lba ^ u64::from(qd as u32));
                Box::pin(c.write(1, lba, d)) as Pin<Box<dyn Future<Output = _>>>
            })
            .collect();
        for r in join_all(writes) {
            r.unwrap();
        }
        let reads: Vec<BoxFut<'_, Result<Vec<u8>, Error>>> = regions
            .iter()
            .map(|&(lba, n)| Box::pin(c.read(1, lba, n)) as Pin<Box<dyn Future<Output = _>>>)
            .collect();
        for (r, &(lba, n)) in join_all(reads).into_iter().zip(&regions) {
            assert!(
                r.unwrap() == pattern(n as usize * 512, lba ^ u64::from(qd as u32)),
                "QD {qd} lba {lba}"
            );
        }
    }
}

#[test]
fn write_zeroes_and_deallocate() {
    let srv = server(small_cfg(), 512, 1024);
    let c = connect(&srv, ConnectOptions::default());
    let b = c.blocking();
    let sentinel = vec![0xA5u8; 64 * 512];
    b.write(1, 0, sentinel.clone()).unwrap();
    b.write_zeroes(1, 8, 8).unwrap();
    b.deallocate(1, &[(32, 4), (40, 2)]).unwrap();
    let got = b.read(1, 0, 64).unwrap();
    for (blk, chunk) in got.chunks(512).enumerate() {
        let zero = (8..16).contains(&blk) || (32..36).contains(&blk) || (40..42).contains(&blk);
        let want = if zero { 0u8 } else { 0xA5 };
        assert!(chunk.iter().all(|&x| x == want), "block {blk}");
    }
}

#[test]
fn nvme_errors_come_back_as_status() {
    let srv = server(small_cfg(), 512, 1024);
    let c = connect(&srv, ConnectOptions::default());
    let b = c.blocking();
    assert_eq!(
        b.read(1, 1020, 8),
        Err(Error::Status(Status::LBA_OUT_OF_RANGE))
    );
    assert_eq!(
        b.write(1, 1024, vec![0u8; 512]),
        Err(Error::Status(Status::LBA_OUT_OF_RANGE))
    );
    assert_eq!(
        b.write_zeroes(1, u64::MAX - 1, 8),
        Err(Error::Status(Status::LBA_OUT_OF_RANGE))
    );
    // The connection stays usable after errors.
    b.write(1, 0, pattern(512, 9)).unwrap();
    assert_eq!(b.read(1, 0, 1).unwrap(), pattern(512, 9));
}

#[test]
fn unknown_subsystem_and_host_are_refused() {
    let srv = server(small_cfg(), 512, 64);
    let r = nvmf::driver::Controller::connect(
        srv.local_addr(),
        "nqn.2024-01.io.nowhere",
        HOSTNQN,
        ConnectOptions::default(),
    );
    assert!(
        matches!(r, Err(Error::Connect(s)) if s == Status::CONNECT_INVALID_PARAMETERS),
        "{:?}",
        r.err()
    );
    let t = srv.target();
    let mut sc = nvmf::target::SubsystemConfig::new("nqn.2024-01.io.locked");
    sc.allow_any_host = false;
    sc.hosts = vec!["nqn.2024-01.io.allowed".into()];
    t.add_subsystem(sc).unwrap();
    let r = nvmf::driver::Controller::connect(
        srv.local_addr(),
        "nqn.2024-01.io.locked",
        HOSTNQN,
        ConnectOptions::default(),
    );
    assert!(
        matches!(r, Err(Error::Connect(s)) if s == Status::CONNECT_INVALID_HOST),
        "{:?}",
        r.err()
    );
    nvmf::driver::Controller::connect(
        srv.local_addr(),
        "nqn.2024-01.io.locked",
        "nqn.2024-01.io.allowed",
        ConnectOptions::default(),
    )
    .unwrap();
}

#[test]
fn discovery_lists_every_listener() {
    let t = target(small_cfg(), 512, 64, false);
    let a = nvmf::driver::TargetServer::start(t.clone(), "127.0.0.1:0").unwrap();
    let b = nvmf::driver::TargetServer::start(t.clone(), "127.0.0.1:0").unwrap();
    let (gen1, entries) =
        nvmf::driver::discover(a.local_addr(), HOSTNQN, ConnectOptions::default()).unwrap();
    assert_eq!(entries.len(), 2);
    let ports: Vec<String> = entries.iter().map(|e| e.trsvcid.clone()).collect();
    assert!(ports.contains(&a.local_addr().port().to_string()));
    assert!(ports.contains(&b.local_addr().port().to_string()));
    assert!(
        entries
            .iter()
            .all(|e| e.subnqn == NQN && e.traddr == "127.0.0.1")
    );
    drop(b);
    let (gen2, entries) =
        nvmf::driver::discover(a.local_addr(), HOSTNQN, ConnectOptions::default()).unwrap();
    assert_eq!(entries.len(), 1);
    assert!(gen2 > gen1, "genctr must change with the listeners");
}

#[test]
fn volatile_write_cache_absent_is_reported() {
    let t = target(small_cfg(), 4096, 64, false);
    let srv = nvmf::driver::TargetServer::start(t, "127.0.0.1:0").unwrap();
    let c = connect(&srv, ConnectOptions::default());
    assert!(!c.info().vwc);
    assert_eq!(c.info().namespaces[0].block_size, 4096);
}
