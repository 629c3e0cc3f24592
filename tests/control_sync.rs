//! The protection lifecycle's RPC contract on the RAM host (docs/protection.md): params,
//! errors (codes and messages naming the bdev, stage or parameter), status, save_config.

use serde_json::{Value, json};
use spdk_replication::control::testing::RamHost;
use spdk_replication::engine::BlockDevice;
use spdk_replication::engine::testing::MemBuf;

const BS: u32 = 4096;
const BLOCKS: u64 = 1024; // 4 MiB

fn host() -> RamHost {
    let h = RamHost::default();
    for n in ["l0", "r0", "b0", "h0", "a0", "x0", "x1"] {
        h.add_malloc(n, BS, BLOCKS);
    }
    h
}

fn ok(h: &RamHost, method: &str, params: Value) -> Value {
    h.call(method, params)
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn err(h: &RamHost, method: &str, params: Value) -> (i32, String) {
    let e = h.call(method, params).unwrap_err();
    (e.code, e.message)
}

fn primary(h: &RamHost, extra: Value) {
    let mut p = json!({"name": "p0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "r0"});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    ok(h, "bdev_replication_create", p);
}

fn sync_status(h: &RamHost) -> Value {
    ok(h, "bdev_replication_get_status", json!({"name": "p0"}))[0]["sync"].clone()
}

#[test]
fn full_sync_through_the_control_plane_copies_the_disk_and_reports_progress() {
    let h = host();
    primary(&h, json!({"sync_granularity": 65536}));
    let local = h.disk("l0").unwrap();
    let remote = h.disk("r0").unwrap();
    local.inner().fill(0x3C);
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "p0"}))[0].clone();
    assert_eq!(st["sync_granularity"], 65536);
    ok(
        &h,
        "bdev_replication_start",
        json!({"name": "p0", "sync": "full"}),
    );
    let s = sync_status(&h);
    assert_eq!(s["state"], "syncing");
    assert_eq!(s["total_bytes"], BLOCKS * u64::from(BS));
    h.run_background();
    let s = sync_status(&h);
    assert_eq!(
        s,
        json!({"state": "in_sync", "total_bytes": BLOCKS * 4096, "done_bytes": BLOCKS * 4096,
               "dirty_bytes": 0, "mismatches": 0, "first_mismatches": [], "detached_requests": 0})
    );
    let all = 0..BLOCKS * u64::from(BS);
    assert_eq!(
        remote.inner().contents(all.clone()),
        local.inner().contents(all.clone())
    );
    // Verify: a planted mismatch is found, marked, and resync repairs it.
    h.run(remote.write(100, MemBuf::filled(4096, 0xAB)))
        .unwrap();
    ok(&h, "bdev_replication_verify", json!({"name": "p0"}));
    assert_eq!(sync_status(&h)["state"], "verifying");
    h.run_background();
    let s = sync_status(&h);
    assert_eq!(s["mismatches"], 1);
    assert_eq!(s["first_mismatches"], json!([393216]));
    assert_eq!(s["dirty_bytes"], 65536);
    assert_eq!(s["state"], "out_of_sync");
    ok(&h, "bdev_replication_resync", json!({"name": "p0"}));
    h.run_background();
    let s = sync_status(&h);
    assert_eq!(
        (s["state"].clone(), s["done_bytes"].clone()),
        (json!("in_sync"), json!(65536))
    );
    assert_eq!(
        remote.inner().contents(all.clone()),
        local.inner().contents(all)
    );
    // save_config round-trips the granularity.
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "p0"}))[0].clone();
    assert_eq!(st["sync_granularity"], 65536);
}

#[test]
fn protection_errors_name_the_bdev_stage_and_parameter() {
    let h = host();
    primary(&h, json!({}));
    ok(
        &h,
        "bdev_replication_create",
        json!({"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0"}),
    );
    // Default granularity filled in, as save_config replays it.
    let st = ok(&h, "bdev_replication_get_status", json!({"name": "p0"}))[0].clone();
    assert_eq!(st["sync_granularity"], 65536);
    assert_eq!(st["sync"]["state"], "in_sync");
    assert_eq!(
        err(&h, "bdev_replication_resync", json!({"name": "p0"})),
        (
            -1,
            "p0: Block replication is not running (stage none): resync needs stage running".into()
        )
    );
    assert_eq!(
        err(&h, "bdev_replication_verify", json!({"name": "p0"})),
        (
            -1,
            "p0: Block replication is not running (stage none): verify needs stage running".into()
        )
    );
    assert_eq!(
        err(&h, "bdev_replication_resync", json!({"name": "s0"})),
        (-22, "s0: resync: not valid with mode secondary".into())
    );
    assert_eq!(
        err(
            &h,
            "bdev_replication_start",
            json!({"name": "s0", "sync": "full"})
        ),
        (-22, "s0: sync: not valid with mode secondary".into())
    );
    assert_eq!(
        err(&h, "bdev_replication_resync", json!({"name": "zz"})),
        (-19, "name: no replication bdev named zz".into())
    );
    assert_eq!(err(&h, "bdev_replication_resync", json!({})).0, -32602);
    assert_eq!(
        err(
            &h,
            "bdev_replication_start",
            json!({"name": "p0", "sync": "half"})
        )
        .0,
        -32602
    );
    assert_eq!(
        err(
            &h,
            "bdev_replication_resync",
            json!({"name": "p0", "full": 1})
        )
        .0,
        -32602
    );
    // sync_granularity: primary only, bounded.
    for (g, msg) in [
        (
            json!(3000),
            "sync_granularity: 3000 must be a power of two, at most 16777216",
        ),
        (
            json!(1u64 << 25),
            "sync_granularity: 33554432 must be a power of two, at most 16777216",
        ),
        (
            json!(2048),
            "sync_granularity: 2048 must be a power of two from the block size (4096) to 16777216",
        ),
    ] {
        let e = err(
            &h,
            "bdev_replication_create",
            json!({"name": "p1", "mode": "primary", "local_bdev": "x0", "remote_bdev": "x1", "sync_granularity": g}),
        );
        assert_eq!(e, (-22, msg.into()));
    }
    assert_eq!(
        err(
            &h,
            "bdev_replication_create",
            json!({"name": "s1", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0", "sync_granularity": 4096}),
        ),
        (
            -22,
            "sync_granularity: not valid with mode secondary".into()
        )
    );
    // A sync already running.
    ok(
        &h,
        "bdev_replication_start",
        json!({"name": "p0", "sync": "full"}),
    );
    assert_eq!(
        err(&h, "bdev_replication_verify", json!({"name": "p0"})),
        (-16, "p0: a sync is already running".into())
    );
    h.run_background();
    ok(&h, "bdev_replication_stop", json!({"name": "p0"}));
    assert_eq!(
        err(
            &h,
            "bdev_replication_start",
            json!({"name": "p0", "sync": "full"})
        ),
        (
            -1,
            "p0: Block replication is not running (stage done): sync needs stage running".into()
        )
    );
    assert_eq!(
        ok(&h, "bdev_replication_start", json!({"name": "p0"})),
        json!(true)
    );
}
