//! The primary's protection lifecycle in the engine (spec 8, docs/protection.md): dirty
//! tracking, full sync, incremental resync, online verify, over fault-injecting and holding
//! RAM devices, with hand-driven interleavings.

use futures::FutureExt;
use futures::future::FusedFuture;
use spdk_replication::engine::testing::{
    MemBuf, OpKind, TestDisk, TestRuntime, poll_once, test_disk,
};
use spdk_replication::engine::{
    BlockDevice, Primary, PrimaryConfig, ReplicationError, SyncMode, SyncState,
};
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

const BS: u32 = 4096;
const BLOCKS: u64 = 256; // 1 MiB
const REGION: u64 = 16 * 1024; // 4 blocks per region: 64 regions
const RB: u64 = REGION / BS as u64;

fn pair() -> (TestDisk, TestDisk, Primary<TestDisk>) {
    let (l, r) = (test_disk(BS, BLOCKS), test_disk(BS, BLOCKS));
    let cfg = PrimaryConfig {
        remote_timeout: Duration::from_millis(100),
        sync_granularity: REGION,
    };
    let p = Primary::new(l.clone(), r.clone(), cfg).unwrap();
    (l, r, p)
}

fn run<F: Future>(f: F) -> F::Output {
    let mut f = Box::pin(f);
    loop {
        if let Poll::Ready(v) = poll_once(f.as_mut()) {
            return v;
        }
    }
}

fn job(rt: &TestRuntime, p: &Primary<TestDisk>) -> Result<(), ReplicationError> {
    run(p.run_job(rt, |_| std::future::ready(())))
}

fn data(blocks: u64, byte: u8) -> MemBuf {
    MemBuf::filled((blocks * u64::from(BS)) as usize, byte)
}

fn disk(d: &TestDisk) -> Vec<u8> {
    d.inner().contents(0..BLOCKS * u64::from(BS))
}

fn remote_writes(d: &TestDisk) -> Vec<(u64, u64)> {
    d.log()
        .iter()
        .filter(|o| o.kind == OpKind::Write)
        .map(|o| (o.lba, o.nblocks))
        .collect()
}

#[test]
fn full_sync_copies_every_region_and_clears_the_map() {
    let rt = TestRuntime::default();
    let (l, r, p) = pair();
    l.inner().fill(0x5A);
    assert!(p.start_with(None, Some(SyncMode::Full)).unwrap());
    let st = p.sync_status();
    assert_eq!(st.state, SyncState::Syncing);
    assert_eq!(st.dirty_bytes, BLOCKS * u64::from(BS));
    job(&rt, &p).unwrap();
    assert_eq!(disk(&r), disk(&l));
    let st = p.sync_status();
    assert_eq!(st.state, SyncState::InSync);
    assert_eq!((st.done_bytes, st.dirty_bytes), (BLOCKS * u64::from(BS), 0));
    assert_eq!(remote_writes(&r).len() as u64, BLOCKS / RB);
}

#[test]
fn writes_on_a_broken_link_mark_exactly_their_regions_and_resync_copies_them() {
    let rt = TestRuntime::default();
    let (l, r, p) = pair();
    p.start(None).unwrap();
    assert_eq!(p.dirty().count(), 0);
    // The remote fails one write: the link breaks, that write's regions are dirty.
    r.fail(&[OpKind::Write], None, Some(1));
    run(p.write(&rt, 2, data(4, 0x11))).unwrap(); // blocks 2..6: regions 0, 1
    assert!(p.link_broken());
    // Not forwarded: blocks 40..41 (region 10), 100..109 (regions 25, 26, 27).
    run(p.write(&rt, 40, data(1, 0x22))).unwrap();
    run(p.write_zeroes(&rt, 100, 9)).unwrap();
    assert_eq!(
        p.dirty().iter().collect::<Vec<_>>(),
        vec![0, 1, 10, 25, 26, 27]
    );
    assert_eq!(p.sync_status().state, SyncState::OutOfSync);
    assert!(p.get_error().is_err());
    r.clear_log();
    p.resync(false).unwrap();
    // The sticky error stays until the copy completes.
    assert!(p.get_error().is_err());
    job(&rt, &p).unwrap();
    assert_eq!(
        remote_writes(&r),
        [0, 1, 10, 25, 26, 27].map(|x| (x * RB, RB)).to_vec()
    );
    assert_eq!(disk(&r), disk(&l));
    assert!(p.get_error().is_ok());
    assert!(!p.link_broken());
    assert_eq!(p.sync_status().state, SyncState::InSync);
    // Forwarding again, nothing marked.
    run(p.write(&rt, 200, data(1, 0x33))).unwrap();
    assert_eq!(p.dirty().count(), 0);
    assert_eq!(disk(&r), disk(&l));
}

