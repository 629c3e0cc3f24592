//! The native host in-process: two nodes over loopback NVMe/TCP with the project's
//! initiator checking every byte (the process-level suite is `native_pair.rs`).

use nvmf::driver::{ConnectOptions, Controller};
use serde_json::{Value, json};
use spdk_replication::native::app::NativeNode;

const BS: usize = 4096;
const BLOCKS: u64 = 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ok(n: &NativeNode, m: &str, p: Value) -> Value {
    n.call(m, p).unwrap_or_else(|e| panic!("{m}: {e}"))
}

fn listener(nqn: &str, port: u16) -> Value {
    json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
           "traddr": "127.0.0.1", "trsvcid": port.to_string()}})
}

fn export(n: &NativeNode, nqn: &str, bdev: &str, port: u16) {
    ok(
        n,
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "allow_any_host": true}),
    );
    ok(
        n,
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": bdev}}),
    );
    ok(n, "nvmf_subsystem_add_listener", listener(nqn, port));
}

fn connect(port: u16, nqn: &str) -> Controller {
    Controller::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        nqn,
        "nqn.2014-08.org.nvmexpress:uuid:test",
        ConnectOptions::default(),
    )
    .unwrap()
}

/// Secondary `svm0` over RAM disks `base`, `hidden` and `active` of `blocks` blocks.
fn secondary_over_mallocs(n: &NativeNode, blocks: u64) {
    for b in ["base", "hidden", "active"] {
        ok(
            n,
            "bdev_malloc_create",
            json!({"name": b, "num_blocks": blocks, "block_size": BS}),
        );
    }
    ok(
        n,
        "bdev_replication_create",
        json!({"name": "svm0", "mode": "secondary",
        "base_bdev": "base", "hidden_bdev": "hidden", "active_bdev": "active"}),
    );
}

/// Byte-exact comparison that reports the first difference, not the buffers.
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (block {}): got {:#x}, want {:#x}",
            i / BS,
            got[i],
            want[i]
        );
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i / 7) as u8)).collect()
}

