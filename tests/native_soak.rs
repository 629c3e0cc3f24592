//! Randomized COLO soak on a native pair (processes, loopback NVMe/TCP, the project's
//! initiator as both guests): a seeded random sequence of PVM writes, SVM writes (some
//! failed by SPDK's error bdev under the active overlay: a failed write must not change the
//! SVM's view), reads checked against a reference model, checkpoints, at most one freeze of
//! the secondary past `remote_timeout_ms` (the link breaks); then the primary is SIGKILLed
//! and the secondary fails over. Nothing acknowledged may be lost: the promoted disk is the
//! SVM's view exactly, and before the kill the primary's disk held every PVM write.
//!
//! `SOAK_SEED=N` replays a run (the seed is printed first); `SOAK_OPS=N` runs longer
//! (default 1000 operations, about two seconds).

mod native;

use native::*;
use serde_json::{Value, json};
use std::time::Duration;

const SPAN: usize = 4 << 20;
const BLOCKS: u64 = (SPAN / BS) as u64;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn range(lba: u64, n: u64) -> std::ops::Range<usize> {
    (lba as usize * BS)..((lba + n) as usize * BS)
}

/// The README's secondary config with SPDK's error bdev under the active overlay.
fn secondary_config(port: u16) -> Value {
    let mut cfg = config("secondary.json", &[(4420, port), (4421, port + 1)]);
    let bdev = cfg["subsystems"][0]["config"].as_array_mut().unwrap();
    let at = bdev
        .iter()
        .position(|e| e["method"] == "bdev_replication_create")
        .unwrap();
    bdev.insert(
        at,
        json!({"method": "bdev_error_create", "params": {"base_name": "svm0_active"}}),
    );
    bdev[at + 1]["params"]["active_bdev"] = json!("EE_svm0_active");
    cfg
}

