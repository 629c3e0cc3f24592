//! The spec's acceptance cases (section 7) at engine level, on in-memory devices.

mod common;

use common::*;
use futures::executor::block_on;
use spdk_replication::engine::testing::{MemBuf, OpKind, TestRuntime, poll_once, test_disk};
use spdk_replication::engine::{
    IoError, MergeStep, Mode, Primary, PrimaryConfig, ReplicationError, Stage,
};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

const C64K: u64 = 64 * 1024;

/// Base filled with 0x11 through the ingress before start (initial synchronisation).
fn started() -> Node {
    let n = node();
    n.ingress_write(0, DISK, 0x11).unwrap();
    block_on(n.sec.start(Some(Mode::Secondary))).unwrap();
    n
}

/// Cases 3 + 4: primary wrote 0x22 over the second half, the SVM 0x33 over the first.
fn after_3_and_4() -> Node {
    let n = started();
    n.ingress_write(HALF, HALF, 0x22).unwrap();
    n.top_write(0, HALF, 0x33).unwrap();
    n
}

#[test]
fn case01_before_start_top_fails_ingress_reaches_base() {
    let n = node();
    assert_eq!(n.sec.stage(), Stage::None);
    assert_eq!(n.top_read(0, 4096), Err(IoError::Io));
    assert_eq!(n.top_write(0, 4096, 0x01), Err(IoError::Io));
    n.ingress_write(MIB, 8192, 0x5A).unwrap();
    assert_runs(
        &n.base_bytes(MIB - 512, 8192 + 1024),
        &[(512, 0), (8192, 0x5A), (512, 0)],
    );
    assert_runs(&n.ingress_read(MIB, 8192).unwrap(), &[(8192, 0x5A)]);
    assert_eq!(n.hidden_writes(), 0, "no COW before start");
}

#[test]
fn case02_start_top_reads_base() {
    let n = started();
    assert_eq!(n.sec.stage(), Stage::Running);
    assert_runs(&n.top_read(0, DISK).unwrap(), &[(DISK, 0x11)]);
}

#[test]
fn case03_ingress_writes_are_hidden_from_top() {
    let n = started();
    n.ingress_write(HALF, HALF, 0x22).unwrap();
    assert_runs(&n.top_read(0, DISK).unwrap(), &[(DISK, 0x11)]);
    assert_runs(&n.ingress_read(HALF, HALF).unwrap(), &[(HALF, 0x22)]);
    assert_runs(&n.base_bytes(0, DISK), &[(HALF, 0x11), (HALF, 0x22)]);
}

#[test]
fn case04_top_writes_land_in_active() {
    let n = started();
    n.top_write(0, HALF, 0x33).unwrap();
    assert_runs(&n.top_read(0, DISK).unwrap(), &[(HALF, 0x33), (HALF, 0x11)]);
    assert_runs(&n.base_bytes(0, DISK), &[(DISK, 0x11)]);
}

#[test]
fn case05_checkpoint_gives_the_svm_the_primary_state() {
    let n = after_3_and_4();
    assert_runs(&n.top_read(0, DISK).unwrap(), &[(HALF, 0x33), (HALF, 0x11)]);
    block_on(n.sec.checkpoint()).unwrap();
    assert_runs(&n.top_read(0, DISK).unwrap(), &[(HALF, 0x11), (HALF, 0x22)]);
    assert_eq!(n.sec.allocated(), (0, 0), "both overlays empty");
    assert_eq!(n.sec.stage(), Stage::Running);
}

#[test]
fn case06_failover_merges_svm_view_into_base() {
    let n = after_3_and_4();
    block_on(n.sec.stop(true)).unwrap();
    assert_eq!(n.sec.stage(), Stage::Failover);
    let p = n.sec.merge_progress();
    assert_eq!(
        p.total_bytes, DISK,
        "first half in active, second half in hidden"
    );
    assert_eq!(p.done_bytes, 0);
    // Ingress refused while merging, and nothing of it reaches the base.
    assert_eq!(n.ingress_write(0, 4096, 0x77), Err(IoError::Io));
    assert_eq!(block_on(n.sec.merge_step()), Ok(MergeStep::Progress));
    assert_eq!(n.ingress_write(HALF, 4096, 0x77), Err(IoError::Io));
    block_on(n.sec.run_merge()).unwrap();
    assert_eq!(n.sec.stage(), Stage::Done);
    assert_eq!(n.sec.merge_progress().done_bytes, DISK);
    assert_runs(&n.base_bytes(0, DISK), &[(HALF, 0x33), (HALF, 0x11)]);
    assert_runs(&n.top_read(0, DISK).unwrap(), &[(HALF, 0x33), (HALF, 0x11)]);
    assert_eq!(n.ingress_write(0, 4096, 0x77), Err(IoError::Io));
    assert_eq!(n.sec.get_error(), Ok(()));
}

