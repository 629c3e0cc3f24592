//! The failover merge (spec 5.5): every cluster with overlay data is written into the base
//! (active wins over hidden), several clusters in flight, each under its cluster lock,
//! while the SVM keeps running; then the top switches to the base.

use super::Secondary;
use crate::engine::alloc_map::AllocState;
use crate::engine::device::{BlockDevice, IoBuf, IoError};
use crate::engine::{MergeStep, ReplicationError, Stage};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};

impl<D: BlockDevice> Secondary<D> {
    /// Merges the clusters of `[lba, lba + n)` that still hold overlay data.
    pub(super) async fn merge_clusters_of(&self, lba: u64, n: u64) -> Result<(), IoError> {
        for c in self.geo.clusters_of(lba, n) {
            if self.cluster_has_overlay(c) {
                let _c = self.clusters.lock(c).await;
                if self.stage() != Stage::Failover {
                    return Err(IoError::Io);
                }
                if self.cluster_has_overlay(c) {
                    self.merge_cluster_or_fail(c).await?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn next_overlay_cluster(&self, from: u64) -> Option<u64> {
        let cb = self.geo.cluster_blocks;
        let h = self.hidden_map.next_allocated(from);
        let a = self
            .active_map
            .next_allocated(from.saturating_mul(cb).min(self.geo.num_blocks))
            .map(|b| b / cb);
        match (h, a) {
            (Some(h), Some(a)) => Some(h.min(a)),
            (x, None) | (None, x) => x,
        }
    }

    /// [`Secondary::next_overlay_cluster`] for a merge's forward walk. During failover
    /// nothing new is allocated in the overlays, so each map's last answer stays good for
    /// later `from`s up to it (a cluster merged meanwhile by an SVM write is found empty
    /// under its lock): each map is scanned once per merge rather than once per cluster.
    fn next_overlay_cluster_walk(&self, from: u64, walk: &mut OverlayWalk) -> Option<u64> {
        let cb = self.geo.cluster_blocks;
        let h = walk
            .hidden
            .next(from, |f| self.hidden_map.next_allocated(f));
        let a = walk.active.next(from, |f| {
            self.active_map
                .next_allocated(f.saturating_mul(cb).min(self.geo.num_blocks))
                .map(|b| b / cb)
        });
        match (h, a) {
            (Some(h), Some(a)) => Some(h.min(a)),
            (x, None) | (None, x) => x,
        }
    }

    /// Bytes of the clusters that hold overlay data (what a merge has to copy).
    pub(super) fn overlay_bytes(&self) -> u64 {
        let mut total = 0;
        let mut c = 0;
        let mut walk = OverlayWalk::default();
        while let Some(next) = self.next_overlay_cluster_walk(c, &mut walk) {
            total += self.geo.bytes(self.geo.cluster_extent(next).1);
            c = next + 1;
        }
        total
    }

    /// One unit of the failover merge. Converges under any SVM write load: clusters only
    /// ever leave the overlays during failover, and the cursor only moves forward.
    pub async fn merge_step(&self) -> Result<MergeStep, ReplicationError> {
        if self.stage() != Stage::Failover {
            return Ok(MergeStep::Idle);
        }
        let cursor = self.merge_cursor.load(SeqCst);
        match self.next_overlay_cluster(cursor) {
            Some(c) => {
                let step = self.merge_one(c).await?;
                if step == MergeStep::Progress {
                    self.merge_cursor.fetch_max(c + 1, SeqCst);
                }
                Ok(step)
            }
            None => self.finish_merge().await,
        }
    }

    /// Runs the merge to its end: `Done`, or `Idle` when there is nothing to merge or
    /// another task already runs the merge (one merge at a time). `between` runs after
    /// each step that did not finish it (a host pauses on `Backoff`).
    pub async fn run_merge_with<F, Fut>(
        &self,
        mut between: F,
    ) -> Result<MergeStep, ReplicationError>
    where
        F: FnMut(MergeStep) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        if self
            .merge_running
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_err()
        {
            return Ok(MergeStep::Idle);
        }
        struct Running<'a>(&'a AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, SeqCst);
            }
        }
        let _running = Running(&self.merge_running);
        // Several clusters in flight, each under its cluster lock (one at a time left the
        // devices idle between requests). The cursor moves on as clusters are issued; a
        // cluster left behind (out of buffers) is found again by `finish_merge`'s rewind.
        let depth = self.merge_depth();
        let mut inflight = FuturesUnordered::new();
        let mut stop = None;
        let mut walk = OverlayWalk::default();
        loop {
            while stop.is_none() && inflight.len() < depth {
                if self.stage() != Stage::Failover {
                    stop = Some(Ok(MergeStep::Idle));
                    break;
                }
                let cursor = self.merge_cursor.load(SeqCst);
                let Some(c) = self.next_overlay_cluster_walk(cursor, &mut walk) else {
                    break;
                };
                self.merge_cursor.fetch_max(c + 1, SeqCst);
                inflight.push(self.merge_one(c));
            }
            match inflight.next().await {
                Some(Ok(MergeStep::Idle)) => {
                    stop.get_or_insert(Ok(MergeStep::Idle));
                }
                Some(Ok(step)) => between(step).await,
                Some(Err(e)) => {
                    stop.get_or_insert(Err(e));
                }
                None => match stop {
                    Some(end) => return end,
                    None => match self.finish_merge().await? {
                        MergeStep::Progress => {
                            // Rewound to a cluster left behind: scan afresh.
                            walk = OverlayWalk::default();
                            continue;
                        }
                        end => return Ok(end),
                    },
                },
            }
        }
    }

