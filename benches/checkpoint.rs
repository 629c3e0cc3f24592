//! Checkpoints under load (issue 9 item 5; a benchmark, not a test). Run with
//! `cargo bench --bench checkpoint`; `BENCH_SECS` (5), `BENCH_ROUNDS` (5, at most 5),
//! `CKPT_MS` (10: the period).
//!
//! A native pair in one process (secondary reactor on core 0, primary on core 1, the
//! remote leg over loopback NVMe/TCP). Both VMs' disks take 4 KiB random writes at QD32
//! from NVMe/TCP initiators: the PVM on the primary's export (every write also reaches the
//! ingress, copying before write after each checkpoint), the SVM on the secondary's top.
//! Meanwhile `bdev_replication_checkpoint` runs every `CKPT_MS` on the secondary: its
//! latency as the RPC caller sees it (p50/p99/max, target p99 < 1 ms), and how long guest
//! I/O is held: the guests' write latency percentiles with checkpoints against a run
//! without, in the same process.

mod common;

use common::{BS, export, free_port, ok};
use serde_json::json;
use spdk_replication::native::app::NativeNode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const BLOCKS: u64 = 65536; // 256 MiB
const PRI_NQN: &str = "nqn.2016-06.io.spdk:pvm0";
const TOP_NQN: &str = "nqn.2016-06.io.spdk:svm0";
const ING_NQN: &str = "nqn.2016-06.io.spdk:svm0-ingress";

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// QD32 4 KiB random writes on `nqn` until `stop`; every write's latency in µs.
fn load(port: u16, nqn: &str, seed: u64, stop: &AtomicBool, lat: &Mutex<Vec<f64>>) {
    let c = common::connect(port, nqn);
    let c = &c;
    let all =
        futures::executor::block_on(futures::future::join_all((0..32u64).map(|q| async move {
            let mut rng = common::Rng(seed + q);
            let data = bytes::Bytes::from(vec![0x5Au8; BS as usize]);
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                c.write(1, rng.next() % BLOCKS, data.clone())
                    .await
                    .expect("guest write");
                mine.push(t.elapsed().as_secs_f64() * 1e6);
            }
            mine
        })));
    lat.lock().unwrap().extend(all.into_iter().flatten());
}

/// One run of `secs` with both guests writing; with `period`, checkpoints meanwhile.
/// (checkpoint latencies µs, PVM write latencies, SVM write latencies.)
fn run(
    sec: &NativeNode,
    ports: (u16, u16),
    secs: f64,
    period: Option<Duration>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let stop = AtomicBool::new(false);
    let (pvm, svm) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let mut ckpt = Vec::new();
    std::thread::scope(|sc| {
        sc.spawn(|| load(ports.0, PRI_NQN, 0x1000, &stop, &pvm));
        sc.spawn(|| load(ports.1, TOP_NQN, 0x2000, &stop, &svm));
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < secs {
            match period {
                Some(p) => {
                    let c = Instant::now();
                    ok(sec, "bdev_replication_checkpoint", json!({"name": "svm0"}));
                    ckpt.push(c.elapsed().as_secs_f64() * 1e6);
                    std::thread::sleep(p.saturating_sub(c.elapsed()));
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    (ckpt, pvm.into_inner().unwrap(), svm.into_inner().unwrap())
}

fn main() {
    let secs = env_f64("BENCH_SECS", 5.0);
    let period = Duration::from_secs_f64(env_f64("CKPT_MS", 10.0) / 1000.0);
    let sec = common::secondary_node(0, BLOCKS);
    let (ing_p, top_p, pri_p) = (free_port(), free_port(), free_port());
    export(&sec, ING_NQN, "svm0_ingress", ing_p);
    export(&sec, TOP_NQN, "svm0", top_p);
    let pri = common::primary_node(1, BLOCKS, ing_p, ING_NQN);
    ok(
        &pri,
        "bdev_replication_create",
        json!({"name": "pvm0", "mode": "primary", "local_bdev": "local",
               "remote_bdev": "svm0n1"}),
    );
    export(&pri, PRI_NQN, "pvm0", pri_p);
    ok(
        &sec,
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    ok(&pri, "bdev_replication_start", json!({"name": "pvm0"}));
    // Warm-up: every page touched, both paths exercised.
    run(&sec, (pri_p, top_p), 1.0, Some(period));

    let mut rounds = Vec::new();
    for _ in 0..common::rounds().min(5) {
        let (_, pvm0, svm0) = run(&sec, (pri_p, top_p), secs, None);
        let (mut ck, pvm1, svm1) = run(&sec, (pri_p, top_p), secs, Some(period));
        let p99 = pct(&mut ck, 0.99);
        rounds.push((p99, ck, pvm0, svm0, pvm1, svm1));
    }
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let spread = (rounds[rounds.len() - 1].0 - rounds[0].0) / rounds[rounds.len() / 2].0;
    let n_rounds = rounds.len();
    let (_, mut ck, mut pvm0, mut svm0, mut pvm1, mut svm1) = rounds.swap_remove(n_rounds / 2);
    let st = ok(&pri, "bdev_replication_get_status", json!({"name": "pvm0"}));
    assert_eq!(
        st[0]["error"],
        json!(null),
        "the primary kept replicating: {st}"
    );
    println!(
        "checkpoint every {:.0} ms for {secs:.0} s while both guests write 4 KiB at QD32 over \
         NVMe/TCP (the median round of {n_rounds} by checkpoint p99):",
        period.as_secs_f64() * 1000.0
    );
    println!(
        "  checkpoint RPC ({} calls): p50 {:.0} us, p99 {:.0} us (target < 1000, spread {:.1}%), \
         max {:.0} us",
        ck.len(),
        pct(&mut ck, 0.5),
        pct(&mut ck, 0.99),
        spread * 100.0,
        pct(&mut ck, 1.0)
    );
    // The module's own part: how long each checkpoint held guest I/O (every round).
    let c = &ok(&sec, "bdev_replication_get_status", json!({"name": "svm0"}))[0]["counters"];
    let (n, total, max) = (
        c["checkpoints"].as_f64().unwrap_or(0.0),
        c["checkpoint_hold_ns_total"].as_f64().unwrap_or(0.0),
        c["checkpoint_hold_ns_max"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  guest I/O held per checkpoint (all {n:.0} of them): mean {:.1} us, max {:.1} us",
        total / n.max(1.0) / 1e3,
        max / 1e3
    );
    for (what, without, with) in [("PVM", &mut pvm0, &mut pvm1), ("SVM", &mut svm0, &mut svm1)] {
        let iops = |v: &Vec<f64>| v.len() as f64 / secs;
        let (i0, i1) = (iops(without), iops(with));
        println!(
            "  {what} writes without / with checkpoints: {i0:.0} / {i1:.0} IOPS; \
             latency p50 {:.0} / {:.0} us, p99 {:.0} / {:.0} us, max {:.0} / {:.0} us",
            pct(without, 0.5),
            pct(with, 0.5),
            pct(without, 0.99),
            pct(with, 0.99),
            pct(without, 1.0),
            pct(with, 1.0)
        );
    }
}
