//! The primary never stalls on its remote leg: a secondary that dies, or freezes, under
//! the primary's write load.

mod spdk;

use serde_json::json;
use spdk::*;
use std::time::{Duration, Instant};

#[test]
fn secondary_killed_under_write_load() {
    let Some(env) = env("secondary_killed_under_write_load") else {
        return;
    };
    let mut p = pair(&env, None);
    p.sec.ok("bdev_replication_start", json!({}));
    p.pri.ok("bdev_replication_start", json!({}));
    let mut load = bdevperf_spawn(&env, &p.primary, "randwrite", 6);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        p.pri.status("pvm0")["error"],
        json!(null),
        "healthy before the crash"
    );
    p.sec.kill();
    let status = load.wait().unwrap();
    let out = std::fs::read_to_string(env.tmp.path().join("bdevperf-randwrite.log")).unwrap();
    assert!(status.success(), "{out}");
    let (iops, failed, timed_out) = bdevperf_total(&out);
    assert!(
        iops > 0.0 && failed == 0.0 && timed_out == 0.0,
        "the primary's writes failed:\n{out}"
    );
    let errors = p
        .pri
        .ok("bdev_replication_get_error", json!({"name": "pvm0"}));
    assert_eq!(
        errors,
        json!([{"name": "pvm0", "stage": "running", "error": "I/O error occurred"}])
    );
    let st = p.pri.status("pvm0");
    assert_eq!(st["link_broken"], json!(true), "{st}");
    assert!(
        st["counters"]["remote_failures"].as_u64().unwrap() >= 1,
        "{st}"
    );
    // Replication continues locally: data written now is on the primary.
    dd_write(&env, &p.primary, 100, &fill(8 * BS, 0x5A)).unwrap();
    assert_runs(
        &dd_read(&env, &p.primary, 100, 8).unwrap(),
        &[(8 * BS, 0x5A)],
        "primary after the crash",
    );
    // stop clears the sticky error.
    p.pri.ok("bdev_replication_stop", json!({}));
    assert_eq!(p.pri.status("pvm0")["error"], json!(null));
}

#[test]
fn frozen_secondary_does_not_stall_the_primary() {
    let Some(env) = env("frozen_secondary_does_not_stall_the_primary") else {
        return;
    };
    let timeout_ms = 500;
    let p = pair(&env, Some(timeout_ms));
    p.sec.ok("bdev_replication_start", json!({}));
    p.pri.ok("bdev_replication_start", json!({}));
    dd_write(&env, &p.primary, 0, &fill(16 * BS, 0x21)).unwrap();
    assert_runs(
        &dd_read(&env, &p.ingress, 0, 16).unwrap(),
        &[(16 * BS, 0x21)],
        "replicated while healthy",
    );
    p.sec.signal("-STOP");
    let t = Instant::now();
    let r = dd_write(&env, &p.primary, 0, &fill(16 * BS, 0x22));
    let took = t.elapsed();
    let st_frozen = p.pri.status("pvm0");
    p.sec.signal("-CONT");
    r.unwrap();
    assert!(
        st_frozen["counters"]["remote_timeouts"].as_u64().unwrap() >= 1,
        "{st_frozen}"
    );
    // Not a performance bound: a stalled primary would hang here for the NVMe-oF
    // initiator's own timeouts (tens of seconds) or for ever.
    assert!(took < Duration::from_secs(30), "the write took {took:?}");
    let st = p.pri.status("pvm0");
    assert!(
        st["counters"]["remote_timeouts"].as_u64().unwrap() >= 1,
        "{st}"
    );
    assert_eq!(st["error"], json!("I/O error occurred"));
    assert_runs(
        &dd_read(&env, &p.primary, 0, 16).unwrap(),
        &[(16 * BS, 0x22)],
        "primary keeps the write",
    );
}

/// Timed-out remote requests outlive their guest requests, the channel and even the bdev:
/// delete the primary while the secondary is frozen, then let the secondary go on.
#[test]
fn timed_out_remote_requests_outlive_a_deleted_primary() {
    let Some(env) = env("timed_out_remote_requests_outlive_a_deleted_primary") else {
        return;
    };
    let p = pair(&env, Some(300));
    p.sec.ok("bdev_replication_start", json!({}));
    p.pri.ok("bdev_replication_start", json!({}));
    p.sec.signal("-STOP");
    let r = dd_write(&env, &p.primary, 0, &fill(64 * BS, 0x31));
    let st = p.pri.status("pvm0");
    let deleted = p
        .pri
        .rpc("bdev_replication_delete", json!({"name": "pvm0"}));
    p.sec.signal("-CONT");
    r.unwrap();
    assert!(
        st["counters"]["remote_timeouts"].as_u64().unwrap() >= 1,
        "{st}"
    );
    deleted.unwrap();
    // The late completions land after the bdev is gone: the app lives on, claims released.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        p.pri.ok("bdev_replication_get_status", json!(null)),
        json!([])
    );
    let bdevs = p.pri.ok("bdev_get_bdevs", json!({"name": "pvm0_local"}));
    assert_eq!(bdevs[0]["claimed"], json!(false), "{bdevs}");
    assert!(
        !p.pri.log_text().contains("panicked"),
        "{}",
        p.pri.log_text()
    );
}
