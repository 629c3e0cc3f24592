//! Acceptance case 14 and other races, with controlled interleavings: devices hold chosen
//! operations on latches and the test polls each request by hand. No sleeps, no threads.

mod common;

use common::*;
use futures::executor::block_on;
use spdk_replication::engine::testing::{MemBuf, OpKind, poll_once};
use spdk_replication::engine::{MergeStep, Stage};
use std::pin::pin;
use std::task::Poll;

const C64K: u64 = 64 * 1024;

fn started() -> Node {
    let n = node();
    n.ingress_write(0, DISK, 0x11).unwrap();
    block_on(n.sec.start(None)).unwrap();
    n
}

#[test]
fn two_ingress_writes_to_one_cluster_copy_it_once() {
    let n = started();
    let c = 7 * C64K;
    // The copy's base read is held: the first writer is stuck mid-copy.
    let copy_read = n.base.hold(&[OpKind::Read], None, Some(1));
    let mut a = pin!(n.sec.ingress_write(lba(c + 512), pattern(512, 0x21)));
    let mut b = pin!(n.sec.ingress_write(lba(c + 4096), pattern(1024, 0x22)));
    assert!(poll_once(a.as_mut()).is_pending());
    assert_eq!(copy_read.arrived(), 1);
    assert!(
        poll_once(b.as_mut()).is_pending(),
        "second writer waits for the copy"
    );
    assert!(poll_once(b.as_mut()).is_pending());
    assert_eq!(n.base.count(OpKind::Read), 1, "only one copy started");
    copy_read.open();
    assert_eq!(poll_once(a.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(poll_once(b.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(n.sec.counters().cow_copies, 1);
    assert_eq!(n.hidden_writes(), 1);
    assert_runs(
        &n.base_bytes(c, 8192),
        &[
            (512, 0x11),
            (512, 0x21),
            (3072, 0x11),
            (1024, 0x22),
            (3072, 0x11),
        ],
    );
    assert_runs(&n.top_read(c, C64K).unwrap(), &[(C64K, 0x11)]);
}

#[test]
fn waiter_redoes_a_failed_copy() {
    let n = started();
    let c = 9 * C64K;
    let copy_read = n.base.hold(&[OpKind::Read], None, Some(1));
    n.hidden.fail(&[OpKind::Write], None, Some(1));
    let mut a = pin!(n.sec.ingress_write(lba(c), pattern(512, 0x21)));
    let mut b = pin!(n.sec.ingress_write(lba(c + 512), pattern(512, 0x22)));
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    copy_read.open();
    assert!(
        matches!(poll_once(a.as_mut()), Poll::Ready(Err(_))),
        "failed copy fails A"
    );
    assert_eq!(
        poll_once(b.as_mut()),
        Poll::Ready(Ok(())),
        "B copies again and succeeds"
    );
    assert_eq!(n.sec.counters().cow_copies, 1);
    assert_eq!(n.sec.counters().cow_failures, 1);
    assert_runs(&n.base_bytes(c, 1024), &[(512, 0x11), (512, 0x22)]);
    assert_runs(&n.top_read(c, 1024).unwrap(), &[(1024, 0x11)]);
}

#[test]
fn top_read_overtaken_by_ingress_write_returns_pre_write_data() {
    let n = started();
    let c = 3 * C64K;
    // The top read decides "base" and is held before its base read executes.
    let top_base_read = n.base.hold(&[OpKind::Read], None, Some(1));
    let out = MemBuf::filled(C64K as usize, SENTINEL);
    let mut read = pin!(n.sec.top_read(lba(c), out.clone()));
    assert!(poll_once(read.as_mut()).is_pending());
    assert_eq!(top_base_read.arrived(), 1);
    // Meanwhile the ingress write copies the cluster and overwrites it in the base.
    n.ingress_write(c, C64K, 0x22).unwrap();
    assert_runs(&n.base_bytes(c, C64K), &[(C64K, 0x22)]);
    // The held read now reads new data from the base; it must notice and use hidden.
    top_base_read.open();
    assert_eq!(poll_once(read.as_mut()), Poll::Ready(Ok(())));
    assert_runs(&out.to_vec(), &[(C64K, 0x11)]);
    assert_eq!(n.sec.counters().read_revalidations, 1);
}

#[test]
fn top_read_during_copy_returns_pre_write_data() {
    let n = started();
    let c = 4 * C64K;
    // The copy is held after reading the base, before writing hidden.
    let hidden_write = n.hidden.hold(&[OpKind::Write], None, Some(1));
    let mut w = pin!(n.sec.ingress_write(lba(c), pattern(C64K, 0x22)));
    assert!(poll_once(w.as_mut()).is_pending());
    assert_eq!(hidden_write.arrived(), 1);
    // A read falling through to the base sees the old data; it is not held.
    assert_runs(&n.top_read(c, C64K).unwrap(), &[(C64K, 0x11)]);
    hidden_write.open();
    assert_eq!(poll_once(w.as_mut()), Poll::Ready(Ok(())));
    assert_runs(&n.top_read(c, C64K).unwrap(), &[(C64K, 0x11)]);
    assert_runs(&n.base_bytes(c, C64K), &[(C64K, 0x22)]);
}

#[test]
fn checkpoint_waits_for_in_flight_io_and_holds_new_io() {
    let n = started();
    let svm_write = n.active.hold(&[OpKind::Write], None, Some(1));
    let mut w1 = pin!(n.sec.top_write(0, pattern(4096, 0x33)));
    assert!(poll_once(w1.as_mut()).is_pending());
    let mut ckpt = pin!(n.sec.checkpoint());
    assert!(
        poll_once(ckpt.as_mut()).is_pending(),
        "drains in-flight I/O"
    );
    assert!(n.sec.gate().is_held());
    let mut w2 = pin!(n.sec.top_write(lba(8192), pattern(4096, 0x34)));
    assert!(poll_once(w2.as_mut()).is_pending(), "new I/O is held");
    let mut ingress = pin!(n.sec.ingress_write(lba(C64K), pattern(512, 0x22)));
    assert!(poll_once(ingress.as_mut()).is_pending(), "ingress too");
    // The hold lasts at least as long as the write in flight is kept back.
    std::thread::sleep(std::time::Duration::from_millis(20));
    svm_write.open();
    assert_eq!(poll_once(w1.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(poll_once(ckpt.as_mut()), Poll::Ready(Ok(())));
    let c = n.sec.counters();
    assert!(c.checkpoint_hold_ns_max >= 20_000_000, "{c:?}");
    assert_eq!(
        c.checkpoint_hold_ns_total, c.checkpoint_hold_ns_max,
        "{c:?}"
    );
    assert_eq!(poll_once(w2.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(poll_once(ingress.as_mut()), Poll::Ready(Ok(())));
    // w1 finished before the checkpoint, so it was dropped; w2 came after and stays.
    assert_runs(
        &n.top_read(0, 12288).unwrap(),
        &[(8192, 0x11), (4096, 0x34)],
    );
    // The ingress write ran after the re-arm, so it copied.
    assert_eq!(n.sec.counters().cow_copies, 1);
    assert_runs(&n.top_read(C64K, 512).unwrap(), &[(512, 0x11)]);
}

#[test]
fn svm_write_waits_for_the_merge_of_its_cluster() {
    let n = started();
    n.top_write(0, C64K, 0x33).unwrap();
    block_on(n.sec.stop(true)).unwrap();
    // The merge of cluster 0 is held at its base write.
    let merge_write = n.base.hold(&[OpKind::Write], None, Some(1));
    let mut step = pin!(n.sec.merge_step());
    assert!(poll_once(step.as_mut()).is_pending());
    let mut w = pin!(n.sec.top_write(lba(512), pattern(512, 0x44)));
    assert!(
        poll_once(w.as_mut()).is_pending(),
        "waits for the cluster's merge"
    );
    merge_write.open();
    assert_eq!(
        poll_once(step.as_mut()),
        Poll::Ready(Ok(MergeStep::Progress))
    );
    assert_eq!(poll_once(w.as_mut()), Poll::Ready(Ok(())));
    block_on(n.sec.run_merge()).unwrap();
    assert_eq!(n.sec.stage(), Stage::Done);
    assert_runs(
        &n.base_bytes(0, C64K),
        &[(512, 0x33), (512, 0x44), (C64K - 1024, 0x33)],
    );
}

#[test]
fn failover_waits_for_in_flight_ingress_write() {
    let n = started();
    let ingress_base_write = n.base.hold(&[OpKind::Write], None, Some(1));
    let mut w = pin!(n.sec.ingress_write(lba(C64K), pattern(512, 0x22)));
    assert!(poll_once(w.as_mut()).is_pending());
    let mut stop = pin!(n.sec.stop(true));
    assert!(
        poll_once(stop.as_mut()).is_pending(),
        "stage switch waits for the ingress write"
    );
    assert_eq!(n.sec.stage(), Stage::Running);
    ingress_base_write.open();
    assert_eq!(poll_once(w.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(poll_once(stop.as_mut()), Poll::Ready(Ok(true)));
    block_on(n.sec.run_merge()).unwrap();
    // The copied cluster is rolled back to the checkpoint state.
    assert_runs(&n.base_bytes(C64K, 512), &[(512, 0x11)]);
}

#[test]
fn the_merge_keeps_several_clusters_in_flight_and_an_svm_write_waits_for_its_own() {
    let n = started();
    // 40 clusters of SVM data (64 KiB each): the merge issues 1 MiB, 16 clusters, at once.
    n.top_write(0, 40 * C64K, 0x33).unwrap();
    block_on(n.sec.stop(true)).unwrap();
    let held = n.base.hold(&[OpKind::Write], None, None);
    let mut merge = pin!(n.sec.run_merge());
    assert!(poll_once(merge.as_mut()).is_pending());
    assert_eq!(held.arrived(), 16, "clusters in flight");
    // An SVM write to a cluster being merged waits for that merge.
    let mut w = pin!(n.sec.top_write(lba(3 * C64K), pattern(512, 0x44)));
    assert!(poll_once(w.as_mut()).is_pending());
    held.open();
    let mut end = None;
    if let Poll::Ready(v) = poll_once(merge.as_mut()) {
        end = Some(v);
    }
    assert_eq!(poll_once(w.as_mut()), Poll::Ready(Ok(())));
    let end = end.unwrap_or_else(|| block_on(merge));
    assert_eq!(end, Ok(MergeStep::Done));
    assert_eq!(n.sec.stage(), Stage::Done);
    assert_eq!(n.sec.counters().merged_clusters, 40);
    assert_runs(
        &n.base_bytes(0, 41 * C64K),
        &[
            (3 * C64K, 0x33),
            (512, 0x44),
            (37 * C64K - 512, 0x33),
            (C64K, 0x11),
        ],
    );
}
