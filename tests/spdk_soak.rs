//! Randomized COLO soak (issue 6) on the real pair: two `replication_tgt` processes with two
//! reactors each, NVMe/TCP between them, SPDK's `spdk_dd` as the guests. A seeded random
//! sequence of PVM writes, SVM writes, reads, checkpoints and at most one freeze of the
//! secondary (SIGSTOP past `remote_timeout_ms`, which breaks the link), then a failover;
//! every read is checked byte for byte against a reference model, and at the end the
//! primary's disk and the promoted secondary's disk hold exactly what was acknowledged.
//!
//! `SOAK_SEED=N` replays a run (the seed is printed first); `SOAK_OPS=N` runs longer
//! (default 30 operations, about a minute here).

mod spdk;

use serde_json::json;
use spdk::*;
use std::time::Duration;

/// The part of the 64 MiB disks the soak touches (reads compare all of it).
const SPAN: u64 = 4 << 20;
const BLOCKS: u64 = SPAN / BS;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: small, seedable, good enough to pick operations.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What each disk must hold: the primary's disk, the secondary's base, the SVM's view.
struct Model {
    primary: Vec<u8>,
    base: Vec<u8>,
    svm: Vec<u8>,
    link: bool,
}

fn range(lba: u64, n: u64) -> std::ops::Range<usize> {
    (lba * BS) as usize..((lba + n) * BS) as usize
}

#[test]
fn randomized_colo_soak() {
    let Some(env) = env("randomized_colo_soak") else {
        return;
    };
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
        .unwrap_or(30);
    eprintln!("randomized_colo_soak: SOAK_SEED={seed} SOAK_OPS={ops}");
    let mut rng = Rng(seed);

    let port = ports();
    let timeout_ms = 2000;
    let sec_cfg = config(&env, "secondary.json", &[(4420, port), (4421, port + 1)]);
    let mut pri_cfg = config(&env, "primary.json", &[(4420, port), (4430, port + 2)]);
    for e in pri_cfg["subsystems"][0]["config"].as_array_mut().unwrap() {
        if e["method"] == "bdev_replication_create" {
            e["params"]["remote_timeout_ms"] = json!(timeout_ms);
        }
    }
    let write_cfg = |name: &str, v: &serde_json::Value| {
        let path = env.tmp.path().join(format!("{name}.json"));
        std::fs::write(&path, v.to_string()).unwrap();
        path
    };
    let sec = App::start_mask(&env, "soak-sec", &write_cfg("soak-sec", &sec_cfg), "0x3");
    let pri = App::start_mask(&env, "soak-pri", &write_cfg("soak-pri", &pri_cfg), "0x3");
    let exp = |port: u16, nqn: &str| Export {
        port,
        nqn: nqn.into(),
    };
    let ingress = exp(port, "nqn.2016-06.io.spdk:svm0-ingress");
    let top = exp(port + 1, "nqn.2016-06.io.spdk:svm0");
    let primary = exp(port + 2, "nqn.2016-06.io.spdk:pvm0");
    let fail = |what: String| -> ! { panic!("SOAK_SEED={seed}: {what}") };

    sec.ok("bdev_replication_start", json!({}));
    pri.ok("bdev_replication_start", json!({}));
    let mut m = Model {
        primary: vec![0; SPAN as usize],
        base: vec![0; SPAN as usize],
        svm: vec![0; SPAN as usize],
        link: true,
    };
    let mut froze = false;
    for step in 0..ops {
        let lba = rng.below(BLOCKS - 64);
        let n = 1 + rng.below(64);
        let byte = (rng.below(254) + 1) as u8;
        match rng.below(100) {
            // PVM write: primary disk, and the secondary's base while the link holds.
            0..=34 => {
                dd_write(&env, &primary, lba, &fill(n * BS, byte))
                    .unwrap_or_else(|e| fail(format!("step {step}: PVM write: {e}")));
                m.primary[range(lba, n)].fill(byte);
                if m.link {
                    m.base[range(lba, n)].fill(byte);
                }
            }
            // SVM write.
            35..=59 => {
                dd_write(&env, &top, lba, &fill(n * BS, byte))
                    .unwrap_or_else(|e| fail(format!("step {step}: SVM write: {e}")));
                m.svm[range(lba, n)].fill(byte);
            }
            // COLO checkpoint: the SVM is given the secondary's disk.
            60..=71 => {
                sec.ok("bdev_replication_checkpoint", json!({}));
                pri.ok("bdev_replication_checkpoint", json!({}));
                m.svm.clone_from(&m.base);
            }
            // Reads, each against its model.
            72..=83 => {
                let got = dd_read(&env, &top, lba, n)
                    .unwrap_or_else(|e| fail(format!("step {step}: SVM read: {e}")));
                if got[..] != m.svm[range(lba, n)] {
                    fail(format!("step {step}: SVM view differs at lba {lba}+{n}"));
                }
            }
            84..=92 => {
                let got = dd_read(&env, &primary, lba, n)
                    .unwrap_or_else(|e| fail(format!("step {step}: PVM read: {e}")));
                if got[..] != m.primary[range(lba, n)] {
                    fail(format!(
                        "step {step}: primary disk differs at lba {lba}+{n}"
                    ));
                }
            }
            // The secondary freezes past the remote timeout during a one-block PVM write
            // (in-capsule, so its data is in the socket already and lands when the
            // secondary resumes): the write completes from the local leg, the link breaks.
            _ if !froze && m.link => {
                froze = true;
                sec.signal("-STOP");
                let r = dd_write(&env, &primary, lba, &fill(BS, byte));
                sec.signal("-CONT");
                r.unwrap_or_else(|e| fail(format!("step {step}: write during freeze: {e}")));
                m.primary[range(lba, 1)].fill(byte);
                m.base[range(lba, 1)].fill(byte);
                m.link = false;
                let st = pri.status("pvm0");
                if st["error"] != json!("I/O error occurred") || st["link_broken"] != json!(true) {
                    fail(format!("step {step}: link not broken by the freeze: {st}"));
                }
                // Let the late remote write land before anything reads the base.
                std::thread::sleep(Duration::from_millis(500));
            }
            _ => {}
        }
    }
    // Failover: the primary is lost; the SVM's view becomes the secondary's disk.
    let out = sec.replctl(&env, &["stop", "svm0", "--failover", "--wait"]);
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
    // Nothing acknowledged is lost: the promoted disk is the SVM's view exactly, the
    // primary's disk has every PVM write.
    let base = dd_read(&env, &ingress, 0, BLOCKS).unwrap();
    if base != m.svm {
        fail("secondary disk after failover differs from the SVM view".into());
    }
    let svm = dd_read(&env, &top, 0, BLOCKS).unwrap();
    if svm != m.svm {
        fail("promoted SVM disk differs from the SVM view".into());
    }
    let pdisk = dd_read(&env, &primary, 0, BLOCKS).unwrap();
    if pdisk != m.primary {
        fail("primary disk lost an acknowledged write".into());
    }
    let expected_error = if m.link {
        json!(null)
    } else {
        json!("I/O error occurred")
    };
    assert_eq!(
        pri.status("pvm0")["error"],
        expected_error,
        "SOAK_SEED={seed}"
    );
}
