//! The primary's background sync (issue 10's benchmark, not a test). Run with
//! `cargo bench --bench sync`; `BENCH_ROUNDS` (5), `BENCH_SECS` (2), `SYNC_MIB` (256).
//!
//! Two native nodes in one process, one reactor each (the secondary on core 0, the primary
//! on core 1), the primary's remote leg the secondary's ingress over loopback NVMe/TCP
//! through the project's initiator (behind an error bdev, to break the link on demand):
//!
//! 1. **Sync throughput vs a raw copy** of the same bytes over the same path: the primary's
//!    full sync of its whole local disk against a plain copy loop on the same reactor
//!    (read local, write remote, the sync's region size and depth, no locks, no map).
//!    Target >= 0.8x.
//! 2. **Guest writes while a sync runs**: 4 KiB random writes at QD32 from an NVMe/TCP
//!    initiator on the primary's export, with and without a full sync running (restarted
//!    whenever it completes), and the sync's own throughput under that load.
//! 3. **Incremental vs full resync** for dirty fractions of 1 %, 10 % and 50 %: the link is
//!    broken, one 4 KiB write lands in each of that many regions, the link comes back; bytes
//!    copied and time of `resync` against `resync {"full": true}`.

mod common;

use common::{BS, export, free_port, median_spread, nvmf_run, ok, raw_copy, rounds, status};
use serde_json::json;
use spdk_replication::native::app::NativeNode;
use spdk_replication::native::node::BlockOp;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The default `sync_granularity`, and the depth the sync keeps at it (1 MiB in flight).
const REGION: u64 = 64 * 1024;
const DEPTH: usize = 16;
const ING_NQN: &str = "nqn.2016-06.io.spdk:svm0-ingress";
const PRI_NQN: &str = "nqn.2016-06.io.spdk:pvm0";

