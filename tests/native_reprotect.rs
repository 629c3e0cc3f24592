//! `bdev_replication_reprotect` on native processes over loopback NVMe/TCP (issue 10 item
//! 4): node A (primary) and B (secondary) replicate; A is lost and B fails over while a
//! guest-like initiator keeps doing I/O on B's exported top; a fresh secondary on A's node
//! takes B's reprotect (full sync under the guest's writes), COLO runs the other way, and a
//! failover on A leaves A's base byte for byte what B's guest wrote. The guest never sees
//! an error. Plus the RPC errors, the released overlays and ingress, and save_config.

mod native;

use native::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const BLOCKS: u32 = 16384; // the configs' 64 MiB
const DISK: usize = BLOCKS as usize * BS;

/// A distinct 4 KiB block for (lba, generation).
fn block(lba: u64, generation: u64) -> Vec<u8> {
    let mut v = vec![0u8; BS];
    for (i, c) in v.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(&lba.to_le_bytes());
        c[8..16].copy_from_slice(&(generation * 1_000_003 + i as u64 + 1).to_le_bytes());
    }
    v
}

struct GuestResult {
    writes: u64,
    reads: u64,
    errors: Vec<String>,
    model: HashMap<u64, u64>,
}

/// Guests (one connection each, running side by side) per disk.
const LANES: u64 = 2;

/// A guest on `disk`: random 4 KiB writes to the blocks of its `lane` (lba % LANES), each
/// followed now and then by a read-back of an earlier one, until `stop`. Never panics:
/// errors are collected.
fn guest(
    disk: Export,
    lane: u64,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) -> std::thread::JoinHandle<GuestResult> {
    std::thread::spawn(move || {
        let c = disk.connect();
        let mut r = GuestResult {
            writes: 0,
            reads: 0,
            errors: Vec::new(),
            model: HashMap::new(),
        };
        let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ (lane << 32);
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut written = Vec::new();
        while !stop.load(Ordering::Relaxed) && r.errors.len() < 5 {
            let lba = next() % (u64::from(BLOCKS) / LANES) * LANES + lane;
            let generation = r.writes + 1;
            match c.blocking().write(1, lba, block(lba, generation)) {
                Ok(()) => {
                    r.model.insert(lba, generation);
                    written.push(lba);
                    r.writes += 1;
                }
                Err(e) => r.errors.push(format!("write lba {lba}: {e}")),
            }
            if r.writes.is_multiple_of(4) && !written.is_empty() {
                let lba = written[(next() % written.len() as u64) as usize];
                match c.blocking().read(1, lba, 1) {
                    Ok(d) if d == block(lba, r.model[&lba]) => r.reads += 1,
                    Ok(_) => r.errors.push(format!("read lba {lba}: wrong data")),
                    Err(e) => r.errors.push(format!("read lba {lba}: {e}")),
                }
            }
            ops.fetch_add(1, Ordering::Relaxed);
        }
        r
    })
}

/// Waits until the guest has done `n` more operations (it is really running).
fn guest_progress(ops: &AtomicU64, n: u64, what: &str) {
    let start = ops.load(Ordering::Relaxed);
    wait_for(60, what, || ops.load(Ordering::Relaxed) >= start + n);
}

fn export(nqn: &str, bdev: &str, port: u16) -> Vec<Value> {
    vec![
        json!({"method": "nvmf_create_subsystem", "params": {"nqn": nqn, "allow_any_host": true}}),
        json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn,
               "namespace": {"bdev_name": bdev}}}),
        json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn,
               "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                                  "trsvcid": port.to_string()}}}),
    ]
}

fn malloc(name: &str) -> Value {
    json!({"method": "bdev_malloc_create",
           "params": {"name": name, "num_blocks": BLOCKS, "block_size": BS}})
}

