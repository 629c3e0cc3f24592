//! The pair acceptance flow against two native `replication_tgt` processes over loopback
//! NVMe/TCP (what `spdk_pair.rs` checks on the SPDK host), with the project's initiator
//! checking every byte. Runs on any machine: no SPDK needed.

mod native;

use native::*;
use serde_json::json;

const HALF: usize = 64 * BS;
const HALF_BLOCKS: u32 = 64;

#[test]
fn pair_replicates_checkpoints_and_fails_over() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pair(tmp.path(), None);
    let primary = p.primary.connect();
    let pr = primary.blocking();
    let ingress = p.ingress.connect();
    let ing = ingress.blocking();
    let top = p.top.connect();
    let tp = top.blocking();

    // Initial synchronisation before start: the primary in `none` writes locally only,
    // the ingress writes the base.
    pr.write(1, 0, fill(2 * HALF, 0x11)).unwrap();
    ing.write(1, 0, fill(2 * HALF, 0x11)).unwrap();
    // Case 1: the top fails before start.
    assert!(
        tp.read(1, 0, 1).is_err(),
        "top read must fail in stage none"
    );

    // Start: the secondary through SPDK's CLI with our plugin when installed, the primary
    // through replctl.
    match p
        .sec
        .spdk_rpc(&["bdev_replication_start", "-b", "svm0", "-m", "secondary"])
    {
        Some(out) if has_spdk_rpc() => assert!(
            out.status.success(),
            "spdk-rpc: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        _ => {
            p.sec.ok(
                "bdev_replication_start",
                json!({"name": "svm0", "mode": "secondary"}),
            );
        }
    }
    let out = p.pri.replctl(&["start", "pvm0", "--mode", "primary"]);
    assert!(
        out.status.success(),
        "replctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Case 2.
    assert_runs(
        &tp.read(1, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(2 * HALF, 0x11)],
        "top after start",
    );

    // Case 3: the primary writes 0x22 over the second half; it reaches the secondary's base
    // through the ingress while the SVM keeps seeing 0x11.
    pr.write(1, HALF_BLOCKS.into(), fill(HALF, 0x22)).unwrap();
    assert_runs(
        &pr.read(1, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(HALF, 0x11), (HALF, 0x22)],
        "primary",
    );
    assert_runs(
        &ing.read(1, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(HALF, 0x11), (HALF, 0x22)],
        "secondary base",
    );
    assert_runs(
        &tp.read(1, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(2 * HALF, 0x11)],
        "SVM view",
    );
    let st = p.sec.status("svm0");
    assert_eq!(st["counters"]["cow_bytes"], json!(HALF), "{st}");

    // Case 4: the SVM writes 0x33 over the first half.
    tp.write(1, 0, fill(HALF, 0x33)).unwrap();
    assert_runs(
        &tp.read(1, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(HALF, 0x33), (HALF, 0x11)],
        "SVM writes",
    );

    // A guest flush reaches every leg: the primary's local disk and the remote (the
    // secondary's base through the ingress).
    let before = p.pri.status("pvm0")["counters"].clone();
    pr.flush(1).unwrap();
    let after = p.pri.status("pvm0")["counters"].clone();
    assert_eq!(
        after["remote_flushes"].as_u64().unwrap(),
        before["remote_flushes"].as_u64().unwrap() + 1,
        "{after}"
    );

    // Case 5: checkpoint (all bdevs of each node; a no-op on the primary).
    p.pri.ok("bdev_replication_checkpoint", json!(null));
    p.sec.ok("bdev_replication_checkpoint", json!(null));
    assert_runs(
        &tp.read(1, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(HALF, 0x11), (HALF, 0x22)],
        "after checkpoint",
    );
    let st = p.sec.status("svm0");
    assert_eq!(
        st["allocated"],
        json!({"active_blocks": 0, "hidden_clusters": 0}),
        "{st}"
    );

    // After the checkpoint: the primary writes 0x44 over the first half (to be rolled back),
    // the SVM writes 0x55 over the second half.
    pr.write(1, 0, fill(HALF, 0x44)).unwrap();
    tp.write(1, HALF_BLOCKS.into(), fill(HALF, 0x55)).unwrap();

    // Case 6/12: failover while the SVM keeps writing 0x66 into a third region.
    let svm = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for i in 0..HALF_BLOCKS {
                tp.write(1, u64::from(2 * HALF_BLOCKS + i), fill(BS, 0x66))?;
            }
            Ok::<_, nvmf::driver::Error>(())
        });
        let out = p.sec.replctl(&["stop", "svm0", "--failover", "--wait"]);
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
        &tp.read(1, 0, 3 * HALF_BLOCKS).unwrap(),
        &want,
        "SVM view after failover",
    );
    assert_runs(
        &ing.read(1, 0, 3 * HALF_BLOCKS).unwrap(),
        &want,
        "base after failover",
    );
    // Ingress writes are refused now: the primary's late writes never reach the base.
    assert!(
        ing.write(1, 0, fill(BS, 0x77)).is_err(),
        "ingress write after failover"
    );
    assert_runs(&ing.read(1, 0, 1).unwrap(), &[(BS, 0x11)], "base untouched");
    // The primary's guest keeps writing; the forwarded copy is refused and reported.
    pr.write(1, 0, fill(BS, 0x88)).unwrap();
    let err = p
        .pri
        .ok("bdev_replication_get_error", json!({"name": "pvm0"}));
    assert_ne!(err[0]["error"], json!(null), "{err}");
    // Overlays were released at done.
    for b in ["svm0_hidden", "svm0_active"] {
        assert_eq!(
            p.sec.ok("bdev_get_bdevs", json!({"name": b}))[0]["claimed"],
            false,
            "{b}"
        );
    }

    // Case 7: continuous replication: the promoted node takes primary-mode commands.
    p.sec.ok(
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "primary"}),
    );
    p.sec
        .ok("bdev_replication_checkpoint", json!({"name": "svm0"}));
    p.sec.ok("bdev_replication_stop", json!({"name": "svm0"}));
    assert_eq!(p.sec.status("svm0")["stage"], "done");
    p.pri.ok(
        "bdev_replication_stop",
        json!({"name": "pvm0", "failover": true}),
    );
    assert_runs(
        &pr.read(1, 0, 2 * HALF_BLOCKS).unwrap(),
        &[(BS, 0x88), (HALF - BS, 0x44), (HALF, 0x22)],
        "primary disk",
    );
}
