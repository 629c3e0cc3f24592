//! The failover merge (issue 9 item 3; a benchmark, not a test). Run with
//! `cargo bench --bench merge`; `BENCH_ROUNDS` (3), `MERGE_MIB` (1024: the overlay bytes).
//!
//! A native secondary on one reactor (core 0) over RAM disks, and over the same behind
//! `bdev_delay` (20 µs per read and write, `MERGE_DELAY_US`: an NVMe SSD's order, where
//! requests in flight matter), COW granularity 16 KiB:
//! half of the overlay bytes in hidden (the primary's writes over the ingress since the
//! checkpoint, copied before write) and half in active (the SVM's writes through the top).
//! `bdev_replication_stop {"failover": true}` is timed to stage `done`, against a raw copy
//! of the same bytes between the same devices (hidden -> base, active -> base) on the
//! same reactor, with the merge's request size and depth. Target >= 0.8x. Then both
//! under SVM write load: 4 KiB random writes at QD32 from an NVMe/TCP initiator on the
//! top (core 1) through the raw copy and the whole merge.

mod common;

use common::{BS, export, free_port, median_ci, median_spread, ok, raw_copy, rounds, status};
use serde_json::json;
use spdk_replication::native::app::NativeNode;
use spdk_replication::native::node::BlockOp;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLUSTER: u64 = 16 * 1024;
/// What the merge keeps in flight at 16 KiB clusters (1 MiB, at most 32 requests).
const DEPTH: usize = 32;
const TOP_NQN: &str = "nqn.2016-06.io.spdk:svm0";

fn mib() -> u64 {
    std::env::var("MERGE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024)
}

/// Writes `byte` over blocks `range` of `bdev` in 1 MiB requests, on the app reactor.
fn fill(n: &NativeNode, bdev: &str, range: std::ops::Range<u64>, byte: u8) {
    let bdev = bdev.to_owned();
    n.with_app(move |app| async move {
        let ex = app.exported(&bdev).expect("bdev");
        let per = (1 << 20) / BS;
        for lba in range.step_by(per as usize) {
            let data = vec![byte; (1 << 20) as usize];
            ex.run(BlockOp::Write { lba, data }).await.expect("fill");
        }
    })
    .expect("app");
}

/// A fresh secondary with `blocks` blocks of overlay data (hidden: the first half of the
/// disk, active: the second), in stage `running`.
fn armed(n: &NativeNode, blocks: u64, dev: &dyn Fn(&str) -> String) {
    ok(
        n,
        "bdev_replication_create",
        json!({"name": "svm0", "mode": "secondary", "base_bdev": dev("base"),
               "hidden_bdev": dev("hidden"), "active_bdev": dev("active"),
               "cow_granularity": CLUSTER}),
    );
    ok(
        n,
        "bdev_replication_start",
        json!({"name": "svm0", "mode": "secondary"}),
    );
    fill(n, "svm0_ingress", 0..blocks / 2, 0x22);
    fill(n, "svm0", blocks / 2..blocks, 0x33);
    let st = status(n, "svm0");
    assert_eq!(
        st["allocated"]["hidden_clusters"].as_u64().unwrap() * CLUSTER / BS
            + st["allocated"]["active_blocks"].as_u64().unwrap(),
        blocks,
        "{st}"
    );
}

/// Fails over and waits for `done`: seconds.
fn merge(n: &NativeNode) -> f64 {
    let t = Instant::now();
    ok(
        n,
        "bdev_replication_stop",
        json!({"name": "svm0", "failover": true}),
    );
    loop {
        let st = status(n, "svm0");
        match st["stage"].as_str() {
            Some("done") => return t.elapsed().as_secs_f64(),
            Some("failover") => std::thread::sleep(Duration::from_millis(2)),
            _ => panic!("merge failed: {st}"),
        }
    }
}

/// 4 KiB random writes at QD32 on the top until `stop`, counted in `ios`.
fn svm_load(port: u16, blocks: u64, stop: &AtomicBool, ios: &AtomicU64) {
    let c = common::connect(port, TOP_NQN);
    let c = &c;
    futures::executor::block_on(futures::future::join_all((0..32u64).map(|q| async move {
        let mut rng = common::Rng(0x5151_0000 + q);
        let data = bytes::Bytes::from(vec![0x44u8; BS as usize]);
        while !stop.load(Ordering::Relaxed) {
            c.write(1, rng.next() % blocks, data.clone())
                .await
                .expect("SVM write");
            ios.fetch_add(1, Ordering::Relaxed);
        }
    })));
}

/// Runs `f` (which returns its own seconds) and the SVM IOPS meanwhile.
fn counted(ios: &AtomicU64, f: impl FnOnce() -> f64) -> (f64, f64) {
    let before = ios.load(Ordering::Relaxed);
    let secs = f();
    (secs, (ios.load(Ordering::Relaxed) - before) as f64 / secs)
}

fn main() {
    let blocks = mib() * 1024 * 1024 / BS;
    let n = NativeNode::start(&[0], ".".into()).unwrap();
    for b in ["base", "hidden", "active"] {
        ok(
            &n,
            "bdev_malloc_create",
            json!({"name": b, "num_blocks": blocks, "block_size": BS}),
        );
    }
    ok(&n, "nvmf_create_transport", json!({"trtype": "TCP"}));
    let port = free_port();
    // First-touch faults of every page out of the figures.
    for b in ["base", "hidden", "active"] {
        fill(&n, b, 0..blocks, 0x11);
    }
    println!(
        "failover merge of {} MiB of overlay data (16 KiB clusters, half hidden, half active) \
         vs a raw copy of the same bytes, median of {}:",
        mib(),
        rounds()
    );
    let delays: Vec<u64> = match std::env::var("MERGE_DELAY_US")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(d) => vec![d],
        None => vec![0, 20],
    };
    for delay in delays {
        if delay > 0 {
            for b in ["base", "hidden", "active"] {
                ok(
                    &n,
                    "bdev_delay_create",
                    json!({"base_bdev_name": b, "name": format!("d{delay}_{b}"),
                           "avg_read_latency": delay, "p99_read_latency": delay,
                           "avg_write_latency": delay, "p99_write_latency": delay}),
                );
            }
        }
        let dev = move |b: &str| {
            if delay > 0 {
                format!("d{delay}_{b}")
            } else {
                b.to_owned()
            }
        };
        let raw = || {
            raw_copy(
                &n,
                &dev("hidden"),
                &dev("base"),
                0..blocks / 2,
                CLUSTER,
                DEPTH,
            ) + raw_copy(
                &n,
                &dev("active"),
                &dev("base"),
                blocks / 2..blocks,
                CLUSTER,
                DEPTH,
            )
        };
        println!(
            "  {}:",
            if delay > 0 {
                format!("bdev_delay {delay} us over RAM")
            } else {
                "RAM disks".to_owned()
            }
        );
        measure(&n, blocks, port, &dev, &raw);
    }
}