#[test]
fn pair_replicates_and_fails_over() {
    let sec = NativeNode::start(&[0], ".".into()).unwrap();
    let pri = NativeNode::start(&[0, 1], ".".into()).unwrap();
    let (ing_port, top_port, pri_port) = (free_port(), free_port(), free_port());
    secondary_over_mallocs(&sec, BLOCKS);
    ok(&sec, "nvmf_create_transport", json!({"trtype": "TCP"}));
    export(
        &sec,
        "nqn.2016-06.io.spdk:svm0-ingress",
        "svm0_ingress",
        ing_port,
    );
    export(&sec, "nqn.2016-06.io.spdk:svm0", "svm0", top_port);

    ok(
        &pri,
        "bdev_malloc_create",
        json!({"name": "local", "num_blocks": BLOCKS, "block_size": BS}),
    );
    let names = ok(
        &pri,
        "bdev_nvme_attach_controller",
        json!({"name": "svm0", "trtype": "TCP",
        "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": ing_port.to_string(),
        "subnqn": "nqn.2016-06.io.spdk:svm0-ingress"}),
    );
    assert_eq!(names, json!(["svm0n1"]));
    ok(
        &pri,
        "bdev_replication_create",
        json!({"name": "pvm0", "mode": "primary",
        "local_bdev": "local", "remote_bdev": "svm0n1"}),
    );
    ok(&pri, "nvmf_create_transport", json!({"trtype": "TCP"}));
    export(&pri, "nqn.2016-06.io.spdk:pvm0", "pvm0", pri_port);

    // Initial data before start, then replication.
    let guest = connect(pri_port, "nqn.2016-06.io.spdk:pvm0");
    let g = guest.blocking();
    let a = pattern(1, 64 * BS);
    g.write(1, 0, a.clone()).unwrap();
    // Initial sync by hand (the primary in `none` writes locally only).
    let ingress = connect(ing_port, "nqn.2016-06.io.spdk:svm0-ingress");
    ingress.blocking().write(1, 0, a.clone()).unwrap();
    drop(ingress);
    let svm = connect(top_port, "nqn.2016-06.io.spdk:svm0");
    let s = svm.blocking();
    assert!(s.read(1, 0, 1).is_err(), "top read fails in stage none");
    ok(
        &sec,
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    ok(
        &pri,
        "bdev_replication_start",
        json!({"name": "pvm0", "mode": "primary"}),
    );

    same(&s.read(1, 0, 64).unwrap(), &a, "SVM sees the initial data");

    // PVM writes after start: COW keeps the SVM view until the checkpoint.
    let b = pattern(2, 16 * BS);
    g.write(1, 8, b.clone()).unwrap();
    same(
        &s.read(1, 0, 64).unwrap(),
        &a,
        "SVM view unchanged before checkpoint",
    );
    // SVM writes land in active.
    let c = pattern(3, 4 * BS);
    s.write(1, 100, c.clone()).unwrap();
    same(&s.read(1, 100, 4).unwrap(), &c, "SVM write");
    // Flush through the whole chain.
    g.flush(1).unwrap();
    s.flush(1).unwrap();

    ok(&sec, "bdev_replication_checkpoint", json!({"name": "svm0"}));
    let mut want = a.clone();
    want[8 * BS..24 * BS].copy_from_slice(&b);
    same(
        &s.read(1, 0, 64).unwrap(),
        &want,
        "SVM sees the PVM's writes after checkpoint",
    );
    same(
        &s.read(1, 100, 4).unwrap(),
        &vec![0u8; 4 * BS],
        "active emptied",
    );

    // Failover under SVM writes: merge runs, then done.
    let d = pattern(4, 8 * BS);
    s.write(1, 200, d.clone()).unwrap();
    ok(
        &sec,
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    let e = pattern(5, 8 * BS);
    s.write(1, 300, e.clone()).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let st = ok(&sec, "bdev_replication_get_status", json!({"name": "svm0"}));
        if st[0]["stage"] == "done" {
            break;
        }
        assert!(t0.elapsed().as_secs() < 20, "merge did not finish: {st}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    same(&s.read(1, 200, 8).unwrap(), &d, "SVM write before failover");
    same(&s.read(1, 300, 8).unwrap(), &e, "SVM write during merge");
    // Ingress refused after failover: the primary's forwarded write fails, the primary
    // reports the error and keeps completing guest writes from its local disk.
    g.write(1, 500, pattern(6, BS)).unwrap();
    let err = ok(&pri, "bdev_replication_get_error", json!({"name": "pvm0"}));
    assert_ne!(err[0]["error"], Value::Null, "{err}");
    // Overlays released at done.
    let bdevs = ok(&sec, "bdev_get_bdevs", json!({"name": "hidden"}));
    assert_eq!(bdevs[0]["claimed"], false);
    let cfg = ok(&pri, "save_config", Value::Null);
    let s = cfg.to_string();
    assert!(
        s.contains("bdev_nvme_attach_controller") && s.contains("bdev_replication_create"),
        "{s}"
    );
}

/// A failover merge over RAM disks, whose requests complete at once, leaves the reactor
/// to the SVM: a write and a status asked right after the stop are answered while the
/// merge still runs, and the merged base holds both. (The merge used to hold the reactor
/// from its first cluster to its last: 256 MiB of overlay kept the SVM waiting ~0.1 s.)
#[test]
fn merge_over_ram_disks_leaves_the_reactor_to_the_svm() {
    use spdk_replication::native::node::BlockOp;
    const MIB: u64 = 256;
    let blocks = (MIB << 20) / BS as u64;
    let n = NativeNode::start(&[0], ".".into()).unwrap();
    secondary_over_mallocs(&n, blocks);
    ok(
        &n,
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    // The SVM's data over the whole disk, in active.
    n.with_app(move |app| async move {
        let top = app.exported("svm0").expect("top");
        let per = (1 << 20) / BS as u64;
        for lba in (0..blocks).step_by(per as usize) {
            let data = vec![0x33; 1 << 20];
            top.run(BlockOp::Write { lba, data }).await.expect("fill");
        }
    })
    .unwrap();
    ok(&n, "nvmf_create_transport", json!({"trtype": "TCP"}));
    let port = free_port();
    export(&n, "nqn.2016-06.io.spdk:svm0", "svm0", port);
    let svm = connect(port, "nqn.2016-06.io.spdk:svm0");
    let s = svm.blocking();
    let mine = pattern(9, 4 * BS);

    ok(
        &n,
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    s.write(1, blocks / 2, mine.clone()).unwrap();
    let st = &ok(&n, "bdev_replication_get_status", json!({"name": "svm0"}))[0];
    assert_eq!(
        st["stage"], "failover",
        "the SVM's write and this status waited for the whole merge: {st}"
    );
    assert!(
        st["merge"]["done_bytes"].as_u64().unwrap() < st["merge"]["total_bytes"].as_u64().unwrap(),
        "{st}"
    );
    loop {
        let st = &ok(&n, "bdev_replication_get_status", json!({"name": "svm0"}))[0];
        match st["stage"].as_str() {
            Some("done") => break,
            Some("failover") => std::thread::sleep(std::time::Duration::from_millis(5)),
            _ => panic!("merge failed: {st}"),
        }
    }
    same(
        &s.read(1, blocks / 2, 4).unwrap(),
        &mine,
        "the SVM's write during the merge",
    );
    for lba in [0, blocks / 2 - 1, blocks / 2 + 4, blocks - 1] {
        same(
            &s.read(1, lba, 1).unwrap(),
            &[0x33; BS],
            &format!("merged block {lba}"),
        );
    }
}
