//! Native host benchmarks (not tests). Run with `cargo bench --bench native`.
//!
//! 1. Bdev level, no network: the cost per 4 KiB I/O of each replication face (primary over
//!    two RAM disks, secondary top and ingress in `running`) against a plain RAM disk, on
//!    the same reactor, as ratios of IOPS measured in the same run.
//! 2. Over loopback NVMe/TCP with the project's initiator, QD1 and QD32 4 KiB random
//!    read/write: the primary (whose remote leg is a second native node's ingress), the
//!    secondary's top and ingress, against a plain RAM disk exported by the same target.
//!    (With SPDK installed, `benches/bdevperf/run.py` compares against the SPDK host.)
//! 3. Copy-before-write: what an ingress write whose cluster is armed costs over the same
//!    write once its cluster is copied, per `cow_granularity`, at QD1 on one reactor.

mod common;

use common::{BS, Rng, export, free_port, median_spread, nvmf_run, ok, rounds, secs};
use serde_json::json;
use spdk_replication::native::app::NativeNode;
use spdk_replication::native::node::BlockOp;
use std::time::{Duration, Instant};

const BLOCKS: u64 = 16384;

/// IOPS of a QD1 loop of 4 KiB random reads or writes on bdev `name`, on the app reactor.
fn bdev_iops(n: &NativeNode, name: &str, write: bool, d: Duration) -> f64 {
    let name = name.to_owned();
    n.with_app(move |app| async move {
        let ex = app.exported(&name).expect("bdev");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let t = Instant::now();
        let mut ios = 0u64;
        while t.elapsed() < d {
            for _ in 0..64 {
                let lba = rng.next() % BLOCKS;
                let op = if write {
                    BlockOp::Write {
                        lba,
                        data: vec![0x5A; BS as usize],
                    }
                } else {
                    BlockOp::Read { lba, nblocks: 1 }
                };
                ex.run(op).await.expect("I/O");
            }
            ios += 64;
        }
        ios as f64 / t.elapsed().as_secs_f64()
    })
    .expect("app")
}

/// One batch's figures, µs: an armed write, the same write once copied, and the two I/Os
/// a copy makes (a cluster read, then written, on a plain RAM disk of the same reactor).
struct CowBatch {
    armed: f64,
    copied: f64,
    io: f64,
}

/// Per batch: time per 4 KiB ingress write at QD1, each to another random cluster of
/// `name`, first with every cluster armed (right after a checkpoint), then the same writes
/// with their clusters copied; then a read and a write of one whole cluster on `io_disk`
/// at each of those clusters, the device work one copy needs.
fn cow_cost(n: &NativeNode, name: &str, io_disk: &str, gran: u64, batches: usize) -> Vec<CowBatch> {
    let per_cluster = gran / BS;
    let clusters = BLOCKS / per_cluster;
    let mut out = Vec::new();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..batches {
        ok(n, "bdev_replication_checkpoint", json!({"name": name}));
        // Distinct clusters, so every write of the first pass copies one.
        let mut picked: Vec<u64> = (0..256).map(|_| rng.next() % clusters).collect();
        picked.sort_unstable();
        picked.dedup();
        let lbas: Vec<u64> = picked
            .iter()
            .map(|c| c * per_cluster + rng.next() % per_cluster)
            .collect();
        let ing = format!("{name}_ingress");
        let io_disk = io_disk.to_owned();
        let batch = n
            .with_app(move |app| async move {
                let ex = app.exported(&ing).expect("ingress bdev");
                let pass = || {
                    let ex = ex.clone();
                    let lbas = lbas.clone();
                    async move {
                        let t = Instant::now();
                        for &lba in &lbas {
                            let data = vec![0x5A; BS as usize];
                            ex.run(BlockOp::Write { lba, data }).await.expect("I/O");
                        }
                        t.elapsed().as_secs_f64() * 1e6 / lbas.len() as f64
                    }
                };
                let armed = pass().await;
                let copied = pass().await;
                let disk = app.exported(&io_disk).expect("copy I/O disk");
                let t = Instant::now();
                for &c in &picked {
                    let lba = c * per_cluster;
                    let read = BlockOp::Read {
                        lba,
                        nblocks: per_cluster,
                    };
                    let data = disk.run(read).await.expect("I/O");
                    disk.run(BlockOp::Write { lba, data }).await.expect("I/O");
                }
                let io = t.elapsed().as_secs_f64() * 1e6 / picked.len() as f64;
                CowBatch { armed, copied, io }
            })
            .expect("app");
        out.push(batch);
    }
    out
}