#[test]
fn case07_continuous_replication_after_failover() {
    let n = after_3_and_4();
    block_on(n.sec.stop(true)).unwrap();
    block_on(n.sec.run_merge()).unwrap();
    assert_eq!(block_on(n.sec.start(Some(Mode::Primary))), Ok(()));
    assert_eq!(block_on(n.sec.checkpoint()), Ok(()));
    assert_eq!(block_on(n.sec.stop(false)), Ok(false));
    assert_eq!(
        block_on(n.sec.stop(true)),
        Ok(false),
        "no second merge once done"
    );
    assert_eq!(n.sec.stage(), Stage::Done);
    n.top_write(0, 4096, 0x44).unwrap();
    assert_runs(&n.base_bytes(0, 8192), &[(4096, 0x44), (4096, 0x33)]);
}

#[test]
fn case08_cow_granularity() {
    let n = started();
    let cb = C64K / u64::from(BS);
    // A 512-byte write in the middle of cluster 5 copies exactly cluster 5.
    n.ingress_write(5 * C64K + 30 * 512, 512, 0x22).unwrap();
    assert_eq!(n.sec.counters().cow_copies, 1);
    let log = n.hidden.log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].kind, log[0].lba, log[0].nblocks),
        (OpKind::Write, 5 * cb, cb)
    );
    // A second write to the same cluster copies nothing.
    n.ingress_write(5 * C64K, 4096, 0x23).unwrap();
    assert_eq!(n.sec.counters().cow_copies, 1);
    // A write across the 9|10 boundary copies both.
    n.ingress_write(10 * C64K - 1024, 2048, 0x24).unwrap();
    assert_eq!(n.sec.counters().cow_copies, 3);
    assert_eq!(n.sec.allocated().1, 3);
    // SVM writes never allocate in hidden.
    n.top_write(20 * C64K, C64K * 3, 0x33).unwrap();
    n.top_write(5 * C64K, 512, 0x34).unwrap();
    assert_eq!(n.sec.allocated().1, 3);
    assert_eq!(n.hidden_writes(), 3);
    // The SVM still sees the pre-write data of the copied clusters.
    assert_runs(
        &n.top_read(5 * C64K, C64K).unwrap(),
        &[(512, 0x34), (C64K - 512, 0x11)],
    );
    assert_runs(
        &n.top_read(9 * C64K, 2 * C64K).unwrap(),
        &[(2 * C64K, 0x11)],
    );
    // After a checkpoint the same cluster is copied again.
    block_on(n.sec.checkpoint()).unwrap();
    n.ingress_write(5 * C64K + 512, 512, 0x25).unwrap();
    assert_eq!(n.sec.counters().cow_copies, 4);
    assert_eq!(n.hidden_writes(), 4);
    // The last cluster is clipped to the disk size.
    let odd = node_with(DISK - 4096, C64K);
    block_on(odd.sec.start(None)).unwrap();
    odd.ingress_write(DISK - 8192, 512, 0x26).unwrap();
    let last = odd.hidden.log()[0];
    assert_eq!(
        (last.lba, last.nblocks),
        ((DISK - C64K) / 512, (C64K - 4096) / 512)
    );
}

#[test]
fn case08_other_granularities() {
    for gran in [4096u64, 16 * 1024, 1 << 20] {
        let n = node_with(DISK, gran);
        block_on(n.sec.start(None)).unwrap();
        n.ingress_write(3 * gran + 512, 512, 0x22).unwrap();
        let log = n.hidden.log();
        assert_eq!(log.len(), 1, "granularity {gran}");
        assert_eq!(u64::from(BS) * log[0].nblocks, gran);
        assert_eq!(u64::from(BS) * log[0].lba, 3 * gran);
    }
}

fn primary() -> (
    Primary<spdk_replication::engine::testing::TestDisk>,
    spdk_replication::engine::testing::TestDisk,
    spdk_replication::engine::testing::TestDisk,
) {
    let n = BLOCKS;
    let (local, remote) = (test_disk(BS, n), test_disk(BS, n));
    let p = Primary::new(local.clone(), remote.clone(), PrimaryConfig::default()).unwrap();
    (p, local, remote)
}

