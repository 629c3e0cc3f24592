//! Lock-free allocation map with an O(1) "empty everything".
//!
//! Each granule (a block for the active overlay, a COW cluster for the hidden one) has a
//! 2-bit [`AllocState`]. A 64-bit atomic word packs sixteen granules in its low half and, in
//! its high half, the *epoch* in which they were written; a word whose epoch is not the
//! map's current one reads as all unallocated. Emptying the map (a checkpoint) therefore just
//! bumps the epoch, whatever the disk size. General-purpose bit-vector crates offer neither
//! the epoch trick nor lock-free concurrent updates from several reactors, hence this type.

use crate::engine::shard::ShardedCount;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AllocState {
    Unallocated = 0,
    /// The overlay holds this granule's data.
    Data = 1,
    /// Allocated as zero (write_zeroes/unmap on top): reads as zeros, never falls through.
    Zero = 2,
}

impl AllocState {
    fn from_bits(b: u32) -> AllocState {
        match b & 3 {
            0 => AllocState::Unallocated,
            1 => AllocState::Data,
            _ => AllocState::Zero,
        }
    }
}

const PER_WORD: u64 = 16;

pub struct AllocMap {
    granules: u64,
    words: Box<[AtomicU64]>,
    epoch: AtomicU32,
    /// Granules allocated, kept by every setter, so a status does not scan the map (tens
    /// of milliseconds on the reactor per TiB of disk).
    allocated: ShardedCount,
    /// `allocated`'s sum at the last `clear_all`.
    cleared_at: AtomicI64,
}

impl std::fmt::Debug for AllocMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocMap")
            .field("granules", &self.granules)
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish()
    }
}

/// Replicates a 2-bit state over all sixteen slots of a word.
fn replicate(state: AllocState) -> u32 {
    (state as u32) * 0x5555_5555
}

impl AllocMap {
    pub fn new(granules: u64) -> Self {
        let words = (0..granules.div_ceil(PER_WORD))
            .map(|_| AtomicU64::new(0))
            .collect();
        AllocMap {
            granules,
            words,
            epoch: AtomicU32::new(0),
            allocated: ShardedCount::default(),
            cleared_at: AtomicI64::new(0),
        }
    }

    pub fn granules(&self) -> u64 {
        self.granules
    }

    fn word_bits(&self, wi: u64, epoch: u32) -> u32 {
        #[cfg(test)]
        tests::WORDS_READ.with(|n| n.set(n.get() + 1));
        let w = self.words[wi as usize].load(Ordering::Acquire);
        if (w >> 32) as u32 == epoch {
            w as u32
        } else {
            0
        }
    }

    fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    #[inline]
    pub fn get(&self, g: u64) -> AllocState {
        debug_assert!(g < self.granules);
        let bits = self.word_bits(g / PER_WORD, self.epoch());
        AllocState::from_bits(bits >> ((g % PER_WORD) * 2))
    }

