//! Secondary node: the SVM's disk ("top") over active > hidden > base, the ingress that
//! takes the primary's writes with copy-before-write, checkpoint and the failover merge.

use crate::engine::alloc_map::{AllocMap, AllocState};
use crate::engine::cluster_lock::ClusterLocks;
use crate::engine::device::{BlockDevice, IoBuf, IoError, WriteOp};
use crate::engine::dirty::DirtyMap;
use crate::engine::gate::IoGate;
use crate::engine::stage::AtomicStage;
use crate::engine::{Geometry, ReplicationError, Stage};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};

mod control;
mod ingress;
mod merge;

/// Default COW cluster size in bytes; see README "COW granularity" for the measurement.
pub const DEFAULT_COW_GRANULARITY: u64 = 16 * 1024;

/// Where a piece of a top read comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Active,
    Hidden,
    Base,
    /// Allocated as zero in active: the host fills zeros, no device I/O.
    Zero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSegment {
    pub source: Source,
    pub lba: u64,
    pub nblocks: u64,
}

/// Routing of an ingress write (or write_zeroes/unmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressWritePlan {
    /// Straight to base: no touched cluster needs a copy.
    Direct,
    /// Some touched cluster is still armed: copy-before-write first (slow path).
    Cow,
    Refused,
}

/// Routing of a top write (or write_zeroes/unmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopWritePlan {
    /// Whole request to active, then mark it allocated.
    Active,
    Base,
    /// Needs merging first or splitting (failover stages): driver slow path.
    Slow,
    Refused,
}

#[derive(Debug, Default)]
struct Counters {
    cow_copies: AtomicU64,
    cow_bytes: AtomicU64,
    cow_failures: AtomicU64,
    ingress_refused: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_hold_ns_total: AtomicU64,
    checkpoint_hold_ns_max: AtomicU64,
    merged_clusters: AtomicU64,
    merge_failures: AtomicU64,
    read_revalidations: AtomicU64,
    base_flushes: AtomicU64,
}

/// Slow-path counters (the hot path keeps its own per channel in the host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SecondaryCounters {
    pub cow_copies: u64,
    pub cow_bytes: u64,
    pub cow_failures: u64,
    pub ingress_refused: u64,
    pub checkpoints: u64,
    /// How long checkpoints held guest I/O (from the hold's start, through the drain of
    /// the requests in flight, to the release): summed, and the longest.
    pub checkpoint_hold_ns_total: u64,
    pub checkpoint_hold_ns_max: u64,
    pub merged_clusters: u64,
    pub merge_failures: u64,
    pub read_revalidations: u64,
    /// Flushes sent to the base (from top, ingress and the end of a merge).
    pub base_flushes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MergeProgress {
    pub total_bytes: u64,
    pub done_bytes: u64,
}

/// Outcome of one [`Secondary::merge_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeStep {
    /// One cluster merged (or found already merged); call again.
    Progress,
    /// Out of buffers for now: call again after a pause.
    Backoff,
    /// Nothing left: the top now addresses the base, stage `done`.
    Done,
    /// Not in `failover` (nothing to do).
    Idle,
}

pub struct Secondary<D: BlockDevice> {
    geo: Geometry,
    base: D,
    hidden: D,
    active: D,
    stage: AtomicStage,
    /// Per block.
    active_map: AllocMap,
    /// Per cluster. Also the COW map: in `running`, a cluster's COW is armed exactly when it
    /// is not allocated in hidden (start and checkpoint arm all and empty hidden together;
    /// a copy allocates and disarms together), so one map keeps both without drift.
    hidden_map: AllocMap,
    clusters: ClusterLocks,
    gate: IoGate,
    error: AtomicBool,
    control: futures::lock::Mutex<()>,
    /// Set while a merge task runs: one merge at a time (spec 5.5).
    merge_running: AtomicBool,
    merge_cursor: AtomicU64,
    merge_total: AtomicU64,
    merge_done: AtomicU64,
    counters: Counters,
    /// Set by a reprotect: the promoted primary's dirty map, where top writes that still
    /// took this (retired) path mark their regions once they reach the base.
    retired: OnceLock<Arc<DirtyMap>>,
    /// Clusters changed since the last checkpoint, known from the failover on: those the
    /// merge copied (hidden or active data) and every top write since. What an
    /// incremental reprotect copies (one bit per cluster).
    changed: DirtyMap,
}

