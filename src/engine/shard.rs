//! Counters written on every I/O, one cache line per thread.
//!
//! A counter that every reactor bumps per I/O bounces its cache line between cores; with one
//! slot per thread each reactor writes only its own line, and readers (the gate's drain, a
//! status RPC) add the slots up. A request may end on another thread than it began on, so a
//! slot can go negative; only the sum means anything.
//!
//! A slot has one writer, so a relaxed add (a statistic) is a plain load and store: a
//! locked add waits for the core's store buffer to drain, and on the primary it came right
//! after the local leg's 4 KiB copy, where it was the costliest instruction of the write
//! path (~9 % of the reactor's samples at QD32 over NVMe/TCP). Ordered adds (the gate's)
//! stay locked: their ordering against the gate's flag is what a drain relies on.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Slots of their own per counter; threads beyond this share one more slot, with locked
/// adds (still correct, just a shared line).
pub const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's slot, assigned on first use: the first [`SHARDS`] threads (reactors, in
/// practice) each own one, later threads share slot `SHARDS`.
pub fn this_shard() -> usize {
    SHARD.with(|s| {
        let cur = s.get();
        if cur != usize::MAX {
            return cur;
        }
        let new = NEXT_SHARD.fetch_add(1, Ordering::Relaxed).min(SHARDS);
        s.set(new);
        new
    })
}

pub struct ShardedCount {
    slots: Box<[CachePadded<AtomicI64>; SHARDS + 1]>,
}

impl Default for ShardedCount {
    fn default() -> Self {
        Self {
            slots: Box::new(std::array::from_fn(|_| CachePadded::new(AtomicI64::new(0)))),
        }
    }
}

impl ShardedCount {
    pub fn add(&self, n: i64, order: Ordering) {
        let i = this_shard();
        let slot = &self.slots[i];
        if i < SHARDS && order == Ordering::Relaxed {
            // This thread is the slot's only writer.
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            slot.fetch_add(n, order);
        }
    }

    /// The total; exact once writers are quiet, and with `SeqCst` on both sides never below
    /// the number of adds that are ordered before the read and not yet taken back.
    pub fn sum(&self, order: Ordering) -> i64 {
        // Wrapping, as the slots' own atomic adds are: no overflow panic in debug builds.
        self.slots
            .iter()
            .fold(0i64, |t, s| t.wrapping_add(s.load(order)))
    }

    /// Address of a slot (for tests of the layout).
    #[cfg(test)]
    fn slot_addr(&self, shard: usize) -> usize {
        std::ptr::from_ref(&*self.slots[shard]) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    #[test]
    fn threads_write_different_cache_lines() {
        let c = ShardedCount::default();
        // 64-byte lines, and adjacent-line prefetch pairs them: 128 apart at least.
        for i in 0..SHARDS {
            for j in 0..i {
                let (a, b) = (c.slot_addr(i), c.slot_addr(j));
                assert!(a.abs_diff(b) >= 128, "slots {i} and {j}: {a:#x} vs {b:#x}");
            }
        }
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| (this_shard(), this_shard())).join().unwrap();
            (a, s.spawn(this_shard).join().unwrap())
        });
        assert_eq!(a.0, a.1, "a thread keeps its slot");
        // Other tests' threads take slots meanwhile; the two threads share one only once
        // SHARDS threads have taken theirs.
        if NEXT_SHARD.load(Ordering::Relaxed) < SHARDS {
            assert_ne!(a.0, b, "a new thread gets a slot of its own");
        }
    }

    #[test]
    fn relaxed_adds_of_more_threads_than_slots_sum_exactly() {
        // Threads with slots of their own add without a locked instruction; those beyond
        // SHARDS share the last slot and must not lose each other's adds.
        let c = ShardedCount::default();
        std::thread::scope(|s| {
            for _ in 0..(SHARDS + 8) {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        c.add(1, Ordering::Relaxed);
                    }
                    c.add(-5, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(c.sum(Ordering::Relaxed), (SHARDS as i64 + 8) * 19_995);
        assert!(
            NEXT_SHARD.load(Ordering::Relaxed) > SHARDS,
            "some threads shared a slot"
        );
    }

    #[test]
    fn adds_and_takes_back_on_other_threads_sum_exactly() {
        let c = ShardedCount::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        c.add(1, SeqCst);
                    }
                });
            }
        });
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..15_000 {
                        c.add(-1, SeqCst);
                    }
                });
            }
        });
        c.add(-5_000, SeqCst);
        assert_eq!(c.sum(SeqCst), 5_000);
    }
}
