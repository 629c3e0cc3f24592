//! Faults on native nodes (processes, loopback NVMe/TCP): SPDK's error and delay bdevs in
//! the legs, a killed or frozen secondary under primary writes, file-backed bases across a
//! restart, and the RPC contract's error cases through raw JSON-RPC, replctl and spdk-rpc.

mod native;

use native::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const CLUSTER: usize = 16 * 1024;
const BLOCKS: u64 = 4096;

fn empty() -> Value {
    json!({"subsystems": []})
}

fn listen(nqn: &str, port: u16) -> Value {
    json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
           "traddr": "127.0.0.1", "trsvcid": port.to_string()}})
}

fn export(n: &Node, nqn: &str, bdev: &str, port: u16) -> Export {
    let _ = n.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    n.ok(
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "allow_any_host": true}),
    );
    n.ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": bdev}}),
    );
    n.ok("nvmf_subsystem_add_listener", listen(nqn, port));
    Export {
        port,
        nqn: nqn.into(),
    }
}

fn malloc(n: &Node, name: &str) {
    n.ok(
        "bdev_malloc_create",
        json!({"name": name, "num_blocks": BLOCKS, "block_size": BS}),
    );
}

/// A secondary over `base`, `hidden`, `active` (already created), exporting ingress and top.
fn secondary(n: &Node, base: &str, hidden: &str, active: &str, port: u16) -> (Export, Export) {
    n.ok(
        "bdev_replication_create",
        json!({"name": "svm0", "mode": "secondary",
        "base_bdev": base, "hidden_bdev": hidden, "active_bdev": active}),
    );
    let ing = export(n, "nqn.2016-06.io.spdk:svm0-ingress", "svm0_ingress", port);
    let top = export(n, "nqn.2016-06.io.spdk:svm0", "svm0", port + 1);
    (ing, top)
}

