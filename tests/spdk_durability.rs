//! Durability and the end of a failover on real SPDK processes (issue 6, defects 1 and 2):
//! a guest flush on the primary export reaches the local disk and, over NVMe/TCP, the
//! secondary's base; after a failover the overlays are released and can be deleted while
//! the promoted SVM's disk keeps working.

mod spdk;

use serde_json::json;
use spdk::*;
use std::time::{Duration, Instant};

#[test]
fn guest_flush_reaches_the_local_disk_and_the_secondary_base() {
    let Some(env) = env("guest_flush_reaches_the_local_disk_and_the_secondary_base") else {
        return;
    };
    let p = pair(&env, None);
    p.sec.ok("bdev_replication_start", json!({}));
    p.pri.ok("bdev_replication_start", json!({}));
    // Malloc bdevs report a volatile write cache, so every bdev of ours must too: otherwise
    // initiators never send flushes (SPDK's NVMe bdev completes them locally).
    for (app, bdev) in [(&p.pri, "pvm0"), (&p.sec, "svm0"), (&p.sec, "svm0_ingress")] {
        let b = &app.ok("bdev_get_bdevs", json!({"name": bdev}))[0];
        assert_eq!(b["supported_io_types"]["flush"], json!(true), "{bdev}: {b}");
    }
    // SPDK's bdevperf as the guest: an NVMe/TCP initiator sending flushes to the primary.
    let out = bdevperf(&env, &p.primary, "flush", 1).unwrap_or_else(|e| panic!("{e}"));
    let (iops, failed, _) = bdevperf_total(&out);
    assert!(iops > 0.0 && failed == 0.0, "{out}");
    let pri = p.pri.status("pvm0");
    let sec = p.sec.status("svm0");
    let (local, remote) = (
        pri["counters"]["local_flushes"].as_u64().unwrap(),
        pri["counters"]["remote_flushes"].as_u64().unwrap(),
    );
    let base = sec["counters"]["base_flushes"].as_u64().unwrap();
    assert!(local > 0 && remote > 0, "primary legs flushed: {pri}");
    assert!(
        base > 0,
        "the flush crossed NVMe/TCP to the secondary's base: {sec}"
    );
    assert!(
        base >= remote,
        "every remote flush reached the base ({base} < {remote})"
    );
    assert_eq!(pri["error"], json!(null), "{pri}");
    // The top (SVM) flushes its view too.
    let out = bdevperf(&env, &p.top, "flush", 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bdevperf_total(&out).1, 0.0, "{out}");
    let after = p.sec.status("svm0")["counters"]["base_flushes"]
        .as_u64()
        .unwrap();
    assert!(after > base, "top flushes reach the base");
}

fn claimed(app: &App, name: &str) -> bool {
    app.ok("bdev_get_bdevs", json!({"name": name}))[0]["claimed"]
        .as_bool()
        .unwrap()
}

#[test]
fn overlays_are_released_after_failover_and_can_be_deleted() {
    let Some(env) = env("overlays_are_released_after_failover_and_can_be_deleted") else {
        return;
    };
    let p = pair(&env, None);
    p.sec.ok("bdev_replication_start", json!({}));
    p.pri.ok("bdev_replication_start", json!({}));
    let half = 1u64 << 20;
    dd_write(&env, &p.primary, 0, &fill(2 * half, 0x22)).unwrap();
    p.sec.ok("bdev_replication_checkpoint", json!({}));
    dd_write(&env, &p.top, 0, &fill(half, 0x33)).unwrap();
    assert!(claimed(&p.sec, "svm0_hidden") && claimed(&p.sec, "svm0_active"));
    let out = p
        .sec
        .replctl(&env, &["stop", "svm0", "--failover", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The release runs on every reactor and then the app thread: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while claimed(&p.sec, "svm0_hidden") || claimed(&p.sec, "svm0_active") {
        assert!(Instant::now() < deadline, "overlays still claimed at done");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(claimed(&p.sec, "svm0_base"), "the base stays the top's");
    for o in ["svm0_hidden", "svm0_active"] {
        p.sec.ok("bdev_malloc_delete", json!({"name": o}));
    }
    // The promoted SVM's disk is untouched and keeps taking I/O.
    let names: Vec<String> = p
        .sec
        .ok("bdev_get_bdevs", json!(null))
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"svm0".to_string()), "{names:?}");
    assert_runs(
        &dd_read(&env, &p.top, 0, 2 * half / BS).unwrap(),
        &[(half, 0x33), (half, 0x22)],
        "SVM view after the overlays were deleted",
    );
    dd_write(&env, &p.top, half / BS, &fill(half, 0x44)).unwrap();
    assert_runs(
        &dd_read(&env, &p.top, 0, 2 * half / BS).unwrap(),
        &[(half, 0x33), (half, 0x44)],
        "SVM writes after failover",
    );
    let st = p.sec.status("svm0");
    assert_eq!(
        (st["stage"].as_str(), &st["error"]),
        (Some("done"), &json!(null)),
        "{st}"
    );
    p.sec.ok("bdev_replication_delete", json!({"name": "svm0"}));
    assert!(!claimed(&p.sec, "svm0_base"));
}
