//! The protection lifecycle on two processes over loopback NVMe/TCP (issue 10), on each host
//! (native, and SPDK where it is installed): a full sync under guest writes, an incremental
//! resync after the secondary restarts on its file-backed base, and online verify finding a
//! region corrupted behind the module's back (and none under write load), with byte-exact
//! disk comparisons. The project's initiator drives both hosts' NVMe-oF targets.

mod native;

use native::*;
use serde_json::{Value, json};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BLOCKS: u32 = 4096;
const REGION: usize = 64 * 1024;
const REGION_BLOCKS: u64 = (REGION / BS) as u64;

fn listener(nqn: &str, port: u16) -> Value {
    json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn,
           "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                              "trsvcid": port.to_string()}}})
}

fn export(nqn: &str, bdev: &str, port: u16) -> Vec<Value> {
    vec![
        json!({"method": "nvmf_create_subsystem", "params": {"nqn": nqn, "allow_any_host": true}}),
        json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn,
               "namespace": {"bdev_name": bdev}}}),
        listener(nqn, port),
    ]
}

fn malloc(name: &str) -> Value {
    json!({"method": "bdev_malloc_create",
           "params": {"name": name, "num_blocks": BLOCKS, "block_size": BS}})
}

/// A secondary whose base is a file (kept across restarts); ingress exported on `port`.
fn secondary(host: Host, dir: &Path, port: u16) -> Node {
    let base = dir.join("svm0_base.img");
    if !base.exists() {
        std::fs::File::create(&base)
            .unwrap()
            .set_len(u64::from(BLOCKS) * BS as u64)
            .unwrap();
    }
    let mut nvmf = vec![json!({"method": "nvmf_create_transport", "params": {"trtype": "TCP"}})];
    nvmf.extend(export(
        "nqn.2016-06.io.spdk:svm0-ingress",
        "svm0_ingress",
        port,
    ));
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            // bdev_aio: the file bdev both hosts have (SPDK's uring module is optional).
            {"method": "bdev_aio_create", "params": {"name": "svm0_base",
             "filename": base, "block_size": BS}},
            malloc("svm0_hidden"),
            malloc("svm0_active"),
            {"method": "bdev_replication_create", "params": {"name": "svm0",
             "mode": "secondary", "base_bdev": "svm0_base", "hidden_bdev": "svm0_hidden",
             "active_bdev": "svm0_active"}},
        ]},
        {"subsystem": "nvmf", "config": nvmf},
    ]});
    let n = start(host, dir, "secondary", &cfg, "0x1");
    n.ok(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    n
}

/// A primary replicating to the ingress on `ingress_port` (reconnecting forever), exported
/// on `port`.
fn primary(host: Host, dir: &Path, ingress_port: u16, port: u16) -> Node {
    let mut nvmf = vec![json!({"method": "nvmf_create_transport", "params": {"trtype": "TCP"}})];
    nvmf.extend(export("nqn.2016-06.io.spdk:pvm0", "pvm0", port));
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            malloc("pvm0_local"),
            {"method": "bdev_nvme_attach_controller", "params": {"name": "svm0",
             "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
             "trsvcid": ingress_port.to_string(), "subnqn": "nqn.2016-06.io.spdk:svm0-ingress",
             "ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1}},
            {"method": "bdev_replication_create", "params": {"name": "pvm0",
             "mode": "primary", "local_bdev": "pvm0_local", "remote_bdev": "svm0n1",
             "remote_timeout_ms": 1000, "sync_granularity": REGION}},
        ]},
        {"subsystem": "nvmf", "config": nvmf},
    ]});
    start(host, dir, "primary", &cfg, "0x2")
}

fn start(host: Host, dir: &Path, name: &str, cfg: &Value, mask: &str) -> Node {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
    Node::start_on(host, dir, name, &path, mask)
}

struct Setup {
    host: Host,
    // Dropped last: the nodes go first.
    _serial: Option<std::sync::MutexGuard<'static, ()>>,
    _tmp: tempfile::TempDir,
    sec: Node,
    pri: Node,
    ingress: Export,
    disk: Export,
    ingress_port: u16,
}