fn wait_stage(n: &Node, name: &str, stage: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = n.status(name);
        if st["stage"] == stage {
            return st;
        }
        assert!(Instant::now() < deadline, "stage {stage} not reached: {st}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn failing_cow_copy_fails_the_ingress_write_and_the_retry_copies_again() {
    let tmp = tempfile::tempdir().unwrap();
    let n = Node::start(tmp.path(), "sec", &empty(), "0x1");
    for b in ["base", "hidden", "active"] {
        malloc(&n, b);
    }
    assert_eq!(
        n.ok("bdev_error_create", json!({"base_name": "hidden"})),
        json!(true)
    );
    let (ing, top) = secondary(&n, "base", "EE_hidden", "active", ports());
    let i = ing.connect();
    i.blocking().write(1, 0, fill(4 * CLUSTER, 0x11)).unwrap();
    n.ok(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    n.ok(
        "bdev_error_inject_error",
        json!({"name": "EE_hidden", "io_type": "write",
        "error_type": "failure", "num": 1}),
    );
    assert!(
        i.blocking().write(1, 0, fill(BS, 0x22)).is_err(),
        "COW failure fails the write"
    );
    let t = top.connect();
    assert_runs(
        &t.blocking().read(1, 0, 4).unwrap(),
        &[(4 * BS, 0x11)],
        "SVM view kept",
    );
    // The cluster stayed armed: the retry copies again, then writes.
    i.blocking().write(1, 0, fill(BS, 0x22)).unwrap();
    assert_runs(
        &t.blocking().read(1, 0, 4).unwrap(),
        &[(4 * BS, 0x11)],
        "SVM view after retry",
    );
    assert_runs(
        &i.blocking().read(1, 0, 2).unwrap(),
        &[(BS, 0x22), (BS, 0x11)],
        "base",
    );
    assert_eq!(
        n.ok("bdev_replication_get_error", json!({"name": "svm0"}))[0]["error"],
        json!(null)
    );
}

#[test]
fn failing_merge_goes_to_failover_failed_then_a_retry_merges_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let n = Node::start(tmp.path(), "sec", &empty(), "0x1");
    for b in ["base", "hidden", "active"] {
        malloc(&n, b);
    }
    n.ok("bdev_error_create", json!({"base_name": "base"}));
    let (_ing, top) = secondary(&n, "EE_base", "hidden", "active", ports());
    n.ok(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    let t = top.connect();
    t.blocking().write(1, 8, fill(2 * CLUSTER, 0x33)).unwrap();
    n.ok(
        "bdev_error_inject_error",
        json!({"name": "EE_base", "io_type": "write",
        "error_type": "failure", "num": 1}),
    );
    n.ok(
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    wait_stage(&n, "svm0", "failover_failed");
    let err = n.ok("bdev_replication_get_error", json!({"name": "svm0"}));
    assert_eq!(err[0]["error"], "I/O error occurred", "{err}");
    // Deleting now would drop unmerged SVM data: refused without force.
    let e = n
        .rpc("bdev_replication_delete", json!({"name": "svm0"}))
        .unwrap_err();
    assert_eq!(e.0, -1, "{e:?}");
    assert!(e.1.contains("svm0"), "{e:?}");
    // The SVM keeps reading and writing its disk meanwhile.
    assert_runs(
        &t.blocking().read(1, 8, 8).unwrap(),
        &[(8 * BS, 0x33)],
        "SVM view",
    );
    n.ok(
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    wait_stage(&n, "svm0", "done");
    assert_runs(
        &t.blocking().read(1, 8, 8).unwrap(),
        &[(8 * BS, 0x33)],
        "after retry",
    );
    // The merged data is on the base itself.
    n.ok("bdev_replication_delete", json!({"name": "svm0"}));
    let base = export(&n, "nqn.2016-06.io.spdk:base", "EE_base", ports());
    assert_runs(
        &base.connect().blocking().read(1, 8, 8).unwrap(),
        &[(8 * BS, 0x33)],
        "base",
    );
}

#[test]
fn delete_during_a_slow_merge_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let n = Node::start(tmp.path(), "sec", &empty(), "0x1");
    for b in ["base", "hidden", "active"] {
        malloc(&n, b);
    }
    n.ok(
        "bdev_delay_create",
        json!({"base_bdev_name": "base", "name": "slow",
        "avg_read_latency": 0, "p99_read_latency": 0,
        "avg_write_latency": 200000, "p99_write_latency": 200000}),
    );
    let (_ing, top) = secondary(&n, "slow", "hidden", "active", ports());
    n.ok(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    let t = top.connect();
    // 16 clusters apart from each other: 16 merge writes of 200 ms each (in flight
    // together: the merge takes about 200 ms).
    for c in 0..16u64 {
        t.blocking()
            .write(1, c * 8, fill(CLUSTER, 0x40 + c as u8))
            .unwrap();
    }
    n.ok(
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    let t0 = Instant::now();
    n.ok("bdev_replication_delete", json!({"name": "svm0"}));
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "delete did not wait for the merge"
    );
    assert!(n.rpc("bdev_get_bdevs", json!({"name": "svm0"})).is_err());
    n.ok(
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "slow",
        "latency_type": "avg_write", "latency_us": 0}),
    );
    let base = export(&n, "nqn.2016-06.io.spdk:base", "slow", ports());
    let b = base.connect();
    for c in 0..16u64 {
        let got = b.blocking().read(1, c * 8, 4).unwrap();
        assert_runs(&got, &[(CLUSTER, 0x40 + c as u8)], "merged cluster");
    }
}

/// Writes through the primary export until `n` succeeded, each within `limit`.
fn primary_writes(e: &Export, n: u32, limit: Duration) {
    let c = e.connect();
    for i in 0..n {
        let t = Instant::now();
        c.blocking()
            .write(1, u64::from(i % 256), fill(BS, i as u8))
            .unwrap_or_else(|err| panic!("primary write {i}: {err}"));
        assert!(
            t.elapsed() < limit,
            "primary write {i} took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn primary_keeps_writing_when_the_secondary_is_killed_or_frozen() {
    let tmp = tempfile::tempdir().unwrap();
    // Frozen: remote writes time out after 300 ms; the guest's writes complete from local.
    let mut p = pair(tmp.path(), Some(300));
    p.start();
    primary_writes(&p.primary, 20, Duration::from_secs(2));
    p.sec.signal("-STOP");
    primary_writes(&p.primary, 20, Duration::from_secs(3));
    let err = p
        .pri
        .ok("bdev_replication_get_error", json!({"name": "pvm0"}));
    assert_eq!(err[0]["error"], "I/O error occurred", "{err}");
    assert_eq!(p.pri.status("pvm0")["link_broken"], true);
    p.sec.signal("-CONT");
    // Killed: the connection drops; writes keep completing.
    p.sec.kill();
    primary_writes(&p.primary, 20, Duration::from_secs(3));
    assert_eq!(p.pri.status("pvm0")["link_broken"], true);
}

#[test]
fn save_config_restart_keeps_bdevs_and_file_data() {
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<_> = ["base", "hidden", "active"]
        .iter()
        .map(|f| {
            let p = tmp.path().join(format!("{f}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(BLOCKS * BS as u64)
                .unwrap();
            p
        })
        .collect();
    let port = ports();
    let mut n = Node::start(tmp.path(), "sec", &empty(), "0x1");
    for (f, name) in files.iter().zip(["base", "hidden", "active"]) {
        let r = n.ok(
            "bdev_uring_create",
            json!({"name": name, "filename": f, "block_size": BS}),
        );
        assert_eq!(r, json!(name));
    }
    let (ing, top) = secondary(&n, "base", "hidden", "active", port);
    ing.connect()
        .blocking()
        .write(1, 0, fill(8 * BS, 0x5A))
        .unwrap();
    n.ok(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    top.connect()
        .blocking()
        .write(1, 16, fill(4 * BS, 0xA5))
        .unwrap();
    top.connect().blocking().flush(1).unwrap();
    let saved = n.ok("save_config", Value::Null);
    let before = n.ok("bdev_get_bdevs", Value::Null);
    assert!(n.stop(), "clean exit on SIGINT:\n{}", n.log_text());
    assert!(!n.sock.exists(), "socket removed at exit");

    let n = Node::start(tmp.path(), "sec2", &saved, "0x1");
    let after = n.ok("bdev_get_bdevs", Value::Null);
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&before), names(&after));
    assert_eq!(
        n.ok("save_config", Value::Null),
        saved,
        "save_config round-trips"
    );
    // The base kept its data across the restart (the overlays too, but a restarted
    // secondary starts in `none`: read the base through the ingress).
    let ing = Export {
        port,
        nqn: "nqn.2016-06.io.spdk:svm0-ingress".into(),
    };
    assert_runs(
        &ing.connect().blocking().read(1, 0, 8).unwrap(),
        &[(8 * BS, 0x5A)],
        "base",
    );
}

#[test]
fn rpc_errors_name_the_parameter_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let n = Node::start(tmp.path(), "node", &empty(), "0x1");
    malloc(&n, "b0");
    malloc(&n, "h0");
    let e = n
        .rpc(
            "bdev_replication_create",
            json!({"name": "r", "mode": "secondary",
            "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "nope"}),
        )
        .unwrap_err();
    assert_eq!(e.0, -19, "{e:?}");
    assert!(e.1.contains("active_bdev") && e.1.contains("nope"), "{e:?}");
    for b in ["b0", "h0"] {
        assert_eq!(
            n.ok("bdev_get_bdevs", json!({"name": b}))[0]["claimed"],
            false,
            "{b}"
        );
    }
    let e = n
        .rpc(
            "bdev_replication_create",
            json!({"name": "r", "mode": "sideways"}),
        )
        .unwrap_err();
    assert_eq!(e.0, -32602, "{e:?}");
    let e = n
        .rpc("bdev_replication_start", json!({"name": "missing"}))
        .unwrap_err();
    assert_eq!(e.0, -19, "{e:?}");
    let e = n.rpc("no_such_method", Value::Null).unwrap_err();
    assert_eq!(e.0, -32601, "{e:?}");
    let e = n
        .rpc(
            "bdev_malloc_create",
            json!({"name": "b0", "num_blocks": 8, "block_size": 4096}),
        )
        .unwrap_err();
    assert_eq!(e.0, -17, "{e:?}");
    // A claimed bdev cannot be taken twice, nor deleted.
    n.ok(
        "bdev_delay_create",
        json!({"base_bdev_name": "b0", "name": "d0", "avg_read_latency": 0,
        "p99_read_latency": 0, "avg_write_latency": 0, "p99_write_latency": 0}),
    );
    let e = n
        .rpc("bdev_error_create", json!({"base_name": "b0"}))
        .unwrap_err();
    assert_eq!(e.0, -16, "{e:?}");
    let e = n
        .rpc("bdev_malloc_delete", json!({"name": "b0"}))
        .unwrap_err();
    assert_eq!(e.0, -16, "{e:?}");
    // replctl reports the server's error and exits non-zero.
    let out = n.replctl(&["start", "missing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    if has_spdk_rpc() {
        let out = n.spdk_rpc(&["spdk_get_version"]).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("SPDK"));
        let out = n.spdk_rpc(&["bdev_get_bdevs", "-b", "h0"]).unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"h0\""));
    } else {
        eprintln!(
            "skipped spdk-rpc part of rpc_errors_name_the_parameter_and_leave_nothing_behind: spdk-rpc not installed"
        );
    }
}

#[test]
fn a_bad_config_file_stops_start_up_naming_the_call() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |cfg: &str, extra: &[&str]| {
        let path = tmp.path().join("bad.json");
        std::fs::write(&path, cfg).unwrap();
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_replication_tgt"));
        c.args(["--host", "native", "-r"])
            .arg(tmp.path().join("bad.sock"));
        c.arg("--json").arg(&path).args(extra);
        c.output().unwrap()
    };
    let cfg = r#"{"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "m", "num_blocks": 8, "block_size": 4096}},
        {"method": "bdev_replication_create", "params": {"name": "r", "mode": "primary",
         "local_bdev": "m", "remote_bdev": "missing"}}]}]}"#;
    let out = run(cfg, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bdev_replication_create")
            && err.contains("remote_bdev")
            && err.contains("missing"),
        "{err}"
    );
    let out = run("{\"subsystems\": [", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid JSON config"));
    let out = run("{}", &["-m", "0x0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-m"));
}
