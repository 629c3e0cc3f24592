use crate::engine::ReplicationError;

/// Largest `cow_granularity` (16 MiB): each copy-before-write allocates a buffer of this
/// size, so it must stay a size any host can allocate per I/O.
pub const MAX_COW_GRANULARITY: u64 = 16 << 20;

/// Disk shape shared by the base and both overlays. Offsets in the engine are in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub num_blocks: u64,
    /// Blocks per COW cluster (a power of two).
    pub cluster_blocks: u64,
}

impl Geometry {
    /// `cow_granularity` is in bytes: a power of two, at least the block size.
    pub fn new(
        block_size: u32,
        num_blocks: u64,
        cow_granularity: u64,
    ) -> Result<Self, ReplicationError> {
        if block_size == 0 || !block_size.is_power_of_two() {
            return Err(ReplicationError::InvalidParam {
                param: "block_size",
                reason: format!("{block_size} is not a power of two"),
            });
        }
        if !cow_granularity.is_power_of_two()
            || cow_granularity < u64::from(block_size)
            || cow_granularity > MAX_COW_GRANULARITY
        {
            return Err(ReplicationError::InvalidParam {
                param: "cow_granularity",
                reason: format!(
                    "{cow_granularity} must be a power of two between the block size {block_size} and {MAX_COW_GRANULARITY}"
                ),
            });
        }
        if num_blocks == 0 {
            return Err(ReplicationError::InvalidParam {
                param: "num_blocks",
                reason: "the disk is empty".into(),
            });
        }
        Ok(Geometry {
            block_size,
            num_blocks,
            cluster_blocks: cow_granularity / u64::from(block_size),
        })
    }

    pub fn num_clusters(&self) -> u64 {
        self.num_blocks.div_ceil(self.cluster_blocks)
    }

    pub fn cluster_of(&self, lba: u64) -> u64 {
        // A power of two (`new`): a shift, not a 64-bit division, on every top read.
        lba >> self.cluster_blocks.trailing_zeros()
    }

    /// Clusters touched by `[lba, lba + nblocks)`, as a half-open range.
    pub fn clusters_of(&self, lba: u64, nblocks: u64) -> std::ops::Range<u64> {
        if nblocks == 0 {
            return 0..0;
        }
        self.cluster_of(lba)..self.cluster_of(lba + nblocks - 1) + 1
    }

    /// First block and length of a cluster, the last one clipped to the disk size.
    pub fn cluster_extent(&self, cluster: u64) -> (u64, u64) {
        let start = cluster * self.cluster_blocks;
        (start, self.cluster_blocks.min(self.num_blocks - start))
    }

    pub fn cow_granularity(&self) -> u64 {
        self.cluster_blocks * u64::from(self.block_size)
    }

    pub fn bytes(&self, nblocks: u64) -> u64 {
        nblocks * u64::from(self.block_size)
    }

    pub fn check_range(&self, lba: u64, nblocks: u64) -> bool {
        lba.checked_add(nblocks)
            .is_some_and(|end| end <= self.num_blocks)
    }
}