#[test]
fn case09_primary_forwarding_and_error_capture() {
    let rt = TestRuntime::default();
    let (p, local, remote) = primary();
    local.inner().fill(0x44);
    remote.inner().fill(0x55);
    // Before start: local only.
    block_on(p.write(&rt, 0, pattern(4096, 0x01))).unwrap();
    assert_eq!(remote.count(OpKind::Write), 0);
    p.start(Some(Mode::Primary)).unwrap();
    // Reads come from local, never from remote.
    let buf = MemBuf::filled(8192, SENTINEL);
    block_on(p.read(lba(MIB), buf.clone())).unwrap();
    assert_runs(&buf.to_vec(), &[(8192, 0x44)]);
    assert_eq!(remote.count(OpKind::Read), 0);
    // Writes reach both legs.
    block_on(p.write(&rt, lba(MIB), pattern(8192, 0x66))).unwrap();
    block_on(p.write_zeroes(&rt, lba(2 * MIB), 8)).unwrap();
    block_on(p.flush(&rt)).unwrap();
    for leg in [&local, &remote] {
        assert_runs(&leg.inner().contents(MIB..MIB + 8192), &[(8192, 0x66)]);
        assert_runs(&leg.inner().contents(2 * MIB..2 * MIB + 4096), &[(4096, 0)]);
        assert_eq!(leg.count(OpKind::Flush), 1);
    }
    assert_eq!(p.get_error(), Ok(()));
    // A failing remote leg: the caller's write succeeds, get_error reports it.
    remote.fail(&[OpKind::Write], None, Some(1));
    block_on(p.write(&rt, lba(3 * MIB), pattern(4096, 0x67))).unwrap();
    assert_runs(
        &local.inner().contents(3 * MIB..3 * MIB + 4096),
        &[(4096, 0x67)],
    );
    assert_eq!(p.get_error(), Err(ReplicationError::Io));
    assert_eq!(p.get_error().unwrap_err().to_string(), "I/O error occurred");
    // Forwarding stops after the first failure, even though the remote works again.
    let writes_before = remote.count(OpKind::Write);
    block_on(p.write(&rt, lba(4 * MIB), pattern(4096, 0x68))).unwrap();
    assert_eq!(remote.count(OpKind::Write), writes_before);
    assert_runs(
        &remote.inner().contents(4 * MIB..4 * MIB + 4096),
        &[(4096, 0x55)],
    );
    assert_eq!(p.get_error(), Err(ReplicationError::Io), "sticky");
    // stop clears it.
    p.stop(false).unwrap();
    assert_eq!(p.stage(), Stage::Done);
    assert_eq!(p.get_error(), Ok(()));
    // A failing local leg fails the write (replicating or not).
    let (p, local, remote) = primary();
    p.start(None).unwrap();
    local.fail(&[OpKind::Write], None, Some(1));
    assert_eq!(
        block_on(p.write(&rt, 0, pattern(4096, 0x69))),
        Err(IoError::Io)
    );
    assert_eq!(
        remote.count(OpKind::Write),
        1,
        "the remote leg was still sent"
    );
    assert_eq!(
        p.get_error(),
        Ok(()),
        "a local failure is returned, not recorded"
    );
}

#[test]
fn case09_frozen_secondary_times_out_and_keeps_buffer_alive() {
    let rt = TestRuntime::default();
    let (local, remote) = (test_disk(BS, BLOCKS), test_disk(BS, BLOCKS));
    let cfg = PrimaryConfig {
        remote_timeout: Duration::from_millis(250),
        ..Default::default()
    };
    let p = Primary::new(local.clone(), remote.clone(), cfg).unwrap();
    p.start(None).unwrap();
    let frozen = remote.hold(&[OpKind::Write], None, None);
    let data = pattern(4096, 0x7A);
    {
        let mut w = pin!(p.write(&rt, 0, data.clone()));
        assert!(
            poll_once(w.as_mut()).is_pending(),
            "waits for the remote leg"
        );
        rt.advance(Duration::from_millis(249));
        assert!(poll_once(w.as_mut()).is_pending());
        rt.advance(Duration::from_millis(1));
        assert_eq!(poll_once(w.as_mut()), Poll::Ready(Ok(())));
    }
    drop(data);
    assert_eq!(p.get_error(), Err(ReplicationError::Io));
    assert!(p.link_broken());
    assert_eq!(p.counters().remote_timeouts, 1);
    // The timed-out request is still running and owns its data.
    assert_eq!(rt.poll_spawned(), 1);
    frozen.open();
    assert_eq!(rt.poll_spawned(), 0);
    assert_runs(&remote.inner().contents(0..4096), &[(4096, 0x7A)]);
    // Later writes complete from the local leg alone, at once.
    let mut w = pin!(p.write(&rt, 8, pattern(512, 0x7B)));
    assert_eq!(poll_once(w.as_mut()), Poll::Ready(Ok(())));
}

