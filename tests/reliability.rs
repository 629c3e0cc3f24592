//! Regression tests for the reliability defects found by review (issue 6), engine side:
//! each failed before its fix. Hand-driven interleavings: devices hold chosen operations on
//! latches and the test polls each request by hand.

mod common;

use common::*;
use futures::executor::block_on;
use spdk_replication::engine::testing::{OpKind, TestRuntime, poll_once, test_disk};
use spdk_replication::engine::{
    Geometry, IoError, IoGate, MAX_COW_GRANULARITY, MAX_REMOTE_TIMEOUT_MS, MergeStep, Primary,
    PrimaryConfig, ReplicationError, Stage,
};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

const C64K: u64 = 64 * 1024;

fn started() -> Node {
    let n = node();
    n.ingress_write(0, DISK, 0x11).unwrap();
    block_on(n.sec.start(None)).unwrap();
    n
}

/// A waker that counts its wake-ups: shows who would be woken on a real executor.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn counting() -> (Arc<CountingWaker>, Waker) {
    let c = Arc::new(CountingWaker::default());
    (c.clone(), Waker::from(c))
}

#[test]
fn gate_wakes_every_task_waiting_for_a_drain() {
    // Two holders (a checkpoint and the end of a merge, say) while an I/O is in flight:
    // both must eventually run. The gate used to keep one drain waker, so the first
    // holder was never woken and its task leaked.
    let gate = IoGate::default();
    let io = gate.try_enter().expect("open gate");
    let (wa, a_waker) = counting();
    let (wb, b_waker) = counting();
    let mut a = pin!(gate.hold());
    let mut b = pin!(gate.hold());
    assert!(
        a.as_mut()
            .poll(&mut Context::from_waker(&a_waker))
            .is_pending()
    );
    assert!(
        b.as_mut()
            .poll(&mut Context::from_waker(&b_waker))
            .is_pending()
    );
    drop(io);
    assert_eq!(wa.0.load(SeqCst), 1, "first holder woken by the drain");
    let Poll::Ready(hold_a) = a.as_mut().poll(&mut Context::from_waker(&a_waker)) else {
        panic!("first hold completes once drained");
    };
    assert!(
        b.as_mut()
            .poll(&mut Context::from_waker(&b_waker))
            .is_pending(),
        "holds are exclusive"
    );
    drop(hold_a);
    assert!(wb.0.load(SeqCst) >= 1, "second holder woken by the release");
    assert!(
        b.as_mut()
            .poll(&mut Context::from_waker(&b_waker))
            .is_ready()
    );
}