/// A fresh secondary `svm1` on A's node: ingress exported on `port`, top on `port + 1`.
fn fresh_secondary(dir: &std::path::Path, port: u16) -> Node {
    let mut nvmf = vec![json!({"method": "nvmf_create_transport", "params": {"trtype": "TCP"}})];
    nvmf.extend(export(
        "nqn.2016-06.io.spdk:svm1-ingress",
        "svm1_ingress",
        port,
    ));
    nvmf.extend(export("nqn.2016-06.io.spdk:svm1", "svm1", port + 1));
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            malloc("svm1_base"), malloc("svm1_hidden"), malloc("svm1_active"),
            {"method": "bdev_replication_create", "params": {"name": "svm1",
             "mode": "secondary", "base_bdev": "svm1_base", "hidden_bdev": "svm1_hidden",
             "active_bdev": "svm1_active"}},
        ]},
        {"subsystem": "nvmf", "config": nvmf},
    ]});
    Node::start(dir, "a2", &cfg, "0x2")
}

fn err(n: &Node, method: &str, params: Value) -> (i64, String) {
    match n.rpc(method, params.clone()) {
        Ok(v) => panic!("{method} {params} must fail, got {v}"),
        Err(e) => e,
    }
}

/// What B's guest must see everywhere: its own blocks, 0x11 elsewhere.
fn expected(model: &HashMap<u64, u64>) -> Vec<u8> {
    let mut v = vec![0x11u8; DISK];
    for (&lba, &generation) in model {
        let at = lba as usize * BS;
        v[at..at + BS].copy_from_slice(&block(lba, generation));
    }
    v
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {i} (block {}) is {:#x}, want {:#x}",
            i / BS,
            got[i],
            want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

#[test]
fn failover_reprotect_and_fail_back_keep_the_guest_running_and_the_disks_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = pair(tmp.path(), None);
    p.start();
    // A's guest fills the disk with 0x11 (replicated to B's base); B checkpoints.
    let a = p.primary.connect();
    for lba in (0..BLOCKS).step_by(256) {
        a.blocking()
            .write(1, u64::from(lba), fill(256 * BS, 0x11))
            .unwrap();
    }
    p.sec
        .ok("bdev_replication_checkpoint", json!({"name": "svm0"}));
    // Written after the last checkpoint: rolled back by the failover.
    a.blocking().write(1, 0, fill(256 * BS, 0x22)).unwrap();

    // Errors: reprotect in running, on a primary.
    assert_eq!(
        err(
            &p.sec,
            "bdev_replication_reprotect",
            json!({"name": "svm0", "remote_bdev": "x"})
        ),
        (
            -1,
            "svm0: Block replication is not done (stage running): reprotect needs a promoted \
             secondary in stage done"
                .into()
        )
    );
    assert_eq!(
        err(
            &p.pri,
            "bdev_replication_reprotect",
            json!({"name": "pvm0", "remote_bdev": "x"})
        ),
        (-22, "pvm0: reprotect: not valid with mode primary".into())
    );

    // B's guest starts; A is lost; B fails over under the guest's I/O.
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let guests: Vec<_> = (0..LANES)
        .map(|lane| guest(p.top.clone(), lane, stop.clone(), ops.clone()))
        .collect();
    guest_progress(&ops, 200, "guest I/O before failover");
    drop(a);
    p.pri.kill();
    let out = p.sec.replctl(&["stop", "svm0", "--failover", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.sec.status("svm0")["stage"], "done");
    guest_progress(&ops, 200, "guest I/O after failover");

    // A fresh secondary on A's node; B attaches its ingress.
    let port = ports();
    let mut a2 = fresh_secondary(tmp.path(), port);
    let names = p.sec.ok(
        "bdev_nvme_attach_controller",
        json!({"name": "svm1", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
               "trsvcid": port.to_string(), "subnqn": "nqn.2016-06.io.spdk:svm1-ingress"}),
    );
    assert_eq!(names, json!(["svm1n1"]));
    assert_eq!(
        err(
            &p.sec,
            "bdev_replication_reprotect",
            json!({"name": "svm0", "remote_bdev": "nope"})
        ),
        (
            -19,
            "remote_bdev: cannot open bdev nope (no such device)".into()
        )
    );
    assert_eq!(
        p.sec.status("svm0")["mode"],
        "secondary",
        "unchanged by the error"
    );

    // Reprotect B towards it, full sync (the default), under the guest's writes.
    let out = p.sec.replctl(&["reprotect", "svm0", "svm1n1", "--wait"]);
    assert!(
        out.status.success(),
        "replctl reprotect --wait: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("in_sync"));
    let st = p.sec.status("svm0");
    assert_eq!(st["mode"], "primary", "{st}");
    assert_eq!(st["stage"], "running");
    assert_eq!(st["reprotected"], true);
    assert_eq!(st["local_bdev"], "svm0_base");
    assert_eq!(st["remote_bdev"], "svm1n1");
    assert_eq!(st["error"], Value::Null);
    assert!(
        st["counters"]["sync_bytes"].as_u64().unwrap() >= DISK as u64,
        "{st}"
    );
    guest_progress(&ops, 200, "guest I/O after reprotect");

    // The ingress is gone; the overlays are free and can be deleted under the guest.
    let (code, _) = err(&p.sec, "bdev_get_bdevs", json!({"name": "svm0_ingress"}));
    assert_eq!(code, -19);
    let bdevs = p.sec.ok("bdev_get_bdevs", json!({"name": "svm0"}));
    assert_eq!(
        bdevs[0]["driver_specific"]["replication"]["role"],
        "primary"
    );
    p.sec
        .ok("bdev_malloc_delete", json!({"name": "svm0_hidden"}));
    p.sec
        .ok("bdev_malloc_delete", json!({"name": "svm0_active"}));
    guest_progress(&ops, 100, "guest I/O after deleting the overlays");

    // save_config has the primary form.
    let cfg = p.sec.ok("save_config", Value::Null);
    let bdev_cfg = cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap()["config"]
        .clone();
    let repl: Vec<&Value> = bdev_cfg
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["method"] == "bdev_replication_create")
        .collect();
    assert_eq!(
        repl,
        vec![
            &json!({"method": "bdev_replication_create", "params": {"name": "svm0",
              "mode": "primary", "local_bdev": "svm0_base", "remote_bdev": "svm1n1",
              "remote_timeout_ms": 1000, "sync_granularity": 65536}})
        ]
    );
    let text = bdev_cfg.to_string();
    assert!(
        !text.contains("svm0_hidden") && !text.contains("svm0_ingress"),
        "{text}"
    );

    // COLO the other way: A secondary, B primary (its start accepted and ignored).
    a2.ok(
        "bdev_replication_start",
        json!({"name": "svm1", "mode": "secondary"}),
    );
    p.sec.ok(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "primary"}),
    );
    for _ in 0..3 {
        guest_progress(&ops, 100, "guest I/O between checkpoints");
        a2.ok("bdev_replication_checkpoint", json!({"name": "svm1"}));
    }
    stop.store(true, Ordering::Relaxed);
    let mut model = HashMap::new();
    for (lane, g) in guests.into_iter().enumerate() {
        let r = g.join().unwrap();
        assert!(
            r.errors.is_empty(),
            "guest {lane} saw errors: {:?}",
            r.errors
        );
        assert!(
            r.writes > 250 && r.reads > 50,
            "guest {lane}: {} writes, {} reads",
            r.writes,
            r.reads
        );
        model.extend(r.model);
    }
    // Every guest write is acknowledged, so on A's base: the last checkpoint keeps them.
    a2.ok("bdev_replication_checkpoint", json!({"name": "svm1"}));
    assert_eq!(
        p.sec
            .ok("bdev_replication_get_error", json!({"name": "svm0"})),
        json!([{"name": "svm0", "stage": "running", "error": null}])
    );
    assert_eq!(p.sec.status("svm0")["sync"]["state"], "in_sync");

    let want = expected(&model);
    let b_view = read_all(&p.top.connect(), 0, BLOCKS);
    assert_same(&b_view, &want, "B's disk");

    // Fail over to A: its base becomes what B's guest wrote.
    a2.ok(
        "bdev_replication_stop",
        json!({"name": "svm1", "failover": true}),
    );
    wait_for(60, "A's failover", || a2.status("svm1")["stage"] == "done");
    let a_top = Export {
        port: port + 1,
        nqn: "nqn.2016-06.io.spdk:svm1".into(),
    };
    let a_base = read_all(&a_top.connect(), 0, BLOCKS);
    assert_eq!(md5_hex(&a_base), md5_hex(&b_view), "A's base vs B's disk");
    assert_same(&a_base, &want, "A's base");

    // B restarted from its saved config comes back as the primary.
    let saved = tmp.path().join("b-saved.json");
    std::fs::write(&saved, p.sec.ok("save_config", Value::Null).to_string()).unwrap();
    assert!(p.sec.stop(), "B exits cleanly");
    let b2 = Node::start_file(tmp.path(), "b2", &saved, "0x1");
    let st = b2.status("svm0");
    assert_eq!(
        (
            &st["mode"],
            &st["stage"],
            &st["local_bdev"],
            &st["remote_bdev"]
        ),
        (
            &json!("primary"),
            &json!("none"),
            &json!("svm0_base"),
            &json!("svm1n1")
        ),
        "{st}"
    );
    assert!(a2.stop(), "a2 exits cleanly");
    drop(b2);
}