fn setup(host: Host, test: &str) -> Option<Setup> {
    let serial = host_or_skip(host, test)?;
    let tmp = tempfile::tempdir().unwrap();
    let p = ports();
    let sec = secondary(host, tmp.path(), p);
    let pri = primary(host, tmp.path(), p, p + 1);
    Some(Setup {
        host,
        _serial: serial,
        _tmp: tmp,
        sec,
        pri,
        ingress: Export {
            port: p,
            nqn: "nqn.2016-06.io.spdk:svm0-ingress".into(),
        },
        disk: Export {
            port: p + 1,
            nqn: "nqn.2016-06.io.spdk:pvm0".into(),
        },
        ingress_port: p,
    })
}

fn sync(n: &Node) -> Value {
    n.status("pvm0")["sync"].clone()
}

fn wait_state(n: &Node, state: &str) -> Value {
    let mut last = Value::Null;
    wait_for(120, &format!("sync state {state}"), || {
        last = sync(n);
        last["state"] == state
    });
    last
}

/// Asserts the primary's disk equals the secondary's base, byte for byte.
fn assert_disks_equal(s: &Setup, what: &str) {
    let a = read_all(&s.disk.connect(), 0, BLOCKS);
    let b = read_all(&s.ingress.connect(), 0, BLOCKS);
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!(
            "{what}: byte {i} (block {}): primary {:#x}, secondary base {:#x}",
            i / BS,
            a[i],
            b[i]
        );
    }
}

/// A distinct 4 KiB block for (lba, generation): a difference anywhere shows.
fn block(lba: u64, generation: u64) -> Vec<u8> {
    let mut v = vec![0u8; BS];
    for (i, c) in v.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(&lba.to_le_bytes());
        c[8..16].copy_from_slice(&(generation * 1_000_003 + i as u64).to_le_bytes());
    }
    v
}

/// Random 4 KiB writes to the primary's export until `stop`; returns the count.
fn writer(disk: Export, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let c = disk.connect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let lba = x % u64::from(BLOCKS);
            write_all(&c, lba, &block(lba, n + 1));
            n += 1;
        }
        n
    })
}

#[test]
fn full_sync_under_guest_writes_makes_the_disks_equal_native() {
    full_sync_under_guest_writes(Host::Native);
}

#[test]
fn full_sync_under_guest_writes_makes_the_disks_equal_spdk() {
    full_sync_under_guest_writes(Host::Spdk);
}