#[test]
fn a_failing_copy_keeps_the_map_and_a_later_resync_continues() {
    let rt = TestRuntime::default();
    let (l, r, p) = pair();
    l.inner().fill(0x44);
    p.start_with(None, Some(SyncMode::Full)).unwrap();
    // The 5th copy fails: 4 regions copied, the rest kept.
    r.fail(&[OpKind::Write], Some(4 * RB..5 * RB), Some(1));
    assert_eq!(job(&rt, &p), Err(ReplicationError::Io));
    assert!(p.link_broken());
    assert!(p.get_error().is_err());
    assert_eq!(p.dirty().count(), BLOCKS / RB - 4);
    assert!(p.dirty().test(4));
    assert_eq!(p.sync_status().state, SyncState::OutOfSync);
    r.clear_log();
    p.resync(false).unwrap();
    job(&rt, &p).unwrap();
    assert_eq!(remote_writes(&r).first(), Some(&(4 * RB, RB)));
    assert_eq!(remote_writes(&r).len() as u64, BLOCKS / RB - 4);
    assert_eq!(disk(&r), disk(&l));
    assert!(p.get_error().is_ok());
}

#[test]
fn a_guest_write_racing_the_copy_of_its_region_never_loses_to_it() {
    let rt = TestRuntime::default();
    let (l, r, p) = pair();
    l.inner().fill(0x01);
    p.start_with(None, Some(SyncMode::Full)).unwrap();
    // Hold the copy of region 0 on the remote, after it read the old local data.
    let latch = r.hold(&[OpKind::Write], Some(0..RB), Some(1));
    let mut sync = Box::pin(p.run_job(&rt, |_| std::future::ready(())).fuse());
    assert!(poll_once(sync.as_mut()).is_pending());
    assert_eq!(latch.arrived(), 1);
    // The guest writes region 0 meanwhile: it waits for the region lock.
    let mut w = Box::pin(p.write(&rt, 0, data(RB, 0x99)));
    assert!(poll_once(w.as_mut()).is_pending());
    assert_eq!(
        l.inner().contents(0..4),
        vec![0x01; 4],
        "local untouched while locked"
    );
    latch.open();
    // The copy lands first, then the guest write on both legs.
    let mut out = None;
    if let Poll::Ready(v) = poll_once(sync.as_mut()) {
        out = Some(v);
    }
    assert_eq!(run(w), Ok(()));
    if out.is_none() {
        out = Some(run(sync));
    }
    assert_eq!(out, Some(Ok(())));
    let want = data(RB, 0x99).to_vec();
    assert_eq!(r.inner().contents(0..REGION), want);
    assert_eq!(l.inner().contents(0..REGION), want);
    assert_eq!(disk(&r), disk(&l));
    assert_eq!(p.sync_status().state, SyncState::InSync);
}

#[test]
fn verify_finds_planted_mismatches_marks_them_and_resync_repairs() {
    let rt = TestRuntime::default();
    let (l, r, p) = pair();
    p.start(None).unwrap();
    p.verify().unwrap();
    job(&rt, &p).unwrap();
    let st = p.sync_status();
    assert_eq!((st.mismatches, st.state), (0, SyncState::InSync));
    assert_eq!(st.done_bytes, BLOCKS * u64::from(BS));
    // Behind the module's back: regions 3 and 50 differ on the remote.
    run(r.write(3 * RB + 1, data(1, 0xEE))).unwrap();
    run(r.write(50 * RB, data(2, 0xEF))).unwrap();
    p.verify().unwrap();
    // Verify's second look waits for the remote timeout.
    let mut v = Box::pin(p.run_job(&rt, |_| std::future::ready(())));
    while poll_once(v.as_mut()).is_pending() {
        rt.advance(Duration::from_millis(100));
    }
    let st = p.sync_status();
    assert_eq!(st.mismatches, 2);
    assert_eq!(st.first_mismatches, vec![3 * REGION, 50 * REGION]);
    assert_eq!(p.dirty().iter().collect::<Vec<_>>(), vec![3, 50]);
    assert_eq!(st.state, SyncState::OutOfSync);
    r.clear_log();
    p.resync(false).unwrap();
    job(&rt, &p).unwrap();
    assert_eq!(remote_writes(&r), vec![(3 * RB, RB), (50 * RB, RB)]);
    assert_eq!(disk(&r), disk(&l));
}

#[test]
fn verify_under_concurrent_writes_reports_no_false_mismatch() {
    let rt = TestRuntime::default();
    let (l, r, p) = pair();
    p.start(None).unwrap();
    p.verify().unwrap();
    let mut v = Box::pin(p.run_job(&rt, |_| std::future::ready(())).fuse());
    // Guest writes interleaved with the compares; each remote write is held for a while.
    for i in 0..BLOCKS / RB {
        let latch = r.hold(&[OpKind::Write], None, Some(1));
        let mut w = Box::pin(p.write(&rt, (i * 7) % BLOCKS, data(1, i as u8 + 1)));
        let _ = poll_once(w.as_mut());
        let _ = poll_once(v.as_mut());
        latch.open();
        let _ = poll_once(v.as_mut());
        assert_eq!(run(w), Ok(()));
    }
    while !v.is_terminated() {
        let _ = poll_once(v.as_mut());
        rt.advance(Duration::from_millis(100));
    }
    let st = p.sync_status();
    assert_eq!((st.mismatches, st.dirty_bytes), (0, 0), "{st:?}");
    assert_eq!(disk(&r), disk(&l));
}

