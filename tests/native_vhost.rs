//! A QEMU guest on the native host's vhost-user-blk export of the SVM disk (the secondary's
//! top): it reads the checkpointed primary data, writes its own, and after failover those
//! writes are on the secondary's disk. Skips with one line when guests cannot run here.

mod native;

use guest_harness::Guest;
use native::*;
use serde_json::json;
use std::time::Duration;

const MIB: usize = 1 << 20;

#[test]
fn guest_on_vhost_user_blk_reads_and_writes_the_svm_disk_through_failover() {
    if let Err(why) = guest_harness::available() {
        eprintln!(
            "skipped guest_on_vhost_user_blk_reads_and_writes_the_svm_disk_through_failover: {why}"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = pair(tmp.path(), None);
    p.start();
    let pr = p.primary.connect();
    pr.blocking().write(1, 0, fill(MIB, 0x11)).unwrap();
    p.sec
        .ok("bdev_replication_checkpoint", json!({"name": "svm0"}));

    p.sec.ok(
        "vhost_create_blk_controller",
        json!({"ctrlr": "vhost.svm0", "dev_name": "svm0"}),
    );
    let ctrlrs = p
        .sec
        .ok("vhost_get_controllers", json!({"name": "vhost.svm0"}));
    assert_eq!(
        ctrlrs[0]["backend_specific"]["block"]["bdev"], "svm0",
        "{ctrlrs}"
    );
    let e = p
        .sec
        .rpc(
            "vhost_create_blk_controller",
            json!({"ctrlr": "vhost.x", "dev_name": "nope"}),
        )
        .unwrap_err();
    assert_eq!(e.0, -19, "{e:?}");
    let socket = tmp.path().join("vhost.svm0");
    assert!(socket.exists(), "vhost socket at {}", socket.display());

    // 1 MiB of the checkpoint read back; 1 MiB of the guest's own at 2 MiB, O_DIRECT.
    let script = "\
        dev=/dev/vda; [ -b $dev ] || exit 80\n\
        echo R_MD5=$(dd if=$dev bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)\n\
        dd if=/dev/urandom of=/tmp/a bs=1M count=1 2>/dev/null || exit 90\n\
        echo A_MD5=$(md5sum < /tmp/a | cut -d' ' -f1)\n\
        dd if=/tmp/a of=$dev bs=1M seek=2 oflag=direct conv=fsync 2>/dev/null || exit 91\n\
        echo B_MD5=$(dd if=$dev bs=1M skip=2 count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)\n";
    let out = Guest::builder()
        .script(script)
        .vhost_user_blk(&socket)
        .no_network()
        .timeout(Duration::from_secs(180))
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    out.check_success()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    assert_eq!(
        out.value("R_MD5"),
        Some(md5_hex(&fill(MIB, 0x11)).as_str()),
        "the guest reads the checkpoint"
    );
    let a = out.value("A_MD5").expect("A_MD5").to_owned();
    assert_eq!(out.value("B_MD5"), Some(a.as_str()), "guest read-back");

    // Failover: the guest's writes (in the active overlay) are merged into the base.
    p.sec.ok(
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    wait_for(60, "stage done", || p.sec.status("svm0")["stage"] == "done");
    let top = p.top.connect();
    let base = read_all(&top, (2 * MIB / BS) as u64, (MIB / BS) as u32);
    assert_eq!(
        md5_hex(&base),
        a,
        "the guest's writes on the secondary's disk"
    );
    assert_runs(
        &read_all(&top, 0, (MIB / BS) as u32),
        &[(MIB, 0x11)],
        "the primary's data on the secondary's disk",
    );
    p.sec
        .ok("vhost_delete_controller", json!({"ctrlr": "vhost.svm0"}));
    assert!(!socket.exists());
}