#[test]
fn case10_stage_errors_secondary() {
    use ReplicationError::*;
    let n = node();
    // none
    assert_eq!(n.top_read(0, 512), Err(IoError::Io));
    assert_eq!(n.top_write(0, 512, 1), Err(IoError::Io));
    assert_eq!(block_on(n.sec.top_write_zeroes(0, 1)), Err(IoError::Io));
    assert_eq!(block_on(n.sec.top_flush()), Err(IoError::Io));
    assert_eq!(block_on(n.sec.checkpoint()), Err(NotRunning));
    assert_eq!(block_on(n.sec.stop(false)), Err(NotRunning));
    assert_eq!(block_on(n.sec.stop(true)), Err(NotRunning));
    assert_eq!(n.sec.get_error(), Err(NotRunning));
    assert_eq!(NotRunning.to_string(), "Block replication is not running");
    assert!(matches!(
        block_on(n.sec.start(Some(Mode::Primary))),
        Err(ModeMismatch { .. })
    ));
    // running
    block_on(n.sec.start(Some(Mode::Secondary))).unwrap();
    assert_eq!(block_on(n.sec.start(None)), Err(RunningOrDone));
    assert_eq!(
        RunningOrDone.to_string(),
        "Block replication is running or done"
    );
    assert_eq!(n.sec.get_error(), Ok(()));
    // failover: ingress refused, checkpoint/start/stop ignored
    n.top_write(0, 4096, 0x33).unwrap();
    block_on(n.sec.stop(true)).unwrap();
    assert_eq!(n.ingress_write(0, 512, 1), Err(IoError::Io));
    assert_eq!(block_on(n.sec.ingress_write_zeroes(0, 1)), Err(IoError::Io));
    assert_eq!(block_on(n.sec.ingress_unmap(0, 1)), Err(IoError::Io));
    assert_eq!(block_on(n.sec.checkpoint()), Ok(()));
    assert_eq!(block_on(n.sec.start(None)), Ok(()));
    assert_eq!(n.sec.get_error(), Ok(()));
    assert_eq!(n.sec.stage(), Stage::Failover);
    // failover_failed
    n.base.fail(&[OpKind::Write], None, None);
    assert_eq!(block_on(n.sec.run_merge()), Err(Io));
    assert_eq!(n.sec.stage(), Stage::FailoverFailed);
    assert_eq!(n.sec.get_error(), Err(Io));
    assert_eq!(block_on(n.sec.start(None)), Err(RunningOrDone));
    assert_eq!(block_on(n.sec.checkpoint()), Err(NotRunning));
    assert_eq!(block_on(n.sec.stop(false)), Err(NotRunning));
    assert_eq!(n.ingress_write(0, 512, 1), Err(IoError::Io));
    // done
    n.base.clear_faults();
    block_on(n.sec.stop(true)).unwrap();
    block_on(n.sec.run_merge()).unwrap();
    assert_eq!(n.sec.stage(), Stage::Done);
    assert_eq!(n.ingress_write(0, 512, 1), Err(IoError::Io));
    assert_eq!(n.sec.counters().ingress_refused, 5);
}

#[test]
fn case10_stage_errors_primary() {
    use ReplicationError::*;
    let (p, _, _) = primary();
    assert_eq!(
        p.checkpoint(),
        Ok(()),
        "a no-op on the primary, even in none (spec 4)"
    );
    assert_eq!(p.stop(false), Err(NotRunning));
    assert_eq!(p.get_error(), Err(NotRunning));
    assert!(matches!(
        p.start(Some(Mode::Secondary)),
        Err(ModeMismatch { .. })
    ));
    p.start(Some(Mode::Primary)).unwrap();
    assert_eq!(p.start(None), Err(RunningOrDone));
    assert_eq!(p.checkpoint(), Ok(()), "no-op on the primary");
    p.stop(true).unwrap();
    assert_eq!(p.stage(), Stage::Done);
    assert_eq!(p.start(Some(Mode::Secondary)), Ok(()), "ignored once done");
    assert_eq!(p.stop(false), Ok(()));
    assert_eq!(p.checkpoint(), Ok(()));
    assert_eq!(p.stage(), Stage::Done);
}

