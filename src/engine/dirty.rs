//! The primary's dirty map (spec 8): one bit per region of `sync_granularity` bytes,
//! set when the region's content may differ on the remote leg. Lock-free: marking is one
//! relaxed load per word (and a `fetch_or` only when a bit is still clear), so marking an
//! already-dirty region costs a read; clearing is a `fetch_and` by the sync job, which owns
//! the region's lock while it does.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Default region size in bytes; see docs/protection.md for the measurement.
pub const DEFAULT_SYNC_GRANULARITY: u64 = 64 * 1024;
/// Upper bound of `sync_granularity` (each copy allocates one region).
pub const MAX_SYNC_GRANULARITY: u64 = 16 * 1024 * 1024;

pub struct DirtyMap {
    words: Box<[AtomicU64]>,
    regions: u64,
    /// log2 of the region size in blocks.
    shift: u32,
    num_blocks: u64,
}

impl DirtyMap {
    /// A clean map over `num_blocks` blocks, `region_blocks` (a power of two) per region.
    pub fn new(num_blocks: u64, region_blocks: u64) -> Self {
        let region_blocks = region_blocks.max(1).next_power_of_two();
        let shift = region_blocks.trailing_zeros();
        let regions = num_blocks.div_ceil(region_blocks);
        let words = (0..regions.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        DirtyMap {
            words,
            regions,
            shift,
            num_blocks,
        }
    }

    pub fn regions(&self) -> u64 {
        self.regions
    }

    pub fn region_blocks(&self) -> u64 {
        1 << self.shift
    }

    /// The blocks of region `r`, the last one clipped to the disk: (first block, count).
    pub fn extent(&self, r: u64) -> (u64, u64) {
        let start = r << self.shift;
        let end = ((r + 1) << self.shift).min(self.num_blocks);
        (start, end.saturating_sub(start))
    }

    /// The regions `[lba, lba + n)` touches, clipped to the map.
    pub fn regions_of(&self, lba: u64, n: u64) -> std::ops::Range<u64> {
        if n == 0 || lba >= self.num_blocks {
            return 0..0;
        }
        let end = lba.saturating_add(n).min(self.num_blocks);
        (lba >> self.shift)..((end - 1) >> self.shift) + 1
    }

    /// Marks every region `[lba, lba + n)` touches.
    pub fn mark_range(&self, lba: u64, n: u64) {
        for r in self.regions_of(lba, n) {
            self.mark(r);
        }
    }

    pub fn mark(&self, r: u64) {
        if r >= self.regions {
            return;
        }
        let (w, bit) = ((r / 64) as usize, 1u64 << (r % 64));
        if self.words[w].load(SeqCst) & bit == 0 {
            self.words[w].fetch_or(bit, SeqCst);
        }
    }

    pub fn mark_all(&self) {
        for (i, w) in self.words.iter().enumerate() {
            w.store(self.word_mask(i), SeqCst);
        }
    }

    /// Clears region `r`; returns whether it was dirty.
    pub fn clear(&self, r: u64) -> bool {
        if r >= self.regions {
            return false;
        }
        let (w, bit) = ((r / 64) as usize, 1u64 << (r % 64));
        self.words[w].fetch_and(!bit, SeqCst) & bit != 0
    }

    pub fn clear_all(&self) {
        for w in self.words.iter() {
            w.store(0, SeqCst);
        }
    }

    pub fn test(&self, r: u64) -> bool {
        r < self.regions && self.words[(r / 64) as usize].load(SeqCst) & (1 << (r % 64)) != 0
    }

    /// How many regions are dirty.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(SeqCst).count_ones()))
            .sum()
    }

    /// Bytes of the dirty regions (the last region clipped to the disk).
    pub fn dirty_bytes(&self, block_size: u32) -> u64 {
        let mut n = self.count() * (self.region_blocks() * u64::from(block_size));
        let last = self.regions.saturating_sub(1);
        if self.regions > 0 && self.test(last) {
            n -= (self.region_blocks() - self.extent(last).1) * u64::from(block_size);
        }
        n
    }

    /// The first dirty region at or after `from`.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        if from >= self.regions {
            return None;
        }
        let mut w = (from / 64) as usize;
        let mut bits = self.words[w].load(SeqCst) & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                let r = w as u64 * 64 + u64::from(bits.trailing_zeros());
                return (r < self.regions).then_some(r);
            }
            w += 1;
            bits = self.words.get(w)?.load(SeqCst);
        }
    }

    /// Every dirty region, in order (a snapshot: regions marked meanwhile may be missed).
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let r = self.next_dirty(at)?;
            at = r + 1;
            Some(r)
        })
    }

    /// The dirty regions as block extents `(first block, count)`, neighbours merged (the
    /// form `bdev_replication_get_dirty_map` hands to a peer).
    pub fn extents(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in self.iter() {
            let (lba, n) = self.extent(r);
            match out.last_mut() {
                Some((start, len)) if *start + *len == lba => *len += n,
                _ => out.push((lba, n)),
            }
        }
        out
    }

    fn word_mask(&self, i: usize) -> u64 {
        let left = self.regions - i as u64 * 64;
        if left >= 64 { !0 } else { (1u64 << left) - 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_test_clear_count_iterate() {
        // 1000 blocks, 8 per region: 125 regions, the last one full.
        let m = DirtyMap::new(1003, 8);
        assert_eq!(m.regions(), 126);
        assert_eq!(m.extent(125), (1000, 3));
        m.mark_range(7, 2);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![0, 1]);
        m.mark_range(1000, 100);
        assert!(m.test(125));
        assert_eq!(m.count(), 3);
        assert_eq!(m.dirty_bytes(512), (8 + 8 + 3) * 512);
        assert!(m.clear(1));
        assert!(!m.clear(1));
        assert_eq!(m.next_dirty(1), Some(125));
        m.mark_all();
        assert_eq!(m.count(), 126);
        assert_eq!(m.dirty_bytes(512), 1003 * 512);
        m.clear_all();
        assert_eq!(m.count(), 0);
        assert_eq!(m.next_dirty(0), None);
        m.mark_range(5000, 1);
        m.mark_range(3, 0);
        assert_eq!(m.count(), 0);
    }
}