/// A fresh secondary `svm1` over an existing base file (the former primary's disk).
fn secondary_on_file(dir: &std::path::Path, base: &std::path::Path, port: u16) -> Node {
    let mut nvmf = vec![json!({"method": "nvmf_create_transport", "params": {"trtype": "TCP"}})];
    nvmf.extend(export(
        "nqn.2016-06.io.spdk:svm1-ingress",
        "svm1_ingress",
        port,
    ));
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_uring_create", "params": {"name": "svm1_base",
             "filename": base, "block_size": BS}},
            malloc("svm1_hidden"), malloc("svm1_active"),
            {"method": "bdev_replication_create", "params": {"name": "svm1",
             "mode": "secondary", "base_bdev": "svm1_base", "hidden_bdev": "svm1_hidden",
             "active_bdev": "svm1_active"}},
        ]},
        {"subsystem": "nvmf", "config": nvmf},
    ]});
    Node::start(dir, "a2", &cfg, "0x2")
}

#[test]
fn incremental_reprotect_onto_the_former_primarys_disk_copies_only_the_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let port = ports();
    // A's local disk is a file: it outlives A's process.
    let a_disk = tmp.path().join("pvm0_local.img");
    std::fs::File::create(&a_disk)
        .unwrap()
        .set_len(DISK as u64)
        .unwrap();
    let sec_cfg = config("secondary.json", &[(4420, port), (4421, port + 1)]);
    let mut pri_cfg = config("primary.json", &[(4420, port), (4430, port + 2)]);
    for e in pri_cfg["subsystems"][0]["config"].as_array_mut().unwrap() {
        if e["method"] == "bdev_malloc_create" {
            *e = json!({"method": "bdev_uring_create", "params": {"name": "pvm0_local",
                        "filename": a_disk, "block_size": BS}});
        }
    }
    let b = Node::start(tmp.path(), "secondary", &sec_cfg, "0x1");
    let mut a = Node::start(tmp.path(), "primary", &pri_cfg, "0x2");
    b.ok(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    a.ok(
        "bdev_replication_start",
        json!({"name": "pvm0", "mode": "primary"}),
    );
    let pvm = Export {
        port: port + 2,
        nqn: "nqn.2016-06.io.spdk:pvm0".into(),
    };
    let top = Export {
        port: port + 1,
        nqn: "nqn.2016-06.io.spdk:svm0".into(),
    };
    let c = pvm.connect();
    for lba in (0..BLOCKS).step_by(256) {
        c.blocking()
            .write(1, u64::from(lba), fill(256 * BS, 0x11))
            .unwrap();
    }
    b.ok("bdev_replication_checkpoint", json!({"name": "svm0"}));
    // After the checkpoint: A writes 1 MiB at block 4096 (reaches B's ingress: COW'd into
    // hidden), B's SVM writes 64 KiB at block 0. Then B fails over.
    c.blocking().write(1, 4096, fill(256 * BS, 0x22)).unwrap();
    let t = top.connect();
    t.blocking().write(1, 0, fill(16 * BS, 0x33)).unwrap();
    b.ok(
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    wait_for(60, "B's failover", || b.status("svm0")["stage"] == "done");
    // A's guest writes on until it is fenced: 128 KiB at block 8000, refused by B's
    // ingress after the failover, so they stay on A's disk only and in A's dirty map,
    // which the operator takes to B (the former primary's part of the map exchange).
    c.blocking().write(1, 8000, fill(32 * BS, 0x55)).unwrap();
    let st = a.status("pvm0");
    assert_eq!(st["sync"]["state"], "out_of_sync", "{st}");
    let out = a.replctl(&["dirty-map", "pvm0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(map["extents"], json!([[8000 * BS, 32 * BS]]), "{map}");
    if has_spdk_rpc() {
        // SPDK's own client (with the project's plugin) sees the same map.
        let out = a
            .spdk_rpc(&["bdev_replication_get_dirty_map", "-b", "pvm0"])
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let via_spdk: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(via_spdk, map);
    }
    let map_file = tmp.path().join("a.map");
    std::fs::write(&map_file, &out.stdout).unwrap();
    drop(c);
    a.kill();
    // Since the failover: 64 KiB at block 10000.
    t.blocking().write(1, 10000, fill(16 * BS, 0x44)).unwrap();

    // A's node comes back as a secondary over its old disk; B reprotects incrementally.
    let a2 = secondary_on_file(tmp.path(), &a_disk, port + 5);
    b.ok(
        "bdev_nvme_attach_controller",
        json!({"name": "svm1", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
               "trsvcid": (port + 5).to_string(), "subnqn": "nqn.2016-06.io.spdk:svm1-ingress"}),
    );
    // Write cache (spec 4: advertised when any leg has one): B's legs are RAM disks; the
    // new remote's base is a file, so the reprotected top gains one.
    let wc = |n: &Node, bdev: &str| {
        n.ok("bdev_get_bdevs", json!({"name": bdev}))[0]["write_cache"].clone()
    };
    assert_eq!(wc(&b, "svm0"), json!(false));
    assert_eq!(wc(&b, "svm1n1"), json!(true));
    assert!(!top.connect().info().vwc, "VWC before the reprotect");
    let out = b.replctl(&[
        "reprotect",
        "svm0",
        "svm1n1",
        "--sync",
        "incremental",
        "--peer-map",
        map_file.to_str().unwrap(),
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let st = b.status("svm0");
    assert_eq!(st["sync"]["state"], "in_sync", "{st}");
    assert_eq!(wc(&b, "svm0"), json!(true));
    assert!(
        top.connect().info().vwc,
        "VWC of a new connection after the reprotect"
    );
    // Copied: the 1 MiB A wrote before the failover, both 64 KiB SVM writes, and A's
    // 128 KiB after it (its map), in 64 KiB regions.
    assert_eq!(
        st["counters"]["sync_bytes"],
        (1 << 20) + 2 * 65536 + 131072,
        "{st}"
    );
    let ingress = Export {
        port: port + 5,
        nqn: "nqn.2016-06.io.spdk:svm1-ingress".into(),
    };
    let a_base = read_all(&ingress.connect(), 0, BLOCKS);
    let b_disk = read_all(&t, 0, BLOCKS);
    let mut want = vec![0x11u8; DISK];
    want[..16 * BS].fill(0x33);
    want[10000 * BS..10016 * BS].fill(0x44);
    assert_same(&b_disk, &want, "B's disk");
    assert_eq!(md5_hex(&a_base), md5_hex(&b_disk), "A's base vs B's disk");
    drop(a2);
}