#[test]
fn case11_stop_without_failover_serves_base() {
    let n = after_3_and_4();
    block_on(n.sec.stop(false)).unwrap();
    assert_eq!(n.sec.stage(), Stage::Done);
    assert_eq!(n.sec.allocated(), (0, 0));
    assert_runs(&n.top_read(0, DISK).unwrap(), &[(HALF, 0x11), (HALF, 0x22)]);
    n.top_write(0, 4096, 0x44).unwrap();
    assert_runs(&n.base_bytes(0, 8192), &[(4096, 0x44), (4096, 0x11)]);
    assert_eq!(n.ingress_write(0, 512, 0x55), Err(IoError::Io));
    assert_eq!(
        n.active.count(OpKind::Write),
        1,
        "only case 4's write went to active"
    );
}

/// SVM view reference: bytes of the whole disk.
struct View(Vec<u8>);

impl View {
    fn write(&mut self, off: u64, len: u64, byte: u8) {
        self.0[off as usize..(off + len) as usize].fill(byte);
    }
}

#[test]
fn case12_failover_converges_under_svm_load() {
    let n = started();
    let mut view = View(vec![0x11; DISK as usize]);
    // Overlays with data in many clusters: ingress (COW to hidden) and SVM writes.
    for i in 0..200u64 {
        let off = (i * 7919 * 4096) % (DISK - 8192);
        n.ingress_write(off, 4096, 0x22).unwrap();
        if i % 2 == 0 {
            n.top_write(off + 4096, 4096, (i % 200) as u8 + 1).unwrap();
            view.write(off + 4096, 4096, (i % 200) as u8 + 1);
        }
    }
    block_on(n.sec.stop(true)).unwrap();
    let total = n.sec.merge_progress().total_bytes;
    let clusters = total / C64K;
    let mut steps = 0u64;
    let mut rng = 12345u64;
    loop {
        // Several SVM writes between merge steps, many into not-yet-merged clusters.
        for _ in 0..4 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = ((rng >> 20) % (DISK / 512 - 16)) * 512;
            let len = 512 * (1 + (rng >> 8) % 16);
            let byte = (rng >> 40) as u8;
            n.top_write(off, len, byte).unwrap();
            view.write(off, len, byte);
        }
        steps += 1;
        match block_on(n.sec.merge_step()).unwrap() {
            MergeStep::Progress => assert!(steps <= clusters + 1, "merge does not converge"),
            MergeStep::Done => break,
            MergeStep::Idle | MergeStep::Backoff => panic!("merge stopped"),
        }
        let p = n.sec.merge_progress();
        assert!(p.done_bytes <= p.total_bytes);
    }
    assert_eq!(n.sec.stage(), Stage::Done);
    assert_eq!(n.sec.merge_progress().done_bytes, total);
    assert!(
        n.base_bytes(0, DISK) == view.0,
        "base differs from the SVM view"
    );
    assert!(n.top_read(0, DISK).unwrap() == view.0);
}

#[test]
fn case13_failover_failure_split_writes_and_retry() {
    let n = after_3_and_4();
    // Allocated-as-zero in active must survive the merge as zeros.
    block_on(n.sec.top_write_zeroes(lba(MIB), 8)).unwrap();
    // The base fails writes to the last cluster of the first half.
    let bad = lba(HALF - C64K)..lba(HALF);
    n.base.fail(
        &[OpKind::Write, OpKind::WriteZeroes],
        Some(bad.clone()),
        None,
    );
    block_on(n.sec.stop(true)).unwrap();
    assert_eq!(block_on(n.sec.run_merge()), Err(ReplicationError::Io));
    assert_eq!(n.sec.stage(), Stage::FailoverFailed);
    assert_eq!(n.sec.counters().merge_failures, 1);
    let mut want = vec![0x33u8; HALF as usize];
    want.extend(std::iter::repeat_n(0x11, HALF as usize));
    want[MIB as usize..MIB as usize + 4096].fill(0);
    assert!(
        n.top_read(0, DISK).unwrap() == want,
        "view intact after a failed merge"
    );
    // Writes split: a cluster still in the overlays goes to active, a merged one to base.
    n.base.clear_log();
    n.active.clear_log();
    n.top_write(HALF - C64K, 2 * C64K, 0x45).unwrap(); // unmerged | in hidden
    assert_eq!(n.base.count(OpKind::Write), 0);
    assert_eq!(n.active.count(OpKind::Write), 1);
    n.top_write(0, 4096, 0x46).unwrap(); // merged before the failure
    assert_eq!(n.base.count(OpKind::Write), 1);
    assert_eq!(n.active.count(OpKind::Write), 1);
    want[..4096].fill(0x46);
    want[(HALF - C64K) as usize..(HALF + C64K) as usize].fill(0x45);
    assert!(n.top_read(0, DISK).unwrap() == want);
    // A second stop with failover succeeds once the fault is gone.
    n.base.clear_faults();
    block_on(n.sec.stop(true)).unwrap();
    assert_eq!(n.sec.get_error(), Ok(()));
    block_on(n.sec.run_merge()).unwrap();
    assert_eq!(n.sec.stage(), Stage::Done);
    assert!(n.base_bytes(0, DISK) == want, "base equals the SVM view");
}

