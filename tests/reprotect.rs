//! `bdev_replication_reprotect` on the engine and the control plane (RAM host): a promoted
//! secondary becomes a primary in place (same replication bdev object), its overlays and
//! ingress released; a full sync copies everything byte for byte; later writes reach both
//! legs and reads come from the local leg; errors leave nothing changed.

use serde_json::{Value, json};
use spdk_replication::control::testing::RamHost;
use spdk_replication::control::{Role, RoleRef, find};
use spdk_replication::engine::testing::{MemBuf, TestDisk, TestRuntime, poll_once};
use spdk_replication::engine::{BlockDevice, Stage};
use std::future::Future;
use std::task::Poll;

const BLOCKS: u64 = 2048;
const BS: u32 = 4096;
const DISK: usize = BLOCKS as usize * BS as usize;
const HALF: u64 = BLOCKS / 2;

fn host() -> RamHost {
    let h = RamHost::default();
    for n in ["b0", "h0", "a0", "n0", "l0", "r0", "b1", "h1", "a1", "n1"] {
        h.add_malloc(n, BS, BLOCKS);
    }
    h.add_malloc("small", BS, BLOCKS / 2);
    h
}

fn ok(h: &RamHost, method: &str, params: Value) -> Value {
    h.call(method, params.clone())
        .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
}

fn err(h: &RamHost, method: &str, params: Value) -> (i32, String) {
    let e = h
        .call(method, params.clone())
        .expect_err(&format!("{method} {params} must fail"));
    (e.code, e.message)
}

fn run<F: Future>(f: F) -> F::Output {
    let mut f = Box::pin(f);
    loop {
        if let Poll::Ready(v) = poll_once(f.as_mut()) {
            return v;
        }
    }
}

fn buf(blocks: u64, byte: u8) -> MemBuf {
    MemBuf::filled((blocks * u64::from(BS)) as usize, byte)
}

fn contents(h: &RamHost, bdev: &str) -> Vec<u8> {
    h.disk(bdev).unwrap().inner().contents(0..DISK as u64)
}

fn runs(data: &[u8], want: &[(usize, u8)], what: &str) {
    let mut at = 0;
    for &(len, b) in want {
        if let Some(i) = data[at..at + len].iter().position(|&x| x != b) {
            panic!(
                "{what}: byte {} is {:#x}, want {b:#x}",
                at + i,
                data[at + i]
            );
        }
        at += len;
    }
    assert_eq!(at, data.len(), "{what}: length");
}

/// Secondary `s{i}` over b{i}/h{i}/a{i}: base 0x11, started, SVM wrote 0x33 over the
/// first half, failed over: `done` with base = 0x33 | 0x11.
fn promoted(h: &RamHost, i: u32) -> std::sync::Arc<spdk_replication::control::Replica<TestDisk>> {
    let name = format!("s{i}");
    ok(
        h,
        "bdev_replication_create",
        json!({"name": name, "mode": "secondary", "base_bdev": format!("b{i}"),
               "hidden_bdev": format!("h{i}"), "active_bdev": format!("a{i}")}),
    );
    let node = find(h, &name).unwrap();
    let sec = node.secondary().unwrap();
    run(sec.ingress_write(0, buf(BLOCKS, 0x11))).unwrap();
    ok(h, "bdev_replication_start", json!({"name": name}));
    run(sec.top_write(0, buf(HALF, 0x33))).unwrap();
    ok(
        h,
        "bdev_replication_stop",
        json!({"name": name, "failover": true}),
    );
    h.run_background();
    assert_eq!(node.stage(), Stage::Done);
    node
}

