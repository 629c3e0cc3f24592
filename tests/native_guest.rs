//! Real guests on native nodes: a Linux guest's kernel NVMe/TCP initiator (Debian's
//! nvme-cli) on the primary's export writes data that must be on the secondary's disk at
//! once and in the SVM's view after a checkpoint. Skips with one line when guests cannot
//! run here (see guest-harness/README.md).

mod native;

use guest_harness::{Guest, HOST_ADDR_FROM_GUEST, shell_quote};
use native::*;
use serde_json::json;
use std::time::Duration;

const MIB: usize = 1 << 20;

#[test]
fn kernel_initiator_on_the_primary_replicates_to_the_secondary() {
    if let Err(why) = guest_harness::available() {
        eprintln!("skipped kernel_initiator_on_the_primary_replicates_to_the_secondary: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = pair(tmp.path(), None);
    p.start();
    let nqn = shell_quote(&p.primary.nqn);
    // 2 MiB of random data at 1 MiB (writes larger than in-capsule data, so R2T/H2CData),
    // flushed, read back O_DIRECT (several C2HData PDUs per read).
    let script = format!(
        "nvme_connect_wait {HOST_ADDR_FROM_GUEST} {port} {nqn} || exit 82\n\
         dd if=/dev/urandom of=/tmp/a bs=1M count=2 2>/dev/null || exit 90\n\
         echo A_MD5=$(md5sum < /tmp/a | cut -d' ' -f1)\n\
         dd if=/tmp/a of=$NVME_DEV bs=1M seek=1 oflag=direct 2>/dev/null || exit 91\n\
         nvme flush $NVME_DEV -n 1 || exit 92\n\
         echo B_MD5=$(dd if=$NVME_DEV bs=1M skip=1 count=2 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)\n\
         nvme_disconnect {nqn} || exit 85\n",
        port = p.primary.port,
    );
    let out = Guest::builder()
        .script(script)
        .timeout(Duration::from_secs(180))
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    out.check_success()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    let a = out.value("A_MD5").expect("A_MD5").to_owned();
    assert_eq!(out.value("B_MD5"), Some(a.as_str()), "guest read-back");

    // On the secondary's disk at once (through the ingress, which reads the base)...
    let ing = p.ingress.connect();
    let base = read_all(&ing, (MIB / BS) as u64, (2 * MIB / BS) as u32);
    assert_eq!(md5_hex(&base), a, "secondary base holds the guest's bytes");
    // ...and on the primary's local disk.
    let pr = p.primary.connect();
    let local = read_all(&pr, (MIB / BS) as u64, (2 * MIB / BS) as u32);
    assert_eq!(local, base, "primary local == secondary base");
    // The SVM still sees the last checkpoint (zeroes) until the next one.
    let top = p.top.connect();
    let view = read_all(&top, (MIB / BS) as u64, (2 * MIB / BS) as u32);
    assert_runs(&view, &[(2 * MIB, 0)], "SVM view before checkpoint");
    p.sec
        .ok("bdev_replication_checkpoint", json!({"name": "svm0"}));
    let view = read_all(&top, (MIB / BS) as u64, (2 * MIB / BS) as u32);
    assert_eq!(view, base, "SVM view after checkpoint");
    let st = p.pri.status("pvm0");
    assert_eq!(st["error"], json!(null), "{st}");
    assert!(
        st["counters"]["remote_flushes"].as_u64().unwrap() >= 1,
        "{st}"
    );
}