fn measure(
    n: &NativeNode,
    blocks: u64,
    port: u16,
    dev: &dyn Fn(&str) -> String,
    raw: &dyn Fn() -> f64,
) {
    let mibps = |s: f64| (blocks * BS) as f64 / s / (1024.0 * 1024.0);
    for load in [false, true] {
        let (mut ratios, mut figs) = (Vec::new(), Vec::new());
        for _ in 0..rounds() {
            let (raw_s, secs, iops) = if load {
                armed(n, blocks, dev);
                export(n, TOP_NQN, "svm0", port);
                let (stop, ios) = (AtomicBool::new(false), AtomicU64::new(0));
                let r = std::thread::scope(|sc| {
                    sc.spawn(|| svm_load(port, blocks, &stop, &ios));
                    // The same load through the raw copy and the whole merge.
                    std::thread::sleep(Duration::from_millis(200));
                    let (raw_s, raw_iops) = counted(&ios, raw);
                    let (s, merge_iops) = counted(&ios, || merge(n));
                    stop.store(true, Ordering::Relaxed);
                    (raw_s, s, (raw_iops, merge_iops))
                });
                ok(n, "nvmf_delete_subsystem", json!({"nqn": TOP_NQN}));
                r
            } else {
                let raw_s = raw();
                armed(n, blocks, dev);
                (raw_s, merge(n), (0.0, 0.0))
            };
            ok(n, "bdev_replication_delete", json!({"name": "svm0"}));
            ratios.push(raw_s / secs);
            figs.push((secs, mibps(secs), mibps(raw_s), iops));
        }
        let (r, spread) = median_spread(ratios.clone());
        let ci = median_ci(ratios.clone())
            .map(|(lo, hi)| format!(", median's 95% CI {lo:.3}-{hi:.3}"))
            .unwrap_or_default();
        let i = ratios.iter().position(|x| *x == r).unwrap_or(0);
        let (secs, m, rw, iops) = figs[i];
        println!(
            "    {}: merge/raw {r:.3}x (target >= 0.8, spread {:.1}%{ci}): done in {secs:.2} s, \
             {m:.0} vs {rw:.0} MiB/s{}",
            if load {
                "SVM writes QD32"
            } else {
                "no load        "
            },
            spread * 100.0,
            if load {
                format!(
                    "; SVM IOPS {:.0} during the raw copy, {:.0} during the merge",
                    iops.0, iops.1
                )
            } else {
                String::new()
            }
        );
    }
}