#[test]
fn reprotect_errors_name_bdev_stage_and_param_and_change_nothing() {
    let h = host();
    ok(
        &h,
        "bdev_replication_create",
        json!({"name": "p0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "r0"}),
    );
    ok(
        &h,
        "bdev_replication_create",
        json!({"name": "s1", "mode": "secondary", "base_bdev": "b1", "hidden_bdev": "h1",
               "active_bdev": "a1"}),
    );
    let rp = |name: &str, remote: &str| json!({"name": name, "remote_bdev": remote});
    assert_eq!(
        err(&h, "bdev_replication_reprotect", rp("s1", "n1")),
        (
            -1,
            "s1: Block replication is not done (stage none): reprotect needs a promoted \
             secondary in stage done"
                .into()
        )
    );
    ok(&h, "bdev_replication_start", json!({"name": "s1"}));
    assert_eq!(
        err(&h, "bdev_replication_reprotect", rp("s1", "n1")).1,
        "s1: Block replication is not done (stage running): reprotect needs a promoted \
         secondary in stage done"
    );
    assert_eq!(
        err(&h, "bdev_replication_reprotect", rp("p0", "n1")),
        (-22, "p0: reprotect: not valid with mode primary".into())
    );
    assert_eq!(
        err(&h, "bdev_replication_reprotect", rp("zz", "n1")),
        (-19, "name: no replication bdev named zz".into())
    );

    let node = promoted(&h, 0);
    let claimed_before = h.claimed();
    let mut cases: Vec<(Value, i32, &str)> = vec![
        (
            rp("s0", "nope"),
            -19,
            "remote_bdev: cannot open bdev nope (no such device)",
        ),
        (
            rp("s0", "r0"),
            -16,
            "remote_bdev: bdev r0 is already claimed",
        ),
        (
            rp("s0", "b0"),
            -16,
            "remote_bdev: bdev b0 is already claimed",
        ),
        (
            rp("s0", "s0"),
            -22,
            "remote_bdev: bdev s0 is the replication bdev itself",
        ),
        (rp("s0", ""), -22, "remote_bdev: must not be empty"),
        (
            rp("s0", "small"),
            -22,
            "s0: remote_bdev: 1024 blocks is smaller than the local bdev's 2048",
        ),
        (json!({"name": "s0"}), -32602, "missing field `remote_bdev`"),
        (
            json!({"name": "s0", "remote_bdev": "n0", "sync": "some"}),
            -32602,
            "sync: unknown variant `some`, expected one of `none`, `full`, `incremental`",
        ),
        (
            json!({"name": "s0", "remote_bdev": "n0", "sync_granularity": 3}),
            -22,
            "sync_granularity: 3 must be a power of two, at most 16777216",
        ),
        (
            json!({"name": "s0", "remote_bdev": "n0", "peer_dirty_extents": [[0, 4096]]}),
            -22,
            "peer_dirty_extents: only valid with sync \"incremental\"",
        ),
        (
            json!({"name": "s0", "remote_bdev": "n0", "sync": "incremental",
                   "peer_dirty_extents": [[1]]}),
            -32602,
            "peer_dirty_extents",
        ),
    ];
    let outside = "not a non-empty run of whole 4096-byte blocks inside the 8388608-byte disk";
    for (ext, at) in [
        (json!([[0, 4096], [0, 0]]), "extent 1 [0, 0]"),
        (json!([[100, 4096]]), "extent 0 [100, 4096]"),
        (json!([[4096, 100]]), "extent 0 [4096, 100]"),
        (json!([[DISK - 4096, 8192]]), "extent 0 [8384512, 8192]"),
        (
            json!([[u64::MAX - 4095, 8192]]),
            "extent 0 [18446744073709547520, 8192]",
        ),
    ] {
        let params = json!({"name": "s0", "remote_bdev": "n0", "sync": "incremental",
                            "peer_dirty_extents": ext});
        cases.push((
            params,
            -22,
            Box::leak(format!("peer_dirty_extents: {at}: {outside}").into_boxed_str()),
        ));
    }
    for (params, code, msg) in cases {
        let (c, m) = err(&h, "bdev_replication_reprotect", params.clone());
        assert_eq!(c, code, "{params}: {m}");
        assert!(m.starts_with(msg), "{params}: got {m:?}, want {msg:?}");
        assert_eq!(h.claimed(), claimed_before, "{params}: claims rolled back");
        assert_eq!(node.mode().as_str(), "secondary", "{params}");
        assert!(!node.is_reprotected());
    }
}

#[test]
fn failover_then_reprotect_with_full_sync_copies_everything_and_replicates() {
    let h = host();
    let node = promoted(&h, 0);
    // The overlays were released at done.
    assert_eq!(h.claimed(), vec!["b0".to_owned()]);
    ok(
        &h,
        "bdev_replication_reprotect",
        json!({"name": "s0", "remote_bdev": "n0"}),
    );
    // The same object, now a primary: old base local, n0 remote, a sync started.
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "s0"}))[0].clone();
    assert_eq!(st["mode"], "primary");
    assert_eq!(st["stage"], "running");
    assert_eq!(st["reprotected"], true);
    assert_eq!(
        (st["local_bdev"].as_str(), st["remote_bdev"].as_str()),
        (Some("b0"), Some("n0"))
    );
    assert_eq!(st["sync"]["state"], "syncing");
    assert_eq!(st["sync"]["dirty_bytes"], DISK as u64);
    assert_eq!(h.claimed(), vec!["b0".to_owned(), "n0".to_owned()]);
    h.run_background();
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "s0"}))[0].clone();
    assert_eq!(st["sync"]["state"], "in_sync", "{st}");
    assert_eq!(st["sync"]["done_bytes"], DISK as u64);
    assert_eq!(st["counters"]["sync_bytes"], DISK as u64);
    let half = HALF as usize * BS as usize;
    runs(
        &contents(&h, "n0"),
        &[(half, 0x33), (half, 0x11)],
        "remote after sync",
    );
    assert_eq!(contents(&h, "n0"), contents(&h, "b0"));

    // Guest I/O through the same replica object: writes reach both legs, reads come from
    // the local leg only.
    let RoleRef::Primary(p) = node.role() else {
        panic!("not a primary")
    };
    let rt = TestRuntime::default();
    run(p.write(&rt, 100, buf(8, 0x77))).unwrap();
    run(p.write_zeroes(&rt, 200, 4)).unwrap();
    let local = contents(&h, "b0");
    assert_eq!(contents(&h, "n0"), local, "both legs after writes");
    assert!(
        local[100 * BS as usize..108 * BS as usize]
            .iter()
            .all(|&b| b == 0x77)
    );
    // Something only on the remote: a read must not see it.
    h.disk("n0").unwrap().inner().fill(0xEE);
    let got = MemBuf::filled(16 * BS as usize, 0xA5);
    run(p.read(96, got.clone())).unwrap();
    assert_eq!(got.to_vec(), local[96 * BS as usize..112 * BS as usize]);

    // save_config's entry is the primary form.
    assert_eq!(
        node.config_entry(),
        json!({"method": "bdev_replication_create", "params": {"name": "s0",
               "mode": "primary", "local_bdev": "b0", "remote_bdev": "n0",
               "remote_timeout_ms": 1000, "sync_granularity": 65536}})
    );
    // The overlays are free: another secondary may claim them.
    ok(
        &h,
        "bdev_replication_create",
        json!({"name": "s9", "mode": "secondary", "base_bdev": "b1", "hidden_bdev": "h0",
               "active_bdev": "a0"}),
    );
    // The ingress name is free again.
    assert!(!spdk_replication::control::Host::bdev_exists(
        &h,
        "s0_ingress"
    ));

    // A second reprotect is refused; the COLO framework's start of the primary that
    // follows is accepted and ignored; a start with a full sync in running is not.
    assert_eq!(
        err(
            &h,
            "bdev_replication_reprotect",
            json!({"name": "s0", "remote_bdev": "n1"})
        ),
        (
            -22,
            "s0: reprotect: not valid with mode primary (already reprotected)".into()
        )
    );
    ok(
        &h,
        "bdev_replication_start",
        json!({"name": "s0", "mode": "primary"}),
    );
    assert_eq!(
        err(
            &h,
            "bdev_replication_start",
            json!({"name": "s0", "sync": "full"})
        )
        .1,
        "s0: Block replication is running or done"
    );
    ok(&h, "bdev_replication_checkpoint", json!({"name": "s0"}));
    ok(&h, "bdev_replication_stop", json!({"name": "s0"}));
    assert_eq!(node.stage(), Stage::Done);
    ok(&h, "bdev_replication_delete", json!({"name": "s0"}));
    let claimed = h.claimed();
    assert!(!claimed.contains(&"b0".to_owned()) && !claimed.contains(&"n0".to_owned()));
}