    /// Sets `count` granules from `first` to `state`. Safe against concurrent setters of
    /// other granules sharing the same word.
    pub fn set_range(&self, first: u64, count: u64, state: AllocState) {
        debug_assert!(first + count <= self.granules);
        let epoch = self.epoch();
        let pattern = replicate(state);
        let mut g = first;
        let end = first + count;
        let mut delta = 0i64;
        while g < end {
            let wi = g / PER_WORD;
            let lo = g % PER_WORD;
            let hi = (end - wi * PER_WORD).min(PER_WORD);
            let mask = slot_mask(lo, hi);
            let word = &self.words[wi as usize];
            let mut cur = word.load(Ordering::Acquire);
            loop {
                let bits = if (cur >> 32) as u32 == epoch {
                    cur as u32
                } else {
                    0
                };
                let set = (bits & !mask) | (pattern & mask);
                let new = (u64::from(epoch) << 32) | u64::from(set);
                if new == cur {
                    break;
                }
                match word.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        delta += i64::from(allocated_slots(set)) - i64::from(allocated_slots(bits));
                        break;
                    }
                    Err(actual) => cur = actual,
                }
            }
            g = wi * PER_WORD + hi;
        }
        if delta != 0 {
            self.allocated.add(delta, Ordering::Relaxed);
        }
    }

    /// Empties the whole map in O(1). Callers quiesce I/O first (checkpoint); the rare
    /// epoch wrap-around falls back to a physical clear.
    pub fn clear_all(&self) {
        let next = self.epoch().wrapping_add(1);
        if next == 0 {
            for w in self.words.iter() {
                w.store(0, Ordering::Relaxed);
            }
        }
        self.cleared_at
            .store(self.allocated.sum(Ordering::Acquire), Ordering::Relaxed);
        self.epoch.store(next, Ordering::Release);
    }

    /// State at `g` and how many granules from `g` (at most `max`) share it.
    ///
    /// On every top read and ingress write: a word at a time, the first slot that differs
    /// from the state found by XOR with the state's pattern and a trailing-zero count.
    pub fn run(&self, g: u64, max: u64) -> (AllocState, u64) {
        let max = max.min(self.granules - g);
        let epoch = self.epoch();
        let mut wi = g / PER_WORD;
        let lo = g % PER_WORD;
        let bits = self.word_bits(wi, epoch) >> (lo * 2);
        let state = AllocState::from_bits(bits);
        let whole = replicate(state);
        // Slots past the word's end shift in as zeros: counted only up to PER_WORD - lo.
        let mut len = match bits ^ (whole >> (lo * 2)) {
            0 => PER_WORD - lo,
            d => return (state, u64::from(d.trailing_zeros() / 2).min(max)),
        };
        while len < max {
            wi += 1;
            match self.word_bits(wi, epoch) ^ whole {
                0 => len += PER_WORD,
                d => {
                    len += u64::from(d.trailing_zeros() / 2);
                    break;
                }
            }
        }
        (state, len.min(max))
    }

    /// First granule at or after `from` that is allocated (as data or zero).
    pub fn next_allocated(&self, from: u64) -> Option<u64> {
        let epoch = self.epoch();
        let mut wi = from / PER_WORD;
        let mut lo = from % PER_WORD;
        let nwords = self.words.len() as u64;
        while wi < nwords {
            let bits = self.word_bits(wi, epoch) & slot_mask(lo, PER_WORD);
            if bits != 0 {
                let g = wi * PER_WORD + u64::from(bits.trailing_zeros() / 2);
                return (g < self.granules).then_some(g);
            }
            wi += 1;
            lo = 0;
        }
        None
    }

    /// Whether any granule of `[first, first + count)` is allocated. Reads only that
    /// range's words: on the top's write path from the failover on, once per cluster.
    pub fn any_allocated(&self, first: u64, count: u64) -> bool {
        let end = first.saturating_add(count).min(self.granules);
        let epoch = self.epoch();
        let mut g = first;
        while g < end {
            let wi = g / PER_WORD;
            let hi = (end - wi * PER_WORD).min(PER_WORD);
            if self.word_bits(wi, epoch) & slot_mask(g % PER_WORD, hi) != 0 {
                return true;
            }
            g = (wi + 1) * PER_WORD;
        }
        false
    }

    /// Number of allocated granules, without a scan (for status): exact while no setter
    /// runs (a setter adds its change once it is done with the words).
    pub fn count_allocated(&self) -> u64 {
        let n = self
            .allocated
            .sum(Ordering::Acquire)
            .wrapping_sub(self.cleared_at.load(Ordering::Relaxed));
        u64::try_from(n).unwrap_or(0)
    }

    /// [`AllocMap::count_allocated`] by a scan of every word (tests).
    #[cfg(test)]
    fn scan_allocated(&self) -> u64 {
        let epoch = self.epoch();
        (0..self.words.len() as u64)
            .map(|wi| u64::from(allocated_slots(self.word_bits(wi, epoch))))
            .sum()
    }
}

/// Allocated slots of a word's bits: a slot is allocated if either of its two bits is set.
fn allocated_slots(b: u32) -> u32 {
    ((b | (b >> 1)) & 0x5555_5555).count_ones()
}