#[test]
fn randomized_colo_soak() {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let ops: u32 = std::env::var("SOAK_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    eprintln!("randomized_colo_soak (native): SOAK_SEED={seed} SOAK_OPS={ops}");
    let mut rng = Rng(seed);
    let fail = |what: String| -> ! { panic!("SOAK_SEED={seed}: {what}") };

    let tmp = tempfile::tempdir().unwrap();
    let port = ports();
    let mut pri_cfg = config("primary.json", &[(4420, port), (4430, port + 2)]);
    for e in pri_cfg["subsystems"][0]["config"].as_array_mut().unwrap() {
        if e["method"] == "bdev_replication_create" {
            e["params"]["remote_timeout_ms"] = json!(300);
        }
    }
    let sec = Node::start(tmp.path(), "soak-sec", &secondary_config(port), "0x3");
    let mut pri = Node::start(tmp.path(), "soak-pri", &pri_cfg, "0x3");
    let ingress = Export {
        port,
        nqn: "nqn.2016-06.io.spdk:svm0-ingress".into(),
    };
    let top = Export {
        port: port + 1,
        nqn: "nqn.2016-06.io.spdk:svm0".into(),
    };
    let primary = Export {
        port: port + 2,
        nqn: "nqn.2016-06.io.spdk:pvm0".into(),
    };

    sec.ok("bdev_replication_start", json!({}));
    pri.ok("bdev_replication_start", json!({}));
    let (pc, tc) = (primary.connect(), top.connect());
    let (pvm, svm) = (pc.blocking(), tc.blocking());
    let mut m_primary = vec![0u8; SPAN];
    let mut m_base = vec![0u8; SPAN];
    let mut m_svm = vec![0u8; SPAN];
    let mut link = true;
    let mut froze = false;
    let mut failed_svm_writes = 0;
    for step in 0..ops {
        let lba = rng.below(BLOCKS - 64);
        let n = 1 + rng.below(64);
        let byte = (rng.below(254) + 1) as u8;
        let data = || fill(n as usize * BS, byte);
        match rng.below(100) {
            // PVM write: the primary's disk, and the secondary's base while the link holds.
            0..=34 => {
                pvm.write(1, lba, data())
                    .unwrap_or_else(|e| fail(format!("step {step}: PVM write: {e}")));
                m_primary[range(lba, n)].fill(byte);
                if link {
                    m_base[range(lba, n)].fill(byte);
                }
            }
            // SVM write; one in five fails in the active overlay first, then is retried.
            35..=59 => {
                if rng.below(5) == 0 {
                    sec.ok(
                        "bdev_error_inject_error",
                        json!({"name": "EE_svm0_active",
                        "io_type": "write", "error_type": "failure", "num": 1}),
                    );
                    if svm.write(1, lba, data()).is_ok() {
                        fail(format!(
                            "step {step}: SVM write succeeded through a failing active"
                        ));
                    }
                    failed_svm_writes += 1;
                    let got = svm.read(1, lba, n as u32).unwrap();
                    if got[..] != m_svm[range(lba, n)] {
                        fail(format!(
                            "step {step}: a failed SVM write changed the view at {lba}+{n}"
                        ));
                    }
                }
                svm.write(1, lba, data())
                    .unwrap_or_else(|e| fail(format!("step {step}: SVM write: {e}")));
                m_svm[range(lba, n)].fill(byte);
            }
            // COLO checkpoint: the SVM is given the secondary's disk.
            60..=71 => {
                sec.ok("bdev_replication_checkpoint", json!({}));
                pri.ok("bdev_replication_checkpoint", json!({}));
                m_svm.clone_from(&m_base);
            }
            72..=83 => {
                let got = svm
                    .read(1, lba, n as u32)
                    .unwrap_or_else(|e| fail(format!("step {step}: SVM read: {e}")));
                if got[..] != m_svm[range(lba, n)] {
                    fail(format!("step {step}: SVM view differs at lba {lba}+{n}"));
                }
            }
            84..=92 => {
                let got = pvm
                    .read(1, lba, n as u32)
                    .unwrap_or_else(|e| fail(format!("step {step}: PVM read: {e}")));
                if got[..] != m_primary[range(lba, n)] {
                    fail(format!(
                        "step {step}: primary disk differs at lba {lba}+{n}"
                    ));
                }
            }
            // The secondary freezes past the remote timeout during a one-block PVM write
            // (in-capsule, so its data is in the socket already and lands on resume).
            _ if !froze && link => {
                froze = true;
                sec.signal("-STOP");
                let r = pvm.write(1, lba, fill(BS, byte));
                sec.signal("-CONT");
                r.unwrap_or_else(|e| fail(format!("step {step}: write during freeze: {e}")));
                m_primary[range(lba, 1)].fill(byte);
                m_base[range(lba, 1)].fill(byte);
                link = false;
                let st = pri.status("pvm0");
                if st["error"] != json!("I/O error occurred") || st["link_broken"] != json!(true) {
                    fail(format!("step {step}: link not broken by the freeze: {st}"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => {}
        }
    }
    if read_all(&pc, 0, BLOCKS as u32) != m_primary {
        fail("primary disk lost an acknowledged write".into());
    }
    // The primary is lost: SIGKILL, then failover.
    drop(pc);
    pri.kill();
    let out = sec.replctl(&["stop", "svm0", "--failover", "--wait"]);
    if !out.status.success() {
        fail(format!(
            "failover: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let st = sec.status("svm0");
    if st["stage"] != "done" || st["error"] != json!(null) {
        fail(format!("after failover: {st}"));
    }
    if read_all(&ingress.connect(), 0, BLOCKS as u32) != m_svm {
        fail("secondary disk after failover differs from the SVM view".into());
    }
    if read_all(&tc, 0, BLOCKS as u32) != m_svm {
        fail("promoted SVM disk differs from the SVM view".into());
    }
    eprintln!(
        "randomized_colo_soak: {ops} ops, {failed_svm_writes} injected SVM write failures, froze={froze}"
    );
}