#[test]
fn reprotect_without_sync_starts_clean_and_late_secondary_writes_are_marked() {
    let h = host();
    let node = promoted(&h, 0);
    ok(
        &h,
        "bdev_replication_reprotect",
        json!({"name": "s0", "remote_bdev": "n0", "sync": "none", "sync_granularity": 16384}),
    );
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "s0"}))[0].clone();
    assert_eq!(st["sync"]["state"], "in_sync", "{st}");
    assert_eq!(st["sync_granularity"], 16384);
    h.run_background();
    assert_eq!(contents(&h, "n0"), vec![0u8; DISK], "nothing copied");
    // A top write that took the secondary's path (it read the role before the switch)
    // lands on the base only: its region is marked for a resync.
    let Role::Secondary(sec) = &node.role else {
        panic!("created as a secondary")
    };
    run(sec.top_write(5, buf(1, 0x99))).unwrap();
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "s0"}))[0].clone();
    assert_eq!(st["sync"]["state"], "out_of_sync");
    assert_eq!(st["sync"]["dirty_bytes"], 16384);
    ok(&h, "bdev_replication_resync", json!({"name": "s0"}));
    h.run_background();
    let n0 = contents(&h, "n0");
    assert!(
        n0[5 * BS as usize..6 * BS as usize]
            .iter()
            .all(|&b| b == 0x99)
    );
    assert_eq!(h.disk("n0").unwrap().block_size(), BS);
}