/// Bits of slots `lo..hi` of a word.
fn slot_mask(lo: u64, hi: u64) -> u32 {
    let span = |n: u64| {
        if n >= PER_WORD {
            u32::MAX
        } else {
            (1u32 << (n * 2)) - 1
        }
    };
    span(hi) & !span(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_run_and_clear() {
        let m = AllocMap::new(100);
        assert_eq!(m.get(5), AllocState::Unallocated);
        m.set_range(10, 30, AllocState::Data);
        m.set_range(20, 5, AllocState::Zero);
        assert_eq!(m.get(9), AllocState::Unallocated);
        assert_eq!(m.get(10), AllocState::Data);
        assert_eq!(m.get(22), AllocState::Zero);
        assert_eq!(m.run(0, 100), (AllocState::Unallocated, 10));
        assert_eq!(m.run(10, 100), (AllocState::Data, 10));
        assert_eq!(m.run(20, 100), (AllocState::Zero, 5));
        assert_eq!(m.run(25, 3), (AllocState::Data, 3));
        assert_eq!(m.run(40, 100), (AllocState::Unallocated, 60));
        assert_eq!(m.next_allocated(0), Some(10));
        assert_eq!(m.next_allocated(40), None);
        assert_eq!(m.count_allocated(), 30);
        assert!(m.any_allocated(0, 11));
        assert!(!m.any_allocated(0, 10));
        m.clear_all();
        assert_eq!(m.count_allocated(), 0);
        assert_eq!(m.get(10), AllocState::Unallocated);
        // A stale word is rewritten in the new epoch without resurrecting old bits.
        m.set_range(11, 1, AllocState::Data);
        assert_eq!(m.get(10), AllocState::Unallocated);
        assert_eq!(m.get(11), AllocState::Data);
        assert_eq!(m.count_allocated(), 1);
    }

    /// `run` against a slot-by-slot reading of `get`, over random maps.
    #[test]
    fn run_matches_slot_by_slot_model() {
        use proptest::prelude::*;
        let states = prop_oneof![
            Just(AllocState::Unallocated),
            Just(AllocState::Data),
            Just(AllocState::Zero)
        ];
        let case = (1u64..200).prop_flat_map(move |n| {
            (
                Just(n),
                proptest::collection::vec((0..n, 1..40u64, states.clone()), 0..12),
                0..n,
                0..250u64,
            )
        });
        proptest!(|((n, sets, g, max) in case)| {
            let m = AllocMap::new(n);
            for (first, count, st) in sets {
                m.set_range(first, count.min(n - first), st);
            }
            let want_state = m.get(g);
            let limit = max.min(n - g);
            let want_len = (g..g + limit).take_while(|&x| m.get(x) == want_state).count() as u64;
            prop_assert_eq!(m.run(g, max), (want_state, want_len));
        });
    }

    thread_local! {
        /// Map words this thread read (the cost of a query).
        pub(super) static WORDS_READ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// The count the setters keep against a scan, over random sets and clears.
    #[test]
    fn count_allocated_matches_a_scan() {
        use proptest::prelude::*;
        let case = (1u64..200).prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec((0..n, 1..40u64, 0..4u8), 0..20),
            )
        });
        proptest!(|((n, ops) in case)| {
            let m = AllocMap::new(n);
            for (g, c, op) in ops {
                match op {
                    0 => m.clear_all(),
                    1 => m.set_range(g, c.min(n - g), AllocState::Data),
                    2 => m.set_range(g, c.min(n - g), AllocState::Zero),
                    _ => m.set_range(g, c.min(n - g), AllocState::Unallocated),
                }
                prop_assert_eq!(m.count_allocated(), m.scan_allocated());
            }
        });
    }

    /// A status asks for the count without reading the map (it scanned every word: tens
    /// of milliseconds per TiB of disk, on the reactor, per `get_status` or
    /// `bdev_get_bdevs`), and setters on several threads keep it exact.
    #[test]
    fn count_allocated_reads_no_words_and_sums_threads() {
        let m = AllocMap::new(1 << 20);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let m = &m;
                s.spawn(move || {
                    // Interleaved words, so the threads' CASes meet on the same words.
                    for i in 0..2000u64 {
                        m.set_range(i * 16 + t * 4, 3, AllocState::Data);
                        if i % 3 == 0 {
                            m.set_range(i * 16 + t * 4 + 1, 1, AllocState::Unallocated);
                        }
                    }
                });
            }
        });
        let before = WORDS_READ.with(|n| n.get());
        let n = m.count_allocated();
        assert_eq!(WORDS_READ.with(|n| n.get()) - before, 0);
        assert_eq!(n, m.scan_allocated());
        assert_eq!(n, 4 * (2000 * 3 - 667));
        m.clear_all();
        assert_eq!(m.count_allocated(), 0);
    }

    /// `any_allocated` against `get`, over random maps and ranges.
    #[test]
    fn any_allocated_matches_slot_by_slot_model() {
        use proptest::prelude::*;
        let case = (1u64..200).prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec((0..n, 1..40u64, 1..3u8), 0..6),
                0..n,
                1..60u64,
            )
        });
        proptest!(|((n, sets, first, count) in case)| {
            let m = AllocMap::new(n);
            for (g, c, st) in sets {
                let st = if st == 1 { AllocState::Data } else { AllocState::Zero };
                m.set_range(g, c.min(n - g), st);
            }
            let want = (first..(first + count).min(n)).any(|g| m.get(g) != AllocState::Unallocated);
            prop_assert_eq!(m.any_allocated(first, count), want);
        });
    }

    /// A cluster's question reads that cluster's words, not the map up to the next
    /// allocated granule: it was a scan of up to the whole map on every top write from
    /// the failover on (milliseconds on a TiB disk, on the reactor).
    #[test]
    fn any_allocated_reads_only_its_range() {
        let m = AllocMap::new(1 << 20);
        m.set_range((1 << 20) - 1, 1, AllocState::Data);
        let reads = |first, count| {
            let before = WORDS_READ.with(|n| n.get());
            let r = m.any_allocated(first, count);
            (r, WORDS_READ.with(|n| n.get()) - before)
        };
        assert_eq!(reads(0, 16), (false, 1));
        assert_eq!(reads(8, 16), (false, 2));
        assert_eq!(reads((1 << 20) - 32, 32), (true, 2));
        assert_eq!(reads((1 << 20) - 4, 100), (true, 1));
    }

    #[test]
    fn epoch_wraparound_clears_physically() {
        let m = AllocMap::new(64);
        m.epoch.store(u32::MAX, Ordering::Relaxed);
        m.set_range(0, 64, AllocState::Data);
        m.clear_all();
        assert_eq!(m.count_allocated(), 0);
        m.set_range(3, 1, AllocState::Zero);
        assert_eq!(m.run(0, 64), (AllocState::Unallocated, 3));
        assert_eq!(m.count_allocated(), 1);
    }
}