fn cow_section(rounds: usize) {
    let n = NativeNode::start(&[0], ".".into()).unwrap();
    ok(
        &n,
        "bdev_malloc_create",
        json!({"name": "cow_io", "num_blocks": BLOCKS, "block_size": BS}),
    );
    println!(
        "copy-before-write, 4 KiB ingress writes at QD1, one reactor, RAM disks (median of {rounds} batches of 256; spread = (max-min)/median):"
    );
    println!(
        "  added = armed - copied; I/Os = a read and a write of one cluster on a RAM disk; fixed = added - I/Os"
    );
    println!(
        "  granularity   armed us/write   copied us/write   added us (spread)   I/Os us   fixed us (spread)"
    );
    for gran in [4096u64, 16 << 10, 64 << 10, 256 << 10] {
        let name = format!("cow{}k", gran >> 10);
        for b in ["base", "hidden", "active"] {
            ok(
                &n,
                "bdev_malloc_create",
                json!({"name": format!("{name}_{b}"), "num_blocks": BLOCKS, "block_size": BS}),
            );
        }
        ok(
            &n,
            "bdev_replication_create",
            json!({"name": name, "mode": "secondary", "base_bdev": format!("{name}_base"),
                   "hidden_bdev": format!("{name}_hidden"), "active_bdev": format!("{name}_active"),
                   "cow_granularity": gran}),
        );
        ok(
            &n,
            "bdev_replication_start",
            json!({"name": name, "mode": "secondary"}),
        );
        let b = cow_cost(&n, &name, "cow_io", gran, rounds);
        let med = |f: &dyn Fn(&CowBatch) -> f64| median_spread(b.iter().map(f).collect());
        let (a, _) = med(&|x| x.armed);
        let (c, _) = med(&|x| x.copied);
        let (added, added_sp) = med(&|x| x.armed - x.copied);
        let (io, _) = med(&|x| x.io);
        let (fixed, fixed_sp) = med(&|x| x.armed - x.copied - x.io);
        println!(
            "  {:>7} KiB   {a:>14.2}   {c:>15.2}   {added:>8.2} ({:>4.0}%)   {io:>7.2}   {fixed:>8.2} ({:>4.0}%)",
            gran >> 10,
            added_sp * 100.0,
            fixed_sp * 100.0
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--cow") {
        cow_section(rounds().max(5));
        return;
    }
    let d = Duration::from_secs_f64(secs());
    let sec = common::secondary_node(0, BLOCKS);
    ok(
        &sec,
        "bdev_malloc_create",
        json!({"name": "ram", "num_blocks": BLOCKS, "block_size": BS}),
    );
    let (ram_p, ing_p, top_p, pri_p, pram_p) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    export(&sec, "nqn.2016-06.io.spdk:ram", "ram", ram_p);
    export(
        &sec,
        "nqn.2016-06.io.spdk:svm0-ingress",
        "svm0_ingress",
        ing_p,
    );
    export(&sec, "nqn.2016-06.io.spdk:svm0", "svm0", top_p);
    let pri = common::primary_node(1, BLOCKS, ing_p, "nqn.2016-06.io.spdk:svm0-ingress");
    ok(
        &pri,
        "bdev_malloc_create",
        json!({"name": "pram", "num_blocks": BLOCKS, "block_size": BS}),
    );
    ok(
        &pri,
        "bdev_replication_create",
        json!({"name": "pvm0", "mode": "primary",
        "local_bdev": "local", "remote_bdev": "svm0n1"}),
    );
    export(&pri, "nqn.2016-06.io.spdk:pvm0", "pvm0", pri_p);
    export(&pri, "nqn.2016-06.io.spdk:pram", "pram", pram_p);
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

    println!(
        "bdev level (QD1 loop on one reactor, 4 KiB random, median of {} x {:.1} s):",
        rounds(),
        secs()
    );
    for (what, write) in [("randread", false), ("randwrite", true)] {
        for face in ["svm0", "svm0_ingress"] {
            let mut ratios = Vec::new();
            let mut base = Vec::new();
            for _ in 0..rounds() {
                let r = bdev_iops(&sec, "ram", write, d);
                let f = bdev_iops(&sec, face, write, d);
                base.push(r);
                ratios.push(f / r);
            }
            let (r, spread) = median_spread(ratios);
            let (b, _) = median_spread(base);
            println!(
                "  {face:>14} {what:9}: {r:.3}x malloc ({b:.0} IOPS), spread {:.1}%",
                spread * 100.0
            );
        }
    }

    println!(
        "NVMe/TCP loopback, the project's initiator, 4 KiB random (median of {}):",
        rounds()
    );
    let cases = [
        (
            "top",
            top_p,
            "nqn.2016-06.io.spdk:svm0",
            ram_p,
            "nqn.2016-06.io.spdk:ram",
        ),
        (
            "ingress",
            ing_p,
            "nqn.2016-06.io.spdk:svm0-ingress",
            ram_p,
            "nqn.2016-06.io.spdk:ram",
        ),
        (
            "primary",
            pri_p,
            "nqn.2016-06.io.spdk:pvm0",
            pram_p,
            "nqn.2016-06.io.spdk:pram",
        ),
    ];
    for qd in [1usize, 32] {
        for (what, write) in [("randread", false), ("randwrite", true)] {
            for (face, port, nqn, bport, bnqn) in cases {
                let mut ratios = Vec::new();
                let mut figs = Vec::new();
                for _ in 0..rounds() {
                    let (bi, bl) = nvmf_run(bport, bnqn, BLOCKS, write, qd, d);
                    let (fi, fl) = nvmf_run(port, nqn, BLOCKS, write, qd, d);
                    ratios.push(fi / bi);
                    figs.push((fi, fl, bi, bl));
                }
                let (r, spread) = median_spread(ratios.clone());
                let i = ratios.iter().position(|x| *x == r).unwrap_or(0);
                let (fi, fl, bi, bl) = figs[i];
                println!(
                    "  QD{qd:<2} {face:>7} {what:9}: {r:.3}x malloc export (spread {:.1}%): {fi:.0} vs {bi:.0} IOPS, {fl:.1} vs {bl:.1} us",
                    spread * 100.0
                );
            }
        }
    }
    drop((pri, sec));
    cow_section(rounds().max(5));
}