#[test]
fn incremental_reprotect_copies_exactly_what_changed_since_the_last_checkpoint() {
    let h = host();
    ok(
        &h,
        "bdev_replication_create",
        json!({"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0",
               "active_bdev": "a0", "cow_granularity": 16384}),
    );
    let node = find(&h, "s0").unwrap();
    let sec = node.secondary().unwrap();
    // The common checkpoint: both disks 0x11 (n0 plays the former primary's disk).
    run(sec.ingress_write(0, buf(BLOCKS, 0x11))).unwrap();
    h.disk("n0").unwrap().inner().fill(0x11);
    ok(&h, "bdev_replication_start", json!({"name": "s0"}));
    ok(&h, "bdev_replication_checkpoint", json!({"name": "s0"}));
    // After it: the primary writes blocks 512..520 (two clusters; they reach both disks),
    // the SVM writes block 0..2 (cluster 0).
    run(sec.ingress_write(512, buf(8, 0x22))).unwrap();
    let n0 = h.disk("n0").unwrap();
    run(n0.inner().write(512, buf(8, 0x22))).unwrap();
    run(sec.top_write(0, buf(2, 0x33))).unwrap();
    ok(
        &h,
        "bdev_replication_stop",
        json!({"name": "s0", "failover": true}),
    );
    h.run_background();
    assert_eq!(node.stage(), Stage::Done);
    // After the failover: the SVM writes block 1000 (cluster 250).
    run(sec.top_write(1000, buf(1, 0x44))).unwrap();
    assert_eq!(
        sec.changed_since_checkpoint().iter().collect::<Vec<_>>(),
        vec![0, 128, 129, 250]
    );
    // The former primary's part: it wrote blocks 1500..1504 after losing the link (they
    // never reached s0). Its dirty map (p0, default 64 KiB regions: blocks 1488..1504)
    // goes to the reprotect.
    run(n0.inner().write(1500, buf(4, 0x55))).unwrap();
    ok(
        &h,
        "bdev_replication_create",
        json!({"name": "p0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "r0"}),
    );
    ok(&h, "bdev_replication_start", json!({"name": "p0"}));
    h.disk("r0").unwrap().fail(
        &[spdk_replication::engine::testing::OpKind::Write],
        None,
        None,
    );
    let p0 = find(&h, "p0").unwrap();
    run(p0
        .primary()
        .unwrap()
        .write(&TestRuntime::default(), 1500, buf(4, 0x55)))
    .unwrap();
    let map = ok(&h, "bdev_replication_get_dirty_map", json!({"name": "p0"}));
    assert_eq!(
        map,
        json!({"name": "p0", "block_size": 4096, "sync_granularity": 65536,
               "dirty_bytes": 65536, "extents": [[1488 * 4096, 65536]]})
    );
    assert_eq!(
        err(&h, "bdev_replication_get_dirty_map", json!({"name": "s0"})),
        (
            -22,
            "s0: get_dirty_map: not valid with mode secondary".into()
        )
    );
    assert_eq!(
        err(&h, "bdev_replication_get_dirty_map", json!({"name": "zz"})),
        (-19, "name: no replication bdev named zz".into())
    );
    ok(
        &h,
        "bdev_replication_reprotect",
        json!({"name": "s0", "remote_bdev": "n0", "sync": "incremental",
               "sync_granularity": 16384, "peer_dirty_extents": map["extents"]}),
    );
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "s0"}))[0].clone();
    assert_eq!(st["sync"]["state"], "syncing", "{st}");
    assert_eq!(st["sync"]["dirty_bytes"], 4 * 16384 + 65536);
    h.run_background();
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "s0"}))[0].clone();
    assert_eq!(st["sync"]["state"], "in_sync", "{st}");
    assert_eq!(
        st["counters"]["sync_bytes"],
        4 * 16384 + 65536,
        "exactly the changed regions, both sides'"
    );
    // Byte-exact: the former primary's disk is now the promoted SVM's (its 0x22 rolled
    // back, the SVM's writes in).
    assert_eq!(contents(&h, "n0"), contents(&h, "b0"));
    let bs = BS as usize;
    let want = {
        let mut v = vec![0x11u8; DISK];
        v[..2 * bs].fill(0x33);
        v[1000 * bs..1001 * bs].fill(0x44);
        v
    };
    assert_eq!(contents(&h, "n0"), want);
    // Nothing changed: an incremental reprotect starts in sync without a job.
    let node1 = promoted_clean(&h);
    ok(
        &h,
        "bdev_replication_reprotect",
        json!({"name": "s1", "remote_bdev": "n1", "sync": "incremental"}),
    );
    assert_eq!(node1.stage(), Stage::Running);
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "s1"}))[0].clone();
    assert_eq!(st["sync"]["state"], "in_sync", "{st}");
}