#[test]
fn resync_and_verify_refuse_while_a_timed_out_request_is_pending() {
    let rt = TestRuntime::default();
    let (l, r, p) = pair();
    p.start(None).unwrap();
    let frozen = r.hold(&[OpKind::Write], None, Some(1));
    let mut w = Box::pin(p.write(&rt, 8, data(1, 0x77)));
    assert!(poll_once(w.as_mut()).is_pending());
    rt.advance(Duration::from_millis(100));
    assert_eq!(run(w), Ok(()));
    assert!(p.link_broken());
    assert_eq!(p.detached(), 1);
    assert_eq!(p.sync_status().detached_requests, 1);
    for e in [p.resync(false).unwrap_err(), p.verify().unwrap_err()] {
        let ReplicationError::Busy(m) = e else {
            panic!("{e:?}")
        };
        assert!(
            m.contains("1 timed-out remote request(s) still pending"),
            "{m}"
        );
    }
    // The stale request lands; then resync is allowed and repairs its region.
    frozen.open();
    assert_eq!(rt.poll_spawned(), 0);
    assert_eq!(p.detached(), 0);
    assert!(p.dirty().test(2));
    p.resync(false).unwrap();
    job(&rt, &p).unwrap();
    assert_eq!(disk(&r), disk(&l));
}

#[test]
fn wrong_stages_and_busy_jobs_are_refused() {
    let (_, _, p) = pair();
    assert_eq!(
        p.resync(false).unwrap_err().to_string(),
        "Block replication is not running (stage none): resync needs stage running"
    );
    assert!(matches!(
        p.verify(),
        Err(ReplicationError::WrongStage { op: "verify", .. })
    ));
    p.start_with(None, Some(SyncMode::Full)).unwrap();
    assert_eq!(
        p.resync(true).unwrap_err().to_string(),
        "a sync is already running"
    );
    assert_eq!(
        p.verify().unwrap_err().to_string(),
        "a sync is already running"
    );
    p.stop(false).unwrap();
    assert_eq!(
        p.start_with(None, Some(SyncMode::Full))
            .unwrap_err()
            .to_string(),
        "Block replication is not running (stage done): sync needs stage running"
    );
    assert_eq!(p.start_with(None, Some(SyncMode::None)), Ok(false));
    let bad = |g| {
        Primary::new(
            test_disk(BS, BLOCKS),
            test_disk(BS, BLOCKS),
            PrimaryConfig {
                sync_granularity: g,
                ..Default::default()
            },
        )
        .err()
        .map(|e| e.to_string())
    };
    assert_eq!(
        bad(2048),
        Some(
            "sync_granularity: 2048 must be a power of two from the block size (4096) to 16777216"
                .into()
        )
    );
    assert!(bad(3 * 4096).is_some());
    assert!(bad(4096).is_none());
}

#[test]
fn a_sync_keeps_several_regions_in_flight_each_under_its_lock() {
    let rt = TestRuntime::default();
    let (l, r, p) = pair();
    l.inner().fill(0x3C);
    p.start_with(None, Some(SyncMode::Full)).unwrap();
    // Every copy waits on the remote: the sync issues up to its depth (1 MiB of 16 KiB
    // regions, capped at 32) before any completes.
    let latch = r.hold(&[OpKind::Write], None, None);
    let mut sync = Box::pin(p.run_job(&rt, |_| std::future::ready(())).fuse());
    assert!(poll_once(sync.as_mut()).is_pending());
    assert_eq!(latch.arrived(), 32);
    // A guest write to a region being copied waits for that copy; one to a region not
    // yet issued goes straight to both legs.
    let mut w_busy = Box::pin(p.write(&rt, 0, data(RB, 0x99)));
    assert!(poll_once(w_busy.as_mut()).is_pending());
    assert_eq!(l.inner().contents(0..4), vec![0x3C; 4]);
    latch.open();
    // The copy ends first (the sync is polled), then the guest write takes the lock.
    assert!(poll_once(w_busy.as_mut()).is_pending());
    let early = match poll_once(sync.as_mut()) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    };
    assert_eq!(run(w_busy), Ok(()));
    assert_eq!(early.unwrap_or_else(|| run(sync)), Ok(()));
    assert_eq!(disk(&r), disk(&l));
    assert_eq!(r.inner().contents(0..REGION), data(RB, 0x99).to_vec());
    assert_eq!(p.sync_status().state, SyncState::InSync);
    assert_eq!(p.counters().sync_copies, BLOCKS / RB);
}