impl<D: BlockDevice> Secondary<D> {
    /// Checks the devices' shapes (spec 5.6) and builds the engine in stage `none`.
    pub fn new(
        base: D,
        hidden: D,
        active: D,
        cow_granularity: u64,
    ) -> Result<Self, ReplicationError> {
        let (bs, n) = (base.block_size(), base.num_blocks());
        for (param, dev) in [("hidden_bdev", &hidden), ("active_bdev", &active)] {
            if dev.block_size() != bs {
                return Err(ReplicationError::InvalidParam {
                    param,
                    reason: format!(
                        "block size {} differs from the base's {bs}",
                        dev.block_size()
                    ),
                });
            }
            if dev.num_blocks() != n {
                return Err(ReplicationError::InvalidParam {
                    param,
                    reason: format!(
                        "size {} blocks differs from the base's {n}",
                        dev.num_blocks()
                    ),
                });
            }
        }
        let geo = Geometry::new(bs, n, cow_granularity)?;
        Ok(Secondary {
            active_map: AllocMap::new(n),
            hidden_map: AllocMap::new(geo.num_clusters()),
            geo,
            base,
            hidden,
            active,
            stage: AtomicStage::default(),
            clusters: ClusterLocks::default(),
            gate: IoGate::default(),
            error: AtomicBool::new(false),
            control: futures::lock::Mutex::new(()),
            merge_running: AtomicBool::new(false),
            merge_cursor: AtomicU64::new(0),
            merge_total: AtomicU64::new(0),
            merge_done: AtomicU64::new(0),
            counters: Counters::default(),
            retired: OnceLock::new(),
            changed: DirtyMap::new(n, geo.cluster_blocks),
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }
    pub fn stage(&self) -> Stage {
        self.stage.get()
    }
    pub fn gate(&self) -> &IoGate {
        &self.gate
    }
    pub fn base(&self) -> &D {
        &self.base
    }
    pub fn hidden(&self) -> &D {
        &self.hidden
    }
    pub fn active(&self) -> &D {
        &self.active
    }

    /// Blocks allocated in active and clusters allocated in hidden.
    pub fn allocated(&self) -> (u64, u64) {
        (
            self.active_map.count_allocated(),
            self.hidden_map.count_allocated(),
        )
    }

    pub fn counters(&self) -> SecondaryCounters {
        let c = &self.counters;
        SecondaryCounters {
            cow_copies: c.cow_copies.load(Relaxed),
            cow_bytes: c.cow_bytes.load(Relaxed),
            cow_failures: c.cow_failures.load(Relaxed),
            ingress_refused: c.ingress_refused.load(Relaxed),
            checkpoints: c.checkpoints.load(Relaxed),
            checkpoint_hold_ns_total: c.checkpoint_hold_ns_total.load(Relaxed),
            checkpoint_hold_ns_max: c.checkpoint_hold_ns_max.load(Relaxed),
            merged_clusters: c.merged_clusters.load(Relaxed),
            merge_failures: c.merge_failures.load(Relaxed),
            read_revalidations: c.read_revalidations.load(Relaxed),
            base_flushes: c.base_flushes.load(Relaxed),
        }
    }

    /// Clusters changed since the last checkpoint (tracked from the failover on; see
    /// [`Secondary::retire`]): meaningful once `done`.
    pub fn changed_since_checkpoint(&self) -> &DirtyMap {
        &self.changed
    }

    pub fn merge_progress(&self) -> MergeProgress {
        MergeProgress {
            total_bytes: self.merge_total.load(SeqCst),
            done_bytes: self.merge_done.load(SeqCst),
        }
    }

    /// `get_error` (spec 5.7).
    pub fn get_error(&self) -> Result<(), ReplicationError> {
        match self.stage() {
            Stage::None => Err(ReplicationError::NotRunning),
            // A merge in progress reports nothing transient.
            Stage::Failover => Ok(()),
            _ if self.error.load(SeqCst) => Err(ReplicationError::Io),
            _ => Ok(()),
        }
    }

    // ---------------------------------------------------------------- routing (core) --

    fn cluster_has_overlay(&self, c: u64) -> bool {
        let (start, len) = self.geo.cluster_extent(c);
        self.hidden_map.get(c) == AllocState::Data || self.active_map.any_allocated(start, len)
    }

    /// Pieces of a top read, in order, adjacent pieces of one source coalesced.
    pub fn plan_top_read(&self, lba: u64, nblocks: u64) -> Result<ReadSegments<'_, D>, IoError> {
        if !self.geo.check_range(lba, nblocks) {
            return Err(IoError::OutOfRange);
        }
        let base_only = match self.stage() {
            Stage::None => return Err(IoError::Io),
            Stage::Done => true,
            Stage::Running | Stage::Failover | Stage::FailoverFailed => false,
        };
        Ok(ReadSegments {
            sec: self,
            pos: lba,
            end: lba + nblocks,
            base_only,
            peeked: None,
        })
    }

    /// The source of a whole top read when one source serves all of it (the common case:
    /// a small read inside one cluster), in one lookup; `Ok(None)` when it has several
    /// pieces (see [`Secondary::plan_top_read`]) or no blocks.
    pub fn plan_top_read_whole(
        &self,
        lba: u64,
        nblocks: u64,
    ) -> Result<Option<ReadSegment>, IoError> {
        if !self.geo.check_range(lba, nblocks) {
            return Err(IoError::OutOfRange);
        }
        if nblocks == 0 {
            return Ok(None);
        }
        let seg = match self.stage() {
            Stage::None => return Err(IoError::Io),
            Stage::Done => ReadSegment {
                source: Source::Base,
                lba,
                nblocks,
            },
            Stage::Running | Stage::Failover | Stage::FailoverFailed => {
                self.segment_at(lba, lba + nblocks)
            }
        };
        Ok((seg.nblocks == nblocks).then_some(seg))
    }

    #[inline]
    fn segment_at(&self, pos: u64, end: u64) -> ReadSegment {
        let (a_state, a_len) = self.active_map.run(pos, end - pos);
        let (source, nblocks) = match a_state {
            AllocState::Data => (Source::Active, a_len),
            AllocState::Zero => (Source::Zero, a_len),
            AllocState::Unallocated => {
                let c = self.geo.cluster_of(pos);
                let max_clusters = self.geo.cluster_of(end - 1) - c + 1;
                // Inside one cluster: one map load, inline.
                let (h_state, h_len) = if max_clusters == 1 {
                    (self.hidden_map.get(c), 1)
                } else {
                    self.hidden_map.run(c, max_clusters)
                };
                let h_end = ((c + h_len) * self.geo.cluster_blocks).min(end);
                let src = if h_state == AllocState::Data {
                    Source::Hidden
                } else {
                    Source::Base
                };
                (src, a_len.min(h_end - pos))
            }
        };
        ReadSegment {
            source,
            lba: pos,
            nblocks,
        }
    }

    #[inline]
    pub fn plan_ingress_write(&self, lba: u64, nblocks: u64) -> IngressWritePlan {
        match self.stage() {
            Stage::None => IngressWritePlan::Direct,
            Stage::Running => {
                let cs = self.geo.clusters_of(lba, nblocks);
                let want = cs.end - cs.start;
                // Inside one cluster (nearly every write): one map load, inline.
                let copied = if want == 1 {
                    self.hidden_map.get(cs.start) == AllocState::Data
                } else {
                    self.all_copied(cs.start, want)
                };
                if copied {
                    IngressWritePlan::Direct
                } else {
                    IngressWritePlan::Cow
                }
            }
            Stage::Failover | Stage::FailoverFailed | Stage::Done => IngressWritePlan::Refused,
        }
    }

    /// Whether hidden holds every one of `want` clusters from `first`.
    #[inline(never)]
    fn all_copied(&self, first: u64, want: u64) -> bool {
        matches!(self.hidden_map.run(first, want), (AllocState::Data, n) if n >= want)
    }

    /// For hosts that refuse an ingress write on their own fast path.
    pub fn count_ingress_refused(&self) {
        self.counters.ingress_refused.fetch_add(1, Relaxed);
    }

    pub fn plan_top_write(&self, lba: u64, nblocks: u64) -> TopWritePlan {
        let overlay = || {
            let mut any = false;
            let mut all = true;
            for c in self.geo.clusters_of(lba, nblocks) {
                let has = self.cluster_has_overlay(c);
                any |= has;
                all &= has;
            }
            (any, all)
        };
        match self.stage() {
            Stage::None => TopWritePlan::Refused,
            Stage::Running => TopWritePlan::Active,
            Stage::Done => TopWritePlan::Base,
            Stage::Failover => match overlay() {
                (false, _) => TopWritePlan::Base,
                _ => TopWritePlan::Slow,
            },
            Stage::FailoverFailed => match overlay() {
                (false, _) => TopWritePlan::Base,
                (true, true) => TopWritePlan::Active,
                (true, false) => TopWritePlan::Slow,
            },
        }
    }

    /// Records a completed write (or a zeroing) of top blocks in active.
    pub fn mark_active(&self, lba: u64, nblocks: u64, state: AllocState) {
        self.active_map.set_range(lba, nblocks, state);
    }

    /// After a base read planned for `seg` completed: the clusters whose copy finished in
    /// the meantime (their base may already hold newer ingress data) must be read again from
    /// hidden, which holds exactly the pre-write data. Calls `redo(lba, nblocks)` per piece.
    #[inline]
    pub fn revalidate_base_read(&self, seg: &ReadSegment, redo: impl FnMut(u64, u64)) {
        // The usual case, inline: a read inside one cluster that is still not copied.
        let c = self.geo.cluster_of(seg.lba);
        let last = self.geo.cluster_of(seg.lba + seg.nblocks.max(1) - 1);
        if last == c && self.hidden_map.get(c) != AllocState::Data {
            return;
        }
        self.revalidate_base_read_slow(seg, redo);
    }

    #[inline(never)]
    fn revalidate_base_read_slow(&self, seg: &ReadSegment, mut redo: impl FnMut(u64, u64)) {
        if self.stage() != Stage::Running {
            return;
        }
        let end = seg.lba + seg.nblocks;
        for c in self.geo.clusters_of(seg.lba, seg.nblocks) {
            if self.hidden_map.get(c) == AllocState::Data {
                let (cs, clen) = self.geo.cluster_extent(c);
                let from = cs.max(seg.lba);
                let to = (cs + clen).min(end);
                self.counters.read_revalidations.fetch_add(1, Relaxed);
                redo(from, to - from);
            }
        }
    }

    fn check_buf(&self, lba: u64, buf: &D::Buf) -> Result<u64, IoError> {
        let bs = self.geo.block_size as usize;
        if buf.len() % bs != 0 {
            return Err(IoError::OutOfRange);
        }
        let n = (buf.len() / bs) as u64;
        if !self.geo.check_range(lba, n) {
            return Err(IoError::OutOfRange);
        }
        Ok(n)
    }

    fn check_blocks(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        if self.geo.check_range(lba, nblocks) {
            Ok(())
        } else {
            Err(IoError::OutOfRange)
        }
    }

    fn sub(&self, buf: &D::Buf, from_lba: u64, lba: u64, nblocks: u64) -> D::Buf {
        let bs = u64::from(self.geo.block_size);
        buf.slice(((lba - from_lba) * bs) as usize, (nblocks * bs) as usize)
    }

    // ------------------------------------------------------------------ top (driver) --

    pub async fn top_read(&self, lba: u64, buf: D::Buf) -> Result<(), IoError> {
        let n = self.check_buf(lba, &buf)?;
        let _io = self.gate.enter().await;
        for seg in self.plan_top_read(lba, n)? {
            let part = self.sub(&buf, lba, seg.lba, seg.nblocks);
            match seg.source {
                Source::Active => self.active.read(seg.lba, part).await?,
                Source::Hidden => self.hidden.read(seg.lba, part).await?,
                Source::Zero => part.fill_zero(),
                Source::Base => {
                    self.base.read(seg.lba, part).await?;
                    let mut redo = Vec::new();
                    self.revalidate_base_read(&seg, |l, k| redo.push((l, k)));
                    for (l, k) in redo {
                        self.hidden.read(l, self.sub(&buf, lba, l, k)).await?;
                    }
                }
            }
        }
        Ok(())
    }

    pub async fn top_write(&self, lba: u64, buf: D::Buf) -> Result<(), IoError> {
        self.check_buf(lba, &buf)?;
        self.top_modify(lba, WriteOp::Data(buf)).await
    }

    pub async fn top_write_zeroes(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        self.check_blocks(lba, nblocks)?;
        self.top_modify(lba, WriteOp::Zeroes(nblocks)).await
    }

    pub async fn top_unmap(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        self.check_blocks(lba, nblocks)?;
        self.top_modify(lba, WriteOp::Unmap(nblocks)).await
    }

    pub async fn top_flush(&self) -> Result<(), IoError> {
        let _io = self.gate.enter().await;
        match self.stage() {
            Stage::None => Err(IoError::Io),
            // The SVM view spans all three devices until the merge has completed.
            Stage::Running | Stage::Failover | Stage::FailoverFailed => {
                flush_all(&[&self.active, &self.hidden]).await?;
                self.flush_base().await
            }
            Stage::Done => self.flush_base().await,
        }
    }

    /// Writes to active and marks the blocks, or marks them allocated-as-zero (no I/O).
    async fn write_active(&self, lba: u64, op: WriteOp<D::Buf>) -> Result<(), IoError> {
        let n = op.nblocks(self.geo.block_size);
        match op {
            WriteOp::Data(buf) => {
                self.active.write(lba, buf).await?;
                self.mark_active(lba, n, AllocState::Data);
            }
            WriteOp::Zeroes(_) | WriteOp::Unmap(_) => self.mark_active(lba, n, AllocState::Zero),
        }
        Ok(())
    }

    /// A top write about to reach the base (`TopWritePlan::Base`, or any top write from
    /// the failover on): its clusters are changed since the last checkpoint. Hosts' fast
    /// paths call this and [`Secondary::base_write_done`] around the write.
    pub fn base_write_begin(&self, lba: u64, n: u64) {
        if matches!(
            self.stage(),
            Stage::Failover | Stage::FailoverFailed | Stage::Done
        ) {
            self.changed.mark_range(lba, n);
        }
    }

    /// A top write reached the base (or failed to): after a reprotect it went behind the
    /// promoted primary's back, so the remote may lack it (marked even on failure, as the
    /// primary's local leg).
    pub fn base_write_done(&self, lba: u64, n: u64) {
        if let Some(map) = self.retired.get() {
            map.mark_range(lba, n);
        }
    }

    async fn top_modify(&self, lba: u64, op: WriteOp<D::Buf>) -> Result<(), IoError> {
        let _io = self.gate.enter().await;
        let n = op.nblocks(self.geo.block_size);
        self.base_write_begin(lba, n);
        loop {
            match self.plan_top_write(lba, n) {
                TopWritePlan::Refused => return Err(IoError::Io),
                TopWritePlan::Active => return self.write_active(lba, op).await,
                TopWritePlan::Base => {
                    let r = op.issue(&self.base, lba).await;
                    self.base_write_done(lba, n);
                    return r;
                }
                TopWritePlan::Slow if self.stage() == Stage::Failover => {
                    // Merge every touched cluster that still has overlay data, then write
                    // through: the SVM's own writes thus push the merge forward. If a merge
                    // fails the stage is now failover_failed: route the write as that stage
                    // does (nothing of it was issued yet).
                    match self.merge_clusters_of(lba, n).await {
                        Ok(()) => return op.issue(&self.base, lba).await,
                        // Out of buffers: the host retries the whole request later.
                        Err(IoError::NoMem) => return Err(IoError::NoMem),
                        Err(_) => {}
                    }
                }
                TopWritePlan::Slow => return self.split_write(lba, n, op).await,
            }
        }
    }

    /// failover_failed: clusters with overlay data take the write in active, the others go
    /// straight to base (spec 5.1).
    async fn split_write(&self, lba: u64, n: u64, op: WriteOp<D::Buf>) -> Result<(), IoError> {
        let cb = self.geo.cluster_blocks;
        let mut pos = lba;
        let end = lba + n;
        while pos < end {
            let to_active = self.cluster_has_overlay(self.geo.cluster_of(pos));
            let mut stop = pos;
            while stop < end && self.cluster_has_overlay(self.geo.cluster_of(stop)) == to_active {
                stop = (stop / cb + 1) * cb;
            }
            let stop = stop.min(end);
            let part = op.part(pos - lba, stop - pos, self.geo.block_size);
            if to_active {
                self.write_active(pos, part).await?;
            } else {
                part.issue(&self.base, pos).await?;
            }
            pos = stop;
        }
        Ok(())
    }
}

/// Flushes every device that supports flush, in order; devices without it are skipped
/// (spec 4: never a reason to fail).
async fn flush_all<D: BlockDevice>(devs: &[&D]) -> Result<(), IoError> {
    for d in devs {
        if d.supports_flush() {
            d.flush().await?;
        }
    }
    Ok(())
}

/// Iterator over the pieces of a top read; allocation-free.
pub struct ReadSegments<'a, D: BlockDevice> {
    sec: &'a Secondary<D>,
    pos: u64,
    end: u64,
    base_only: bool,
    peeked: Option<ReadSegment>,
}

impl<D: BlockDevice> Iterator for ReadSegments<'_, D> {
    type Item = ReadSegment;

    fn next(&mut self) -> Option<ReadSegment> {
        if self.base_only {
            if self.pos >= self.end {
                return None;
            }
            let seg = ReadSegment {
                source: Source::Base,
                lba: self.pos,
                nblocks: self.end - self.pos,
            };
            self.pos = self.end;
            return Some(seg);
        }
        let mut seg = match self.peeked.take() {
            Some(s) => s,
            None if self.pos < self.end => {
                let s = self.sec.segment_at(self.pos, self.end);
                self.pos += s.nblocks;
                s
            }
            None => return None,
        };
        while self.pos < self.end {
            let next = self.sec.segment_at(self.pos, self.end);
            self.pos += next.nblocks;
            if next.source == seg.source {
                seg.nblocks += next.nblocks;
            } else {
                self.peeked = Some(next);
                break;
            }
        }
        Some(seg)
    }
}
