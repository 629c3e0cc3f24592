//! `bdev_replication_reprotect` on the SPDK host (issue 10 item 4): the primary dies, the
//! secondary fails over, and while SPDK's bdevperf keeps writing and verifying through the
//! promoted SVM's export, the promoted bdev becomes a primary towards a fresh secondary on
//! the old primary's core, syncs it, runs COLO again and fails over back: byte-exact at
//! every step, the guest load never sees an error. Skips with one line without SPDK.

mod spdk;

use serde_json::json;
use spdk::*;
use std::time::{Duration, Instant};

const DISK_BLOCKS: u64 = 16384; // config/*.json: 64 MiB of 4 KiB blocks

fn wait(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The whole disk behind an export, read with spdk_dd.
fn disk(env: &Env, exp: &Export) -> Vec<u8> {
    dd_read(env, exp, 0, DISK_BLOCKS).unwrap()
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn reprotect_after_failover_under_guest_load_then_fail_back() {
    let Some(env) = env("reprotect_after_failover_under_guest_load_then_fail_back") else {
        return;
    };
    let mut p = pair(&env, None);
    p.sec.ok("bdev_replication_start", json!({}));
    p.pri.ok("bdev_replication_start", json!({}));
    dd_write(&env, &p.primary, 0, &fill(256 * BS, 0x11)).unwrap();
    p.sec.ok("bdev_replication_checkpoint", json!({}));

    // Refused before `done`, naming the bdev and the stage.
    let e = p
        .sec
        .rpc(
            "bdev_replication_reprotect",
            json!({"name": "svm0", "remote_bdev": "nope"}),
        )
        .unwrap_err();
    assert!(e.1.contains("svm0") && e.1.contains("running"), "{e:?}");

    // The primary is lost: promote the SVM.
    p.pri.kill();
    p.sec.ok(
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    wait(60, "stage done", || p.sec.status("svm0")["stage"] == "done");

    // A fresh secondary where the primary was.
    let q = ports();
    let new_ingress = Export {
        port: q,
        nqn: "nqn.2016-06.io.spdk:svm0-ingress".into(),
    };
    let new_top = Export {
        port: q + 1,
        nqn: "nqn.2016-06.io.spdk:svm0".into(),
    };
    let c = App::start(
        &env,
        "secondary2",
        &config(&env, "secondary.json", &[(4420, q), (4421, q + 1)]),
        1,
    );
    p.sec.ok(
        "bdev_nvme_attach_controller",
        json!({"name": "new", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
               "trsvcid": q.to_string(), "subnqn": new_ingress.nqn}),
    );
    let e = p
        .sec
        .rpc(
            "bdev_replication_reprotect",
            json!({"name": "svm0", "remote_bdev": "nope"}),
        )
        .unwrap_err();
    assert!(e.1.contains("nope"), "{e:?}");
    assert_eq!(p.sec.status("svm0")["mode"], "secondary", "nothing changed");

    // The SVM's guest: bdevperf verify on the promoted bdev's export, through the switch.
    let mut load = bdevperf_spawn_on(&env, &p.top, "verify", 8, "0x2");
    std::thread::sleep(Duration::from_secs(2));
    p.sec.ok(
        "bdev_replication_reprotect",
        json!({"name": "svm0", "remote_bdev": "newn1", "sync": "full"}),
    );
    let st = p.sec.status("svm0");
    assert_eq!(st["mode"], "primary", "{st}");
    assert_eq!(st["reprotected"], true, "{st}");
    assert!(load.wait().unwrap().success(), "the guest load failed");
    let out = std::fs::read_to_string(env.tmp.path().join("bdevperf-verify.log")).unwrap();
    let (iops, failed, timed_out) = bdevperf_total(&out);
    assert!(iops > 0.0 && failed == 0.0 && timed_out == 0.0, "{out}");
    wait(60, "in_sync", || {
        p.sec.status("svm0")["sync"]["state"] == "in_sync"
    });

    // The new secondary's disk equals the promoted one, everywhere.
    let promoted = disk(&env, &p.top);
    let copy = disk(&env, &new_ingress);
    if let Some(i) = first_difference(&promoted, &copy) {
        panic!(
            "byte {i}: promoted {:#x}, new secondary {:#x}",
            promoted[i], copy[i]
        );
    }

    // Overlays released, ingress gone, primary form saved.
    for o in ["svm0_hidden", "svm0_active"] {
        assert_eq!(
            p.sec.ok("bdev_get_bdevs", json!({"name": o}))[0]["claimed"],
            false
        );
        p.sec.ok("bdev_malloc_delete", json!({"name": o}));
    }
    assert!(
        p.sec
            .rpc("bdev_get_bdevs", json!({"name": "svm0_ingress"}))
            .is_err()
    );
    // What `spdk-rpc save_config` gathers for the bdev subsystem.
    let saved = p.sec.ok("framework_get_config", json!({"name": "bdev"}));
    let create = json!({"method": "bdev_replication_create", "params": {
        "name": "svm0", "mode": "primary", "local_bdev": "svm0_base", "remote_bdev": "newn1"}});
    let entry = saved
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == "bdev_replication_create")
        .unwrap_or_else(|| panic!("{saved}"));
    for k in ["name", "mode", "local_bdev", "remote_bdev"] {
        assert_eq!(entry["params"][k], create["params"][k], "{entry}");
    }

    // COLO again, the other way, and a failover back to the first node's core.
    c.ok("bdev_replication_start", json!({"mode": "secondary"}));
    p.sec
        .ok("bdev_replication_start", json!({"mode": "primary"}));
    dd_write(&env, &p.top, 0, &fill(64 * BS, 0x44)).unwrap();
    c.ok("bdev_replication_checkpoint", json!({}));
    let want = disk(&env, &p.top);
    c.ok(
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    wait(60, "stage done on the new secondary", || {
        c.status("svm0")["stage"] == "done"
    });
    let back = disk(&env, &new_top);
    if let Some(i) = first_difference(&want, &back) {
        panic!(
            "byte {i}: primary {:#x}, failed-over {:#x}",
            want[i], back[i]
        );
    }
    assert_runs(
        &back[..64 * BS as usize],
        &[(64 * BS, 0x44)],
        "after the second failover",
    );
    assert!(!p.sec.log_text().contains("panicked"));
}