#[test]
fn allocated_as_zero_never_falls_through() {
    let n = started();
    block_on(n.sec.top_write_zeroes(lba(MIB), lba(8192))).unwrap();
    block_on(n.sec.top_unmap(lba(2 * MIB), lba(4096))).unwrap();
    assert_eq!(n.active.log().len(), 0, "zeroing is metadata only");
    assert_runs(
        &n.top_read(MIB - 512, 8192 + 1024).unwrap(),
        &[(512, 0x11), (8192, 0), (512, 0x11)],
    );
    assert_runs(&n.top_read(2 * MIB, 4096).unwrap(), &[(4096, 0)]);
    n.top_write(MIB, 512, 0x12).unwrap();
    assert_runs(&n.top_read(MIB, 1024).unwrap(), &[(512, 0x12), (512, 0)]);
    assert_eq!(n.sec.allocated().0, lba(8192) + lba(4096));
}

#[test]
fn failed_copy_fails_ingress_write_and_stays_armed() {
    let n = started();
    n.hidden.fail(&[OpKind::Write], None, Some(1));
    assert_eq!(n.ingress_write(3 * C64K, 512, 0x22), Err(IoError::Io));
    assert_runs(&n.base_bytes(3 * C64K, 512), &[(512, 0x11)]);
    assert_eq!(n.sec.counters().cow_failures, 1);
    assert_eq!(n.sec.allocated().1, 0);
    n.ingress_write(3 * C64K, 512, 0x22).unwrap();
    assert_eq!(n.sec.counters().cow_copies, 1);
    assert_runs(&n.top_read(3 * C64K, 1024).unwrap(), &[(1024, 0x11)]);
    // A failing base read during the copy fails it too.
    n.base.fail(&[OpKind::Read], None, Some(1));
    assert_eq!(n.ingress_write(7 * C64K, 512, 0x22), Err(IoError::Io));
    assert_runs(&n.base_bytes(7 * C64K, 512), &[(512, 0x11)]);
}

#[test]
fn requests_outside_the_disk_are_rejected() {
    let n = started();
    assert_eq!(n.top_read(DISK - 512, 1024), Err(IoError::OutOfRange));
    assert_eq!(n.ingress_write(DISK, 512, 1), Err(IoError::OutOfRange));
    assert_eq!(
        block_on(n.sec.top_write_zeroes(BLOCKS, 1)),
        Err(IoError::OutOfRange)
    );
}

#[test]
fn construction_errors_name_the_parameter() {
    let base = test_disk(BS, BLOCKS);
    let e = spdk_replication::engine::Secondary::new(
        base.clone(),
        test_disk(4096, BLOCKS / 8),
        test_disk(BS, BLOCKS),
        C64K,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().starts_with("hidden_bdev: block size 4096"),
        "{e}"
    );
    let e = spdk_replication::engine::Secondary::new(
        base.clone(),
        test_disk(BS, BLOCKS),
        test_disk(BS, 8),
        C64K,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().starts_with("active_bdev: size 8 blocks"),
        "{e}"
    );
    let e = spdk_replication::engine::Secondary::new(
        base,
        test_disk(BS, BLOCKS),
        test_disk(BS, BLOCKS),
        3000,
    )
    .err()
    .unwrap();
    assert!(e.to_string().starts_with("cow_granularity:"), "{e}");
}