fn full_sync_under_guest_writes(host: Host) {
    let Some(s) = setup(host, &format!("full_sync_under_guest_writes ({host:?})")) else {
        return;
    };
    // Unsynced disks: the primary's differs from the (zero) secondary base everywhere.
    let d = s.disk.connect();
    for lba in (0..u64::from(BLOCKS)).step_by(256) {
        let data: Vec<u8> = (0..256).flat_map(|i| block(lba + i, 0)).collect();
        write_all(&d, lba, &data);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(s.disk.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(100));
    s.pri.ok(
        "bdev_replication_start",
        json!({"name": "pvm0", "mode": "primary", "sync": "full"}),
    );
    let st = wait_state(&s.pri, "in_sync");
    stop.store(true, Ordering::Relaxed);
    let writes = w.join().unwrap();
    assert!(writes > 0);
    assert!(
        st["done_bytes"].as_u64().unwrap() >= u64::from(BLOCKS) * BS as u64,
        "{st}"
    );
    assert_eq!(st["dirty_bytes"], 0, "{st}");
    assert_disks_equal(&s, "after a full sync under writes");
}

#[test]
fn incremental_resync_after_a_secondary_restart_copies_only_dirty_regions_native() {
    incremental_resync_after_a_secondary_restart(Host::Native);
}

#[test]
fn incremental_resync_after_a_secondary_restart_copies_only_dirty_regions_spdk() {
    incremental_resync_after_a_secondary_restart(Host::Spdk);
}

fn incremental_resync_after_a_secondary_restart(host: Host) {
    let test = format!("incremental_resync_after_a_secondary_restart ({host:?})");
    let Some(mut s) = setup(host, &test) else {
        return;
    };
    s.pri.ok(
        "bdev_replication_start",
        json!({"name": "pvm0", "mode": "primary"}),
    );
    let d = s.disk.connect();
    let all: Vec<u8> = (0..256).flat_map(|i| block(i, 0)).collect();
    write_all(&d, 0, &all);
    assert_disks_equal(&s, "replicated before the restart");

    s.sec.kill();
    // Scattered writes, each in a region of its own, while the secondary is gone.
    let regions = [3u64, 17, 40, 41, 200];
    for r in regions {
        write_all(&d, r * REGION_BLOCKS + 5, &block(r, 7));
    }
    let st = sync(&s.pri);
    assert_eq!(st["state"], "out_of_sync", "{st}");
    assert_eq!(
        st["dirty_bytes"].as_u64().unwrap(),
        (regions.len() * REGION) as u64,
        "{st}"
    );

    let dir = s.sec.dir.clone();
    s.sec = secondary(s.host, &dir, s.ingress_port);
    // The primary's controller reconnects by itself; resync once it is back.
    wait_for(30, "the remote controller to reconnect", || {
        s.pri
            .ok("bdev_nvme_get_controllers", json!({"name": "svm0"}))[0]["ctrlrs"][0]["state"]
            == "enabled"
    });
    let copied_before = s.pri.status("pvm0")["counters"]["sync_bytes"]
        .as_u64()
        .unwrap_or(0);
    let out = s.pri.replctl(&["resync", "pvm0", "--wait"]);
    assert!(
        out.status.success(),
        "replctl resync: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let st = wait_state(&s.pri, "in_sync");
    // Exactly the dirty regions were copied.
    assert_eq!(
        st["done_bytes"].as_u64().unwrap(),
        (regions.len() * REGION) as u64,
        "{st}"
    );
    let copied = s.pri.status("pvm0")["counters"]["sync_bytes"]
        .as_u64()
        .unwrap_or(0)
        - copied_before;
    assert_eq!(copied, (regions.len() * REGION) as u64);
    assert_eq!(s.pri.status("pvm0")["link_broken"], false);
    assert_disks_equal(&s, "after the incremental resync");
}

#[test]
fn verify_finds_a_corrupted_region_resync_repairs_it_and_writes_give_no_false_mismatch_native() {
    verify_and_repair(Host::Native);
}

#[test]
fn verify_finds_a_corrupted_region_resync_repairs_it_and_writes_give_no_false_mismatch_spdk() {
    verify_and_repair(Host::Spdk);
}

fn verify_and_repair(host: Host) {
    let Some(s) = setup(host, &format!("verify_and_repair ({host:?})")) else {
        return;
    };
    s.pri.ok(
        "bdev_replication_start",
        json!({"name": "pvm0", "mode": "primary"}),
    );
    let d = s.disk.connect();
    for lba in [0u64, 256] {
        let data: Vec<u8> = (lba..lba + 256).flat_map(|i| block(i, 1)).collect();
        write_all(&d, lba, &data);
    }

    // Verify under write load: writes in flight never count as mismatches.
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(s.disk.clone(), stop.clone());
    s.pri.ok("bdev_replication_verify", json!({"name": "pvm0"}));
    let st = wait_state(&s.pri, "in_sync");
    stop.store(true, Ordering::Relaxed);
    assert!(w.join().unwrap() > 0);
    assert_eq!(st["mismatches"], 0, "{st}");
    assert_eq!(st["done_bytes"], u64::from(BLOCKS) * BS as u64, "{st}");

    // Corrupt one byte of the secondary's base file behind the module's back.
    let at: u64 = 9 * REGION as u64 + 1234;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.sec.dir.join("svm0_base.img"))
        .unwrap();
    let old = read_all(&s.ingress.connect(), 0, BLOCKS)[at as usize];
    f.write_all_at(&[!old], at).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let out = s.pri.replctl(&["verify", "pvm0", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let st = sync(&s.pri);
    assert_eq!(st["mismatches"], 1, "{st} {text}");
    assert_eq!(st["first_mismatches"], json!([9 * REGION]), "{st}");
    assert_eq!(st["state"], "out_of_sync", "{st}");
    assert_eq!(st["dirty_bytes"], REGION, "{st}");

    // Through SPDK's own client with the project's plugin where it is installed.
    let call = |method: &str| {
        if has_spdk_rpc() {
            let out = s.pri.spdk_rpc(&[method, "-b", "pvm0"]).unwrap();
            assert!(
                out.status.success(),
                "{method}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "true");
        } else {
            s.pri.ok(method, json!({"name": "pvm0"}));
        }
    };
    call("bdev_replication_resync");
    let st = wait_state(&s.pri, "in_sync");
    assert_eq!(st["done_bytes"], REGION, "{st}");
    assert_disks_equal(&s, "after resync repaired the corruption");
    call("bdev_replication_verify");
    let st = wait_state(&s.pri, "in_sync");
    assert_eq!(st["mismatches"], 0, "{st}");
}