fn mib() -> u64 {
    std::env::var("SYNC_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

fn bench_secs() -> f64 {
    std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

fn sync_bytes(n: &NativeNode) -> u64 {
    status(n, "pvm0")["counters"]["sync_bytes"]
        .as_u64()
        .unwrap_or(0)
}

/// Polls until the sync ends; panics if it stopped short of `in_sync`.
fn wait_in_sync(n: &NativeNode) {
    loop {
        let st = status(n, "pvm0");
        match st["sync"]["state"].as_str() {
            Some("syncing") => std::thread::sleep(Duration::from_millis(2)),
            Some("in_sync") => return,
            _ => panic!("sync stopped: {st}"),
        }
    }
}

/// One 4 KiB write of `byte` at `lba` through the primary (on its reactor).
fn write_block(n: &NativeNode, lba: u64, byte: u8) {
    n.with_app(move |app| async move {
        let ex = app.exported("pvm0").expect("pvm0");
        ex.run(BlockOp::Write {
            lba,
            data: vec![byte; BS as usize],
        })
        .await
        .expect("write");
    })
    .expect("app");
}

fn main() {
    let blocks = mib() * 1024 * 1024 / BS;
    let regions = blocks * BS / REGION;
    let d = Duration::from_secs_f64(bench_secs());
    let sec = common::secondary_node(0, blocks);
    let (ing_p, pri_p) = (free_port(), free_port());
    export(&sec, ING_NQN, "svm0_ingress", ing_p);
    let pri = common::primary_node(1, blocks, ing_p, ING_NQN);
    ok(&pri, "bdev_error_create", json!({"base_name": "svm0n1"}));
    ok(
        &pri,
        "bdev_replication_create",
        json!({"name": "pvm0", "mode": "primary", "local_bdev": "local",
               "remote_bdev": "EE_svm0n1", "sync_granularity": REGION}),
    );
    export(&pri, PRI_NQN, "pvm0", pri_p);

    // Every page of every malloc touched once (first-touch faults out of the figures); the
    // local disk gets non-zero content.
    ok(&pri, "bdev_replication_start", json!({"name": "pvm0"}));
    let filled = pri.with_app(move |app| async move {
        let local = app.exported("local").expect("local");
        for lba in (0..blocks).step_by((REGION / BS) as usize) {
            let data = vec![0xC3; REGION as usize];
            local.run(BlockOp::Write { lba, data }).await.expect("fill");
        }
    });
    assert!(filled.is_some());
    raw_copy(&pri, "local", "EE_svm0n1", 0..blocks, REGION, DEPTH);
    let bytes = (blocks * BS) as f64;
    let mibps = |s: f64| bytes / s / (1024.0 * 1024.0);

    println!(
        "1. full sync of {} MiB over NVMe/TCP ({} KiB regions, {DEPTH} in flight) vs a raw copy, \
         median of {}:",
        mib(),
        REGION / 1024,
        rounds()
    );
    let (mut ratios, mut figs) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        let raw = raw_copy(&pri, "local", "EE_svm0n1", 0..blocks, REGION, DEPTH);
        let b0 = sync_bytes(&pri);
        let t = Instant::now();
        ok(
            &pri,
            "bdev_replication_resync",
            json!({"name": "pvm0", "full": true}),
        );
        wait_in_sync(&pri);
        let s = t.elapsed().as_secs_f64();
        assert_eq!(
            sync_bytes(&pri) - b0,
            blocks * BS,
            "a full sync copies the disk"
        );
        ratios.push(raw / s);
        figs.push((mibps(s), mibps(raw)));
    }
    let (r, spread) = median_spread(ratios.clone());
    let i = ratios.iter().position(|x| *x == r).unwrap_or(0);
    println!(
        "   sync/raw throughput {r:.3}x (target >= 0.8, spread {:.1}%): {:.0} vs {:.0} MiB/s",
        spread * 100.0,
        figs[i].0,
        figs[i].1
    );

    println!(
        "2. guest 4 KiB random writes, QD32 over NVMe/TCP, {:.1} s runs, median of {}:",
        d.as_secs_f64(),
        rounds()
    );
    let (mut ratios, mut figs) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        let (idle, _) = nvmf_run(pri_p, PRI_NQN, blocks, true, 32, d);
        let stop = AtomicBool::new(false);
        let b0 = sync_bytes(&pri);
        let t = Instant::now();
        let (busy, _) = std::thread::scope(|sc| {
            sc.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if status(&pri, "pvm0")["sync"]["state"] == "in_sync" {
                        ok(
                            &pri,
                            "bdev_replication_resync",
                            json!({"name": "pvm0", "full": true}),
                        );
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            });
            let r = nvmf_run(pri_p, PRI_NQN, blocks, true, 32, d);
            stop.store(true, Ordering::Relaxed);
            r
        });
        let synced = (sync_bytes(&pri) - b0) as f64 / t.elapsed().as_secs_f64();
        wait_in_sync(&pri);
        ratios.push(busy / idle);
        figs.push((busy, idle, synced / (1024.0 * 1024.0)));
    }
    let (r, spread) = median_spread(ratios.clone());
    let i = ratios.iter().position(|x| *x == r).unwrap_or(0);
    println!(
        "   during a sync {r:.3}x of idle (spread {:.1}%): {:.0} vs {:.0} IOPS; the sync \
         meanwhile {:.0} MiB/s",
        spread * 100.0,
        figs[i].0,
        figs[i].1,
        figs[i].2
    );

    println!("3. incremental vs full resync after a link loss, 4 KiB writes in scattered regions:");
    for pct in [1u64, 10, 50] {
        let dirty = regions * pct / 100;
        ok(
            &pri,
            "bdev_error_inject_error",
            json!({"name": "EE_svm0n1", "io_type": "write", "error_type": "failure",
                   "num": 1}),
        );
        // Every (100/pct)-th region: evenly scattered, each exactly once.
        let step = regions / dirty.max(1);
        for k in 0..dirty {
            write_block(&pri, k * step * (REGION / BS), k as u8);
        }
        let st = status(&pri, "pvm0");
        assert_eq!(st["sync"]["state"], "out_of_sync", "{st}");
        assert_eq!(st["sync"]["dirty_bytes"], dirty * REGION, "{st}");
        ok(
            &pri,
            "bdev_error_inject_error",
            json!({"name": "EE_svm0n1", "io_type": "write", "error_type": "clear"}),
        );
        let run = |full: bool| {
            let b0 = sync_bytes(&pri);
            let t = Instant::now();
            ok(
                &pri,
                "bdev_replication_resync",
                json!({"name": "pvm0", "full": full}),
            );
            wait_in_sync(&pri);
            (sync_bytes(&pri) - b0, t.elapsed().as_secs_f64())
        };
        let (ib, is) = run(false);
        let (fb, fs) = run(true);
        assert_eq!(
            ib,
            dirty * REGION,
            "an incremental resync copies the dirty regions"
        );
        println!(
            "   {pct:>2}% dirty ({dirty} of {regions} regions): incremental {:.1} MiB in {:.3} s, \
             full {:.1} MiB in {:.3} s ({:.3}x the bytes, {:.3}x the time)",
            ib as f64 / 1048576.0,
            is,
            fb as f64 / 1048576.0,
            fs,
            ib as f64 / fb as f64,
            is / fs
        );
    }
}
