//! Engine benchmarks (not tests): fast-path routing cost per I/O, checkpoint cost against
//! disk size, and COW cost per granularity. Run with `cargo bench --bench engine`.

use futures::executor::block_on;
use spdk_replication::engine::testing::{MemBuf, MemDisk, NullDisk};
use spdk_replication::engine::{
    AllocState, DirtyMap, IngressWritePlan, Primary, PrimaryConfig, Secondary, TopWritePlan,
};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: u32 = 512;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Nanoseconds per call of `f`, best of five rounds of `iters`.
fn ns_per_op(iters: u64, mut f: impl FnMut(u64)) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn null_secondary(disk_bytes: u64, gran: u64) -> Secondary<Arc<NullDisk>> {
    let n = disk_bytes / u64::from(BS);
    let d = || Arc::new(NullDisk::new(BS, n));
    let s = Secondary::new(d(), d(), d(), gran).unwrap();
    block_on(s.start(None)).unwrap();
    s
}

fn routing() {
    println!("== fast-path routing cost per I/O (4 KiB requests, 64 GiB disk, 512 B blocks) ==");
    let s = null_secondary(64 * GIB, 64 * 1024);
    let blocks = s.geometry().num_blocks;
    let offsets: Vec<u64> = {
        let mut r = Rng(0x9E3779B97F4A7C15);
        (0..4096).map(|_| (r.next() % (blocks - 8)) & !7).collect()
    };
    let off = |i: u64| offsets[(i % 4096) as usize];
    let iters = 2_000_000;

    let t = ns_per_op(iters, |i| {
        let ok = s.gate().try_enter_raw();
        let segs = s.plan_top_read(off(i), 8).unwrap();
        black_box(segs.count());
        if ok {
            s.gate().exit();
        }
    });
    println!("top read, overlays empty (gate + plan):        {t:6.1} ns");

    // Dirty a quarter of the disk's 4 KiB blocks in active and copy every cluster to hidden
    // touched by the sample, so reads hit mixed maps and ingress writes need no copy.
    for (k, &o) in offsets.iter().enumerate() {
        if k % 4 == 0 {
            s.mark_active(o, 8, AllocState::Data);
        }
        block_on(s.copy_before_write(s.geometry().cluster_of(o))).unwrap();
    }
    let t = ns_per_op(iters, |i| {
        black_box(s.plan_top_read(off(i), 8).unwrap().count());
    });
    println!("top read, mixed active/hidden maps (plan):     {t:6.1} ns");
    let t = ns_per_op(iters, |i| {
        let ok = s.gate().try_enter_raw();
        assert_eq!(s.plan_ingress_write(off(i), 8), IngressWritePlan::Direct);
        if ok {
            s.gate().exit();
        }
    });
    println!("ingress write, COW done (gate + plan):         {t:6.1} ns");
    let t = ns_per_op(iters, |i| {
        let ok = s.gate().try_enter_raw();
        assert_eq!(s.plan_top_write(off(i), 8), TopWritePlan::Active);
        s.mark_active(off(i), 8, AllocState::Data);
        if ok {
            s.gate().exit();
        }
    });
    println!("top write (gate + plan + mark active):         {t:6.1} ns");

    let d = || Arc::new(NullDisk::new(BS, 1024));
    let p = Primary::new(d(), d(), PrimaryConfig::default()).unwrap();
    p.start(None).unwrap();
    let t = ns_per_op(iters, |_| {
        black_box(p.plan_write());
    });
    println!("primary write (plan):                          {t:6.1} ns");
}

/// The gate's enter and exit on two reactors at once (issue 9, item 6), next to what the
/// gate did before its count was sharded: both threads adding to one shared counter.
fn gate_two_threads() {
    println!("== the I/O gate on two threads at once (ns per enter+exit, per thread) ==");
    let iters = 5_000_000;
    let per_thread = |f: &(dyn Fn() + Sync)| -> f64 {
        let t = Instant::now();
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    for _ in 0..iters {
                        f();
                    }
                });
            }
        });
        t.elapsed().as_nanos() as f64 / iters as f64
    };
    let best = |f: &(dyn Fn() + Sync)| (0..5).map(|_| per_thread(f)).fold(f64::INFINITY, f64::min);
    let shared = std::sync::atomic::AtomicU64::new(0);
    let one_line = best(&|| {
        use std::sync::atomic::Ordering::SeqCst;
        shared.fetch_add(1, SeqCst);
        black_box(&shared);
        shared.fetch_sub(1, SeqCst);
    });
    let s = null_secondary(64 * MIB, 64 * 1024);
    let gate = best(&|| {
        if s.gate().try_enter_raw() {
            s.gate().exit();
        }
    });
    println!("one shared counter (the gate before):          {one_line:6.1} ns");
    println!("the gate (a slot per thread):                  {gate:6.1} ns");
    println!("gate / shared counter: {:.2}", gate / one_line);
}