    /// Clusters a merge keeps in flight: about 1 MiB, from 2 to 32.
    fn merge_depth(&self) -> usize {
        let cluster = self.geo.bytes(self.geo.cluster_blocks);
        ((1u64 << 20) / cluster.max(1)).clamp(2, 32) as usize
    }

    /// One cluster of the merge under its lock: `Backoff` when out of buffers (the cursor
    /// goes back to it).
    async fn merge_one(&self, c: u64) -> Result<MergeStep, ReplicationError> {
        let _c = self.clusters.lock(c).await;
        if self.stage() != Stage::Failover {
            return Ok(MergeStep::Idle);
        }
        if self.cluster_has_overlay(c) {
            match self.merge_cluster_or_fail(c).await {
                Ok(()) => {}
                Err(IoError::NoMem) => {
                    self.merge_cursor.fetch_min(c, SeqCst);
                    return Ok(MergeStep::Backoff);
                }
                Err(_) => return Err(ReplicationError::Io),
            }
        }
        Ok(MergeStep::Progress)
    }

    /// [`Secondary::run_merge_with`] without pauses (tests and simple hosts).
    pub async fn run_merge(&self) -> Result<MergeStep, ReplicationError> {
        self.run_merge_with(|_| std::future::ready(())).await
    }

    async fn finish_merge(&self) -> Result<MergeStep, ReplicationError> {
        let _hold = self.gate.hold().await;
        if self.stage() != Stage::Failover {
            return Ok(MergeStep::Idle);
        }
        if let Some(c) = self.next_overlay_cluster(0) {
            // Cannot happen (nothing allocates in the overlays during failover), but a
            // missed cluster must never be dropped: rewind instead.
            self.merge_cursor.store(c, SeqCst);
            return Ok(MergeStep::Progress);
        }
        if let Err(e) = self.flush_base().await {
            tracing::error!(error = %e, "failover: flushing the base failed");
            self.fail_merge();
            return Err(ReplicationError::Io);
        }
        self.empty_overlays();
        self.stage.set(Stage::Done);
        tracing::info!("failover complete: top now serves the base");
        Ok(MergeStep::Done)
    }

    fn fail_merge(&self) {
        self.counters.merge_failures.fetch_add(1, Relaxed);
        self.error.store(true, SeqCst);
        self.stage.set(Stage::FailoverFailed);
    }