/// s1 over b1/h1/a1, failed over right after a checkpoint with nothing written since.
fn promoted_clean(h: &RamHost) -> std::sync::Arc<spdk_replication::control::Replica<TestDisk>> {
    ok(
        h,
        "bdev_replication_create",
        json!({"name": "s1", "mode": "secondary", "base_bdev": "b1", "hidden_bdev": "h1",
               "active_bdev": "a1"}),
    );
    ok(h, "bdev_replication_start", json!({"name": "s1"}));
    ok(
        h,
        "bdev_replication_stop",
        json!({"name": "s1", "failover": true}),
    );
    h.run_background();
    find(h, "s1").unwrap()
}

#[test]
fn a_delete_racing_a_reprotect_waits_for_it_and_releases_the_remote_leg() {
    use spdk_replication::control::handle;
    use spdk_replication::engine::testing::OpKind;
    let h = host();
    let node = promoted(&h, 0);
    let sec = node.secondary().unwrap();
    // A top write in flight on the base: the reprotect waits for it to drain, holding
    // its claim on n0.
    let latch = h.disk("b0").unwrap().hold(&[OpKind::Write], None, Some(1));
    let mut w = Box::pin(sec.top_write(0, buf(1, 0x77)));
    assert!(poll_once(w.as_mut()).is_pending());
    assert_eq!(latch.arrived(), 1);
    let rp = json!({"name": "s0", "remote_bdev": "n0", "sync": "none"});
    let mut reprotect = Box::pin(handle(&h, "bdev_replication_reprotect", Some(rp.clone())));
    assert!(poll_once(reprotect.as_mut()).is_pending());
    assert!(h.claimed().contains(&"n0".to_owned()));
    assert_eq!(
        h.call("bdev_replication_reprotect", rp)
            .unwrap_err()
            .message,
        "s0: reprotect: not valid with mode primary (already reprotected)",
        "a second reprotect is refused while the first drains"
    );
    let mut delete = Box::pin(handle(
        &h,
        "bdev_replication_delete",
        Some(json!({"name": "s0"})),
    ));
    for _ in 0..10 {
        assert!(
            poll_once(delete.as_mut()).is_pending(),
            "the delete waits for the reprotect"
        );
    }
    latch.open();
    assert_eq!(run(w), Ok(()));
    assert_eq!(run(reprotect), Ok(json!(true)));
    assert_eq!(run(delete), Ok(json!(true)));
    h.run_background();
    assert!(find(&h, "s0").is_none());
    let claimed = h.claimed();
    for leg in ["b0", "h0", "a0", "n0"] {
        assert!(
            !claimed.contains(&leg.to_owned()),
            "{leg} released: {claimed:?}"
        );
    }
}