/// Median checkpoint time with `dirty` clusters dirtied in both overlays before each one.
fn checkpoint_time(disk_bytes: u64, dirty: u64) -> Duration {
    let gran = 64 * 1024;
    let s = null_secondary(disk_bytes, gran);
    let clusters = s.geometry().num_clusters();
    let stride = clusters / dirty;
    let cb = s.geometry().cluster_blocks;
    let mut samples: Vec<Duration> = (0..201)
        .map(|_| {
            for k in 0..dirty {
                let c = k * stride;
                block_on(s.copy_before_write(c)).unwrap();
                s.mark_active(c * cb, 8, AllocState::Data);
            }
            // (Counting here would scan the whole map and time a cold cache.)
            let t = Instant::now();
            block_on(s.checkpoint()).unwrap();
            t.elapsed()
        })
        .collect();
    assert_eq!(s.allocated(), (0, 0));
    samples.sort();
    samples[samples.len() / 2]
}

fn checkpoint() {
    println!("== checkpoint time, same dirty clusters (256 in each overlay) ==");
    let small = checkpoint_time(64 * MIB, 256);
    let large = checkpoint_time(64 * GIB, 256);
    println!("64 MiB disk: {:8.0} ns", small.as_nanos());
    println!("64 GiB disk: {:8.0} ns", large.as_nanos());
    println!(
        "checkpoint ratio 64 GiB / 64 MiB: {:.2} (target < 1.5)",
        large.as_secs_f64() / small.as_secs_f64()
    );
}

/// COW cost per ingress write by granularity, on RAM disks (copying is all memory traffic,
/// so this shows the bytes a granularity wastes; per-I/O device latency is the SPDK bench's).
fn cow_granularity() {
    println!("== COW per ingress write after a checkpoint, 64 MiB disk, RAM devices ==");
    println!("granularity   4K-random: ns/write  copied/write   128K-seq: ns/write  copied/write");
    for gran in [4096u64, 16 * 1024, 64 * 1024, 256 * 1024] {
        let n = 64 * MIB / u64::from(BS);
        let d = || {
            let disk = MemDisk::new(BS, n);
            disk.fill(0); // fault the pages in before timing
            Arc::new(disk)
        };
        let s = Secondary::new(d(), d(), d(), gran).unwrap();
        block_on(s.start(None)).unwrap();
        let run = |len: u64, random: bool| {
            block_on(s.checkpoint()).unwrap();
            let before = s.counters().cow_bytes;
            let mut r = Rng(42);
            let count = if random { 256 } else { 16 * MIB / len };
            let buf = MemBuf::filled(len as usize, 0x22);
            let t = Instant::now();
            for k in 0..count {
                let lba = if random {
                    (r.next() % (n - len / 512)) & !(len / 512 - 1)
                } else {
                    k * len / 512
                };
                block_on(s.ingress_write(lba, buf.clone())).unwrap();
            }
            let ns = t.elapsed().as_nanos() as f64 / count as f64;
            (ns, (s.counters().cow_bytes - before) / count)
        };
        let (rn, rb) = run(4096, true);
        let (sn, sb) = run(128 * 1024, false);
        println!(
            "{:>8} KiB   {rn:>18.0}  {rb:>12}   {sn:>17.0}  {sb:>12}",
            gran / 1024
        );
    }
}

/// The primary's dirty map per `sync_granularity` on a 64 GiB disk of 4 KiB blocks: cost
/// of marking a random 4 KiB write (link broken), of counting the map (every status
/// call), of finding the dirty regions for a resync after 10,000 scattered writes, and
/// the bytes such a resync copies per scattered write.
fn sync_granularity() {
    println!("\nsync granularity (64 GiB disk, 4 KiB blocks, random 4 KiB writes):");
    println!("granularity  map KiB  ns/mark  count us  scan 10k dirty us  copied/write");
    let blocks = 64 * GIB / 4096;
    for g in [4096u64, 16384, 65536, 262_144, 1 << 20] {
        let m = DirtyMap::new(blocks, g / 4096);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mark = ns_per_op(1_000_000, |_| m.mark_range(rng.next() % blocks, 1));
        let count = ns_per_op(20, |_| {
            black_box(m.count());
        }) / 1000.0;
        m.clear_all();
        for _ in 0..10_000 {
            m.mark_range(rng.next() % blocks, 1);
        }
        let scan = ns_per_op(20, |_| {
            black_box(m.iter().count());
        }) / 1000.0;
        println!(
            "{:>11}  {:>7}  {:>7.1}  {:>8.1}  {:>17.1}  {:>12}",
            g,
            m.regions().div_ceil(64) * 8 / 1024,
            mark,
            count,
            scan,
            g
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "sync") {
        return sync_granularity();
    }
    // `cargo bench` passes --bench; a plain run (cargo test --benches) does nothing heavy.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    routing();
    gate_two_threads();
    checkpoint();
    cow_granularity();
}