#[test]
fn overlapping_failover_stops_start_one_merge() {
    let n = started();
    n.top_write(0, 4 * C64K, 0x33).unwrap();
    // An ingress write in flight keeps the first stop waiting for its drain.
    let held = n.base.hold(&[OpKind::Write], None, Some(1));
    let mut w = pin!(n.sec.ingress_write(lba(8 * C64K), pattern(512, 0x22)));
    assert!(poll_once(w.as_mut()).is_pending());
    let mut a = pin!(n.sec.stop(true));
    let mut b = pin!(n.sec.stop(true));
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    held.open();
    assert_eq!(poll_once(w.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(
        poll_once(a.as_mut()),
        Poll::Ready(Ok(true)),
        "a starts the merge"
    );
    assert_eq!(
        poll_once(b.as_mut()),
        Poll::Ready(Ok(false)),
        "b finds it started"
    );

    // Even if two tasks try to run it, only one merges.
    let merge_write = n.base.hold(&[OpKind::Write], None, Some(1));
    let mut m1 = pin!(n.sec.run_merge());
    assert!(poll_once(m1.as_mut()).is_pending());
    let mut m2 = pin!(n.sec.run_merge());
    assert_eq!(poll_once(m2.as_mut()), Poll::Ready(Ok(MergeStep::Idle)));
    merge_write.open();
    assert_eq!(poll_once(m1.as_mut()), Poll::Ready(Ok(MergeStep::Done)));
    assert_eq!(n.sec.stage(), Stage::Done);
    assert_eq!(n.sec.counters().merged_clusters, 5);
    assert_runs(
        &n.base_bytes(0, 9 * C64K),
        &[(4 * C64K, 0x33), (5 * C64K, 0x11)],
    );
}

#[test]
fn svm_write_during_failover_survives_a_failing_merge() {
    let n = started();
    n.top_write(0, C64K, 0x33).unwrap();
    n.ingress_write(C64K, C64K, 0x22).unwrap();
    block_on(n.sec.stop(true)).unwrap();
    // The base fails writes to cluster 0: merging it (for the SVM write below) fails.
    n.base
        .fail(&[OpKind::Write], Some(lba(0)..lba(C64K)), Some(1));
    // The SVM writes into cluster 0 during the failover: spec 5.1 routes it as in
    // failover_failed (to active), it must not fail.
    assert_eq!(n.top_write(4096, 4096, 0x44), Ok(()));
    assert_eq!(n.sec.stage(), Stage::FailoverFailed);
    assert_eq!(n.sec.get_error(), Err(ReplicationError::Io));
    assert_runs(
        &n.top_read(0, 2 * C64K).unwrap(),
        &[
            (4096, 0x33),
            (4096, 0x44),
            (C64K - 8192, 0x33),
            (C64K, 0x11),
        ],
    );
    // The retry merges everything, the SVM write included.
    assert!(block_on(n.sec.stop(true)).unwrap());
    assert_eq!(block_on(n.sec.run_merge()), Ok(MergeStep::Done));
    assert_runs(
        &n.base_bytes(0, 2 * C64K),
        &[
            (4096, 0x33),
            (4096, 0x44),
            (C64K - 8192, 0x33),
            (C64K, 0x11),
        ],
    );
}

#[test]
fn failed_cow_copy_waits_for_its_sibling_copies() {
    let n = started();
    // An ingress write over clusters 0 and 1: cluster 0's copy fails at its hidden write,
    // cluster 1's copy is held at its base read.
    n.hidden
        .fail(&[OpKind::Write], Some(lba(0)..lba(C64K)), Some(1));
    let sibling_read = n
        .base
        .hold(&[OpKind::Read], Some(lba(C64K)..lba(2 * C64K)), Some(1));
    let mut w = pin!(n.sec.ingress_write(lba(C64K - 512), pattern(1024, 0x22)));
    assert!(
        poll_once(w.as_mut()).is_pending(),
        "the write must not end while a sibling copy still uses its buffer"
    );
    assert_eq!(sibling_read.arrived(), 1);
    sibling_read.open();
    assert_eq!(poll_once(w.as_mut()), Poll::Ready(Err(IoError::Io)));
    // Cluster 1 was copied, cluster 0 stays armed, the base is untouched.
    assert_eq!(n.sec.allocated().1, 1);
    assert_eq!(n.sec.counters().cow_failures, 1);
    assert_runs(&n.base_bytes(0, 2 * C64K), &[(2 * C64K, 0x11)]);
    // A retry copies cluster 0 and then writes.
    n.ingress_write(C64K - 512, 1024, 0x22).unwrap();
    assert_eq!(n.sec.allocated().1, 2);
    assert_runs(&n.top_read(0, 2 * C64K).unwrap(), &[(2 * C64K, 0x11)]);
}

#[test]
fn delete_in_failover_failed_needs_force() {
    let n = started();
    n.top_write(0, C64K, 0x33).unwrap();
    assert_eq!(n.sec.check_delete(false), Ok(()));
    n.base.fail(&[OpKind::Write], None, None);
    block_on(n.sec.stop(true)).unwrap();
    assert_eq!(
        n.sec.check_delete(false),
        Ok(()),
        "failover: the host waits"
    );
    assert_eq!(block_on(n.sec.run_merge()), Err(ReplicationError::Io));
    assert_eq!(n.sec.stage(), Stage::FailoverFailed);
    let e = n.sec.check_delete(false).unwrap_err();
    assert_eq!(e, ReplicationError::UnmergedData);
    assert!(e.to_string().contains("force"), "{e}");
    assert_eq!(n.sec.check_delete(true), Ok(()));
}

#[test]
fn merge_completes_on_a_base_without_flush() {
    let n = started();
    n.base.set_no_flush();
    n.top_write(0, C64K, 0x33).unwrap();
    block_on(n.sec.stop(true)).unwrap();
    assert_eq!(block_on(n.sec.run_merge()), Ok(MergeStep::Done));
    assert_eq!(n.sec.stage(), Stage::Done);
    assert_eq!(n.base.count(OpKind::Flush), 0, "no flush sent to it");
    assert_runs(&n.base_bytes(0, C64K), &[(C64K, 0x33)]);
}

#[test]
fn top_flush_reaches_every_leg_holding_the_svm_view() {
    let n = started();
    n.hidden.set_no_flush();
    block_on(n.sec.top_flush()).unwrap();
    assert_eq!(n.active.count(OpKind::Flush), 1);
    assert_eq!(n.base.count(OpKind::Flush), 1);
    assert_eq!(
        n.hidden.count(OpKind::Flush),
        0,
        "skipped: no flush support"
    );
    block_on(n.sec.ingress_flush()).unwrap();
    assert_eq!(n.base.count(OpKind::Flush), 2);
    block_on(n.sec.stop(false)).unwrap();
    block_on(n.sec.top_flush()).unwrap();
    assert_eq!(n.base.count(OpKind::Flush), 3);
    assert_eq!(n.active.count(OpKind::Flush), 1, "done: the base only");
}

#[test]
fn primary_flush_reaches_both_legs_and_skips_legs_without_flush() {
    let rt = TestRuntime::default();
    let (local, remote) = (test_disk(BS, BLOCKS), test_disk(BS, BLOCKS));
    let p = Primary::new(local.clone(), remote.clone(), PrimaryConfig::default()).unwrap();
    block_on(p.flush(&rt)).unwrap();
    assert_eq!(
        (local.count(OpKind::Flush), remote.count(OpKind::Flush)),
        (1, 0)
    );
    p.start(None).unwrap();
    block_on(p.flush(&rt)).unwrap();
    assert_eq!(
        (local.count(OpKind::Flush), remote.count(OpKind::Flush)),
        (2, 1)
    );
    local.set_no_flush();
    block_on(p.flush(&rt)).unwrap();
    assert_eq!(
        (local.count(OpKind::Flush), remote.count(OpKind::Flush)),
        (2, 2)
    );
    assert_eq!(p.get_error(), Ok(()));
}

#[test]
fn create_parameters_are_bounded() {
    let e = Geometry::new(512, 1 << 20, MAX_COW_GRANULARITY * 2).unwrap_err();
    assert!(e.to_string().starts_with("cow_granularity:"), "{e}");
    assert!(Geometry::new(512, 1 << 20, MAX_COW_GRANULARITY).is_ok());
    let disk = || test_disk(BS, BLOCKS);
    let cfg = |ms: u64| PrimaryConfig {
        remote_timeout: Duration::from_millis(ms),
        ..Default::default()
    };
    let e = Primary::new(disk(), disk(), cfg(MAX_REMOTE_TIMEOUT_MS + 1))
        .err()
        .expect("over the bound");
    assert!(e.to_string().starts_with("remote_timeout_ms:"), "{e}");
    let e = Primary::new(disk(), disk(), cfg(0)).err().expect("zero");
    assert!(e.to_string().starts_with("remote_timeout_ms:"), "{e}");
    assert!(Primary::new(disk(), disk(), cfg(MAX_REMOTE_TIMEOUT_MS)).is_ok());
}

#[test]
fn zero_block_requests_are_harmless() {
    let n = started();
    let empty = pattern(0, 0);
    assert_eq!(block_on(n.sec.top_read(lba(C64K), empty.clone())), Ok(()));
    assert_eq!(block_on(n.sec.top_write(lba(C64K), empty.clone())), Ok(()));
    assert_eq!(block_on(n.sec.ingress_write(lba(C64K), empty)), Ok(()));
    assert_eq!(n.sec.plan_top_read(lba(C64K), 0).unwrap().count(), 0);
    assert_eq!(n.sec.plan_top_read_whole(lba(C64K), 0), Ok(None));
    assert_eq!(n.sec.allocated(), (0, 0));
}

#[test]
fn out_of_buffers_is_retryable_not_fatal() {
    let n = started();
    // A COW copy that cannot get a buffer fails the ingress write with NoMem (the host
    // retries it later) and leaves the cluster armed; nothing reached the base.
    n.base.fail_allocs(1);
    assert_eq!(n.ingress_write(0, 4096, 0x22), Err(IoError::NoMem));
    assert_eq!(n.sec.allocated().1, 0);
    assert_runs(&n.base_bytes(0, C64K), &[(C64K, 0x11)]);
    n.ingress_write(0, 4096, 0x22).unwrap();
    assert_eq!(n.sec.allocated().1, 1);
    // A merge step without buffers backs off and is retried; the failover completes.
    n.top_write(2 * C64K, 4096, 0x33).unwrap();
    block_on(n.sec.stop(true)).unwrap();
    n.base.fail_allocs(2);
    assert_eq!(block_on(n.sec.merge_step()), Ok(MergeStep::Backoff));
    assert_eq!(n.sec.stage(), Stage::Failover);
    let mut backoffs = 0;
    let end = block_on(n.sec.run_merge_with(|step| {
        backoffs += usize::from(step == MergeStep::Backoff);
        std::future::ready(())
    }));
    assert_eq!(end, Ok(MergeStep::Done));
    assert_eq!(backoffs, 1);
    assert_eq!(n.sec.get_error(), Ok(()));
    assert_runs(
        &n.base_bytes(0, 3 * C64K),
        &[(2 * C64K, 0x11), (4096, 0x33), (C64K - 4096, 0x11)],
    );
}
