//! Spec acceptance cases end to end: a secondary and a primary `replication_tgt` from the
//! README's configs, the primary forwarding to the secondary's ingress over NVMe-oF TCP,
//! every byte checked through SPDK's own initiators.

mod spdk;

use serde_json::json;
use spdk::*;

const MIB: u64 = 1 << 20;
/// The working region: two 2 MiB halves at the start of the 64 MiB disks.
const HALF: u64 = 2 * MIB;
const HALF_BLOCKS: u64 = HALF / BS;

#[test]
fn pair_replicates_checkpoints_and_fails_over() {
    let Some(env) = env("pair_replicates_checkpoints_and_fails_over") else {
        return;
    };
    let p = pair(&env, None);

    // Initial synchronisation, before start: the primary's disk and the secondary's base
    // both get 0x11 (the primary in `none` writes locally only; the ingress writes to base).
    dd_write(&env, &p.primary, 0, &fill(2 * HALF, 0x11)).unwrap();
    dd_write(&env, &p.ingress, 0, &fill(2 * HALF, 0x11)).unwrap();
    // Case 1: the top fails before start.
    assert!(
        dd_read(&env, &p.top, 0, 1).is_err(),
        "top read must fail in stage none"
    );

    // Start: the secondary through SPDK's CLI with our plugin, the primary through replctl.
    let out = p
        .sec
        .spdk_rpc(&["bdev_replication_start", "-b", "svm0", "-m", "secondary"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.pri.replctl(&env, &["start", "pvm0", "--mode", "primary"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Case 2.
    assert_runs(
        &dd_read(&env, &p.top, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(2 * HALF, 0x11)],
        "top after start",
    );

    // Case 3: the primary writes 0x22 over the second half; it reaches the secondary's
    // base through the ingress, while the SVM keeps seeing 0x11.
    dd_write(&env, &p.primary, HALF_BLOCKS, &fill(HALF, 0x22)).unwrap();
    assert_runs(
        &dd_read(&env, &p.primary, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(HALF, 0x11), (HALF, 0x22)],
        "primary",
    );
    assert_runs(
        &dd_read(&env, &p.ingress, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(HALF, 0x11), (HALF, 0x22)],
        "secondary base",
    );
    assert_runs(
        &dd_read(&env, &p.top, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(2 * HALF, 0x11)],
        "SVM view",
    );
    let st = p.sec.status("svm0");
    assert_eq!(st["counters"]["cow_bytes"], json!(HALF), "{st}");

    // Case 4: the SVM writes 0x33 over the first half.
    dd_write(&env, &p.top, 0, &fill(HALF, 0x33)).unwrap();
    assert_runs(
        &dd_read(&env, &p.top, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(HALF, 0x33), (HALF, 0x11)],
        "SVM writes",
    );

    // Case 5: checkpoint (all bdevs of each node; a no-op on the primary).
    p.pri.ok("bdev_replication_checkpoint", json!(null));
    p.sec.ok("bdev_replication_checkpoint", json!(null));
    assert_runs(
        &dd_read(&env, &p.top, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(HALF, 0x11), (HALF, 0x22)],
        "after checkpoint",
    );
    let st = p.sec.status("svm0");
    assert_eq!(
        st["allocated"],
        json!({"active_blocks": 0, "hidden_clusters": 0}),
        "{st}"
    );

    // After the checkpoint: primary writes 0x44 over the first half (to be rolled back),
    // the SVM writes 0x55 over the second half.
    dd_write(&env, &p.primary, 0, &fill(HALF, 0x44)).unwrap();
    dd_write(&env, &p.top, HALF_BLOCKS, &fill(HALF, 0x55)).unwrap();

    // Case 6/12: failover while the SVM keeps writing 0x66 into a third region.
    let svm = std::thread::scope(|s| {
        let writer = s.spawn(|| dd_write(&env, &p.top, 2 * HALF_BLOCKS, &fill(HALF, 0x66)));
        let out = p
            .sec
            .replctl(&env, &["stop", "svm0", "--failover", "--wait"]);
        assert!(
            out.status.success(),
            "replctl stop --failover --wait: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        writer.join().unwrap()
    });
    svm.unwrap();
    let st = p.sec.status("svm0");
    assert_eq!(st["stage"], "done", "{st}");
    assert_eq!(
        st["merge"]["done_bytes"], st["merge"]["total_bytes"],
        "{st}"
    );
    let want = [(HALF, 0x11), (HALF, 0x55), (HALF, 0x66)];
    assert_runs(
        &dd_read(&env, &p.top, 0, 3 * HALF_BLOCKS).unwrap(),
        &want,
        "SVM view after failover",
    );
    assert_runs(
        &dd_read(&env, &p.ingress, 0, 3 * HALF_BLOCKS).unwrap(),
        &want,
        "secondary base after failover",
    );
    // Ingress writes are refused now: the primary's late writes never reach the base.
    assert!(
        dd_write(&env, &p.ingress, 0, &fill(BS, 0x77)).is_err(),
        "ingress write after failover"
    );
    assert_runs(
        &dd_read(&env, &p.ingress, 0, 1).unwrap(),
        &[(BS, 0x11)],
        "base untouched",
    );

    // Case 7: continuous replication: the promoted node takes primary-mode commands.
    p.sec.ok(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "primary"}),
    );
    p.sec
        .ok("bdev_replication_checkpoint", json!({"name": "svm0"}));
    p.sec.ok("bdev_replication_stop", json!({"name": "svm0"}));
    assert_eq!(p.sec.status("svm0")["stage"], "done");
    // The primary is stopped too; its own disk is untouched by all this.
    p.pri.ok(
        "bdev_replication_stop",
        json!({"name": "pvm0", "failover": true}),
    );
    assert_runs(
        &dd_read(&env, &p.primary, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(HALF, 0x44), (HALF, 0x22)],
        "primary disk",
    );
}

#[test]
fn bdevperf_verify_on_every_export() {
    let Some(env) = env("bdevperf_verify_on_every_export") else {
        return;
    };
    let p = pair(&env, None);
    p.sec.ok("bdev_replication_start", json!({}));
    p.pri.ok("bdev_replication_start", json!({}));
    for (what, exp) in [
        ("primary", &p.primary),
        ("top", &p.top),
        ("ingress", &p.ingress),
    ] {
        let out = bdevperf(&env, exp, "verify", 2).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (iops, failed, timed_out) = bdevperf_total(&out);
        assert!(
            iops > 0.0 && failed == 0.0 && timed_out == 0.0,
            "{what}: {out}"
        );
    }
    assert_eq!(p.pri.status("pvm0")["error"], json!(null));
    assert_eq!(p.sec.status("svm0")["error"], json!(null));
}

/// Case 14 under real concurrency: a secondary on two reactors takes random ingress writes
/// over NVMe/TCP while the SVM reads its view; every read must be the checkpoint state.
#[test]
fn svm_view_isolated_under_ingress_load() {
    let Some(env) = env("svm_view_isolated_under_ingress_load") else {
        return;
    };
    let p = ports();
    let cfg = config(&env, "secondary.json", &[(4420, p), (4421, p + 1)]);
    let path = env.tmp.path().join("secondary-2core.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let sec = App::start_mask(&env, "secondary-2core", &path, "0x3");
    let ingress = Export {
        port: p,
        nqn: "nqn.2016-06.io.spdk:svm0-ingress".into(),
    };
    let top = Export {
        port: p + 1,
        nqn: "nqn.2016-06.io.spdk:svm0".into(),
    };
    const REGION: u64 = 4 * MIB;
    dd_write(&env, &ingress, 0, &fill(REGION, 0x5C)).unwrap();
    sec.ok("bdev_replication_start", json!({}));
    let mut load = bdevperf_spawn_on(&env, &ingress, "randwrite", 6, "0x2");
    let mut rounds = 0;
    while load.try_wait().unwrap().is_none() {
        let view = dd_read(&env, &top, 0, REGION / BS).unwrap();
        assert_runs(
            &view,
            &[(REGION, 0x5C)],
            &format!("SVM view, round {rounds}"),
        );
        rounds += 1;
    }
    assert!(load.wait().unwrap().success());
    let st = sec.status("svm0");
    assert!(st["counters"]["cow_copies"].as_u64().unwrap() > 0, "{st}");
    assert!(rounds > 0);
    // The checkpoint hands the SVM the primary's state: top == base again.
    sec.ok("bdev_replication_checkpoint", json!({}));
    let base = dd_read(&env, &ingress, 0, REGION / BS).unwrap();
    assert!(
        base.iter().any(|&b| b != 0x5C),
        "the load wrote into the region"
    );
    assert!(
        dd_read(&env, &top, 0, REGION / BS).unwrap() == base,
        "top differs from base after checkpoint"
    );
}
