//! Mixed pairs: a native primary replicating to an SPDK secondary, and an SPDK primary to a
//! native secondary, through the same configs; the project's initiator checks the bytes on
//! every export (so it also runs against SPDK's NVMe-oF target). Skips with one line when
//! SPDK is not installed.

mod native;
mod spdk;

use native::{Export, assert_runs, fill};
use serde_json::json;

const BS: usize = native::BS;
const HALF: usize = 16 * BS; // two halves fit SPDK's default 128 KiB max_io_size

/// The flow both directions share: sync, start, replicate, checkpoint, failover.
fn flow(
    start_sec: &dyn Fn(&str, serde_json::Value),
    start_pri: &dyn Fn(&str, serde_json::Value),
    sec_status: &dyn Fn() -> serde_json::Value,
    ingress: &Export,
    top: &Export,
    primary: &Export,
) {
    let pr = primary.connect();
    let ing = ingress.connect();
    pr.blocking().write(1, 0, fill(2 * HALF, 0x11)).unwrap();
    ing.blocking().write(1, 0, fill(2 * HALF, 0x11)).unwrap();
    start_sec(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    start_pri(
        "bdev_replication_start",
        json!({"name": "pvm0", "mode": "primary"}),
    );
    let t = top.connect();
    pr.blocking().write(1, 16, fill(HALF, 0x22)).unwrap();
    assert_runs(
        &ing.blocking().read(1, 0, 32).unwrap(),
        &[(HALF, 0x11), (HALF, 0x22)],
        "base",
    );
    assert_runs(
        &t.blocking().read(1, 0, 32).unwrap(),
        &[(2 * HALF, 0x11)],
        "SVM view",
    );
    pr.blocking().flush(1).unwrap();
    start_sec("bdev_replication_checkpoint", json!({"name": "svm0"}));
    assert_runs(
        &t.blocking().read(1, 0, 32).unwrap(),
        &[(HALF, 0x11), (HALF, 0x22)],
        "checkpoint",
    );
    t.blocking().write(1, 0, fill(HALF, 0x33)).unwrap();
    start_sec(
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    native::wait_for(30, "merge done", || sec_status()["stage"] == "done");
    assert_runs(
        &ing.blocking().read(1, 0, 32).unwrap(),
        &[(HALF, 0x33), (HALF, 0x22)],
        "merged",
    );
}

#[test]
fn native_primary_spdk_secondary_and_spdk_primary_native_secondary() {
    let Some(env) = spdk::env("native_primary_spdk_secondary_and_spdk_primary_native_secondary")
    else {
        return;
    };
    for native_primary in [true, false] {
        let p = spdk::ports();
        let sec_cfg = spdk::config(&env, "secondary.json", &[(4420, p), (4421, p + 1)]);
        let pri_cfg = spdk::config(&env, "primary.json", &[(4420, p), (4430, p + 2)]);
        let ingress = Export {
            port: p,
            nqn: "nqn.2016-06.io.spdk:svm0-ingress".into(),
        };
        let top = Export {
            port: p + 1,
            nqn: "nqn.2016-06.io.spdk:svm0".into(),
        };
        let primary = Export {
            port: p + 2,
            nqn: "nqn.2016-06.io.spdk:pvm0".into(),
        };
        let dir = env.tmp.path();
        if native_primary {
            let sec = spdk::App::start(&env, "spdk-secondary", &sec_cfg, 0);
            let pri = native::Node::start(dir, "native-primary", &pri_cfg, "0x2");
            flow(
                &|m, v| drop(sec.ok(m, v)),
                &|m, v| drop(pri.ok(m, v)),
                &|| sec.status("svm0"),
                &ingress,
                &top,
                &primary,
            );
        } else {
            let sec = native::Node::start(dir, "native-secondary", &sec_cfg, "0x1");
            let pri = spdk::App::start(&env, "spdk-primary", &pri_cfg, 1);
            flow(
                &|m, v| drop(sec.ok(m, v)),
                &|m, v| drop(pri.ok(m, v)),
                &|| sec.status("svm0"),
                &ingress,
                &top,
                &primary,
            );
        }
    }
}