    /// Merges cluster `c`; an I/O failure fails the merge (stage `failover_failed`),
    /// running out of buffers does not (`Err(NoMem)`: try again later).
    async fn merge_cluster_or_fail(&self, c: u64) -> Result<(), IoError> {
        match self.merge_cluster(c).await {
            Ok(()) => Ok(()),
            Err(IoError::NoMem) => Err(IoError::NoMem),
            Err(e) => {
                tracing::error!(cluster = c, error = %e, "failover: merge failed");
                self.fail_merge();
                Err(IoError::Io)
            }
        }
    }

    /// Writes the SVM view of cluster `c` into the base, then drops the cluster from both
    /// overlays. The caller owns the cluster lock.
    async fn merge_cluster(&self, c: u64) -> Result<(), IoError> {
        // Holds data of after the last checkpoint (hidden: the primary's writes since;
        // active: the SVM's): an incremental reprotect copies it.
        self.changed.mark(c);
        let (start, len) = self.geo.cluster_extent(c);
        let bs = u64::from(self.geo.block_size);
        let in_hidden = self.hidden_map.get(c) == AllocState::Data;
        let whole = match in_hidden {
            true => Some(self.base.alloc_buf((len * bs) as usize)?),
            false => None,
        };
        if let Some(buf) = &whole {
            self.hidden.read(start, buf.clone()).await?;
        }
        let mut pos = start;
        while pos < start + len {
            let (state, run) = self.active_map.run(pos, start + len - pos);
            let bytes = (run * bs) as usize;
            match (state, &whole) {
                (AllocState::Unallocated, _) => {}
                (AllocState::Data, Some(buf)) => {
                    let part = buf.slice(((pos - start) * bs) as usize, bytes);
                    self.active.read(pos, part).await?;
                }
                (AllocState::Zero, Some(buf)) => {
                    buf.slice(((pos - start) * bs) as usize, bytes).fill_zero();
                }
                (AllocState::Data, None) => {
                    let part = self.base.alloc_buf(bytes)?;
                    self.active.read(pos, part.clone()).await?;
                    self.base.write(pos, part).await?;
                }
                (AllocState::Zero, None) => self.base.write_zeroes(pos, run).await?,
            }
            pos += run;
        }
        if let Some(buf) = whole {
            self.base.write(start, buf).await?;
        }
        self.active_map
            .set_range(start, len, AllocState::Unallocated);
        self.hidden_map.set_range(c, 1, AllocState::Unallocated);
        self.merge_done.fetch_add(len * bs, SeqCst);
        self.counters.merged_clusters.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// The last answer of one overlay map's "next allocated cluster from `from`" query.
#[derive(Default)]
struct MapWalk {
    last: Option<(u64, Option<u64>)>,
}

impl MapWalk {
    fn next(&mut self, from: u64, scan: impl FnOnce(u64) -> Option<u64>) -> Option<u64> {
        match self.last {
            Some((f, None)) if from >= f => return None,
            Some((f, Some(x))) if from >= f && from <= x => return Some(x),
            _ => {}
        }
        let r = scan(from);
        self.last = Some((from, r));
        r
    }
}

#[derive(Default)]
struct OverlayWalk {
    hidden: MapWalk,
    active: MapWalk,
}

#[cfg(test)]
mod tests {
    use super::MapWalk;
    use std::cell::Cell;

    /// A forward walk gives the direct scan's answers and scans once per answer (plus the
    /// last, empty one), not once per position asked.
    #[test]
    fn a_forward_walk_scans_once_per_allocated_cluster() {
        let allocated = [3u64, 4, 90, 1000, 1001, 5000];
        let direct = |from: u64| allocated.iter().copied().find(|&c| c >= from);
        let scans = Cell::new(0);
        let mut walk = MapWalk::default();
        let mut got = Vec::new();
        // Asked at every position, as a merge asks at every cursor step.
        for from in 0..6000 {
            let r = walk.next(from, |f| {
                scans.set(scans.get() + 1);
                direct(f)
            });
            assert_eq!(r, direct(from), "from {from}");
            if r == Some(from) {
                got.push(from);
            }
        }
        assert_eq!(got, allocated);
        assert_eq!(scans.get(), allocated.len() + 1);
        // Going back (a rewind) scans again.
        assert_eq!(walk.next(0, direct), Some(3));
    }
}
