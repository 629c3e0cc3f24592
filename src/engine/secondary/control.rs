//! The secondary's control path: start (spec 5.6), checkpoint (5.3), stop with and
//! without failover (5.4, 5.5), the delete policy, and the hand-over of a promoted
//! secondary's base to a reprotected primary.

use super::Secondary;
use crate::engine::device::BlockDevice;
use crate::engine::dirty::DirtyMap;
use crate::engine::{Mode, ReplicationError, Stage};
use std::sync::Arc;
use std::sync::atomic::{Ordering::Relaxed, Ordering::SeqCst};
use std::time::Instant;

impl<D: BlockDevice> Secondary<D> {
    // ------------------------------------------------------------------ control path --

    /// `start` (spec 5.6). Device existence and writability are the host's checks.
    pub async fn start(&self, mode: Option<Mode>) -> Result<(), ReplicationError> {
        let _ctl = self.control.lock().await;
        match self.stage() {
            Stage::None => {
                if let Some(m) = mode.filter(|m| *m != Mode::Secondary) {
                    return Err(ReplicationError::ModeMismatch {
                        have: Mode::Secondary,
                        got: m,
                    });
                }
                let _hold = self.gate.hold().await;
                self.empty_overlays();
                self.error.store(false, SeqCst);
                self.stage.set(Stage::Running);
                tracing::info!("replication started (secondary)");
                Ok(())
            }
            Stage::Running | Stage::FailoverFailed => Err(ReplicationError::RunningOrDone),
            Stage::Failover | Stage::Done => Ok(()),
        }
    }

    /// Re-arms COW for every cluster and empties both overlays: epoch bumps, O(1).
    pub(super) fn empty_overlays(&self) {
        self.hidden_map.clear_all();
        self.active_map.clear_all();
    }

    /// Holds I/O, empties both overlays, releases, and counts a checkpoint with its hold.
    async fn checkpoint_held(&self) {
        let t = Instant::now();
        let hold = self.gate.hold().await;
        self.empty_overlays();
        drop(hold);
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let c = &self.counters;
        c.checkpoints.fetch_add(1, Relaxed);
        c.checkpoint_hold_ns_total.fetch_add(ns, Relaxed);
        c.checkpoint_hold_ns_max.fetch_max(ns, Relaxed);
    }

    /// `checkpoint` (spec 5.3): holds new I/O, drains in-flight I/O, then empties.
    pub async fn checkpoint(&self) -> Result<(), ReplicationError> {
        let _ctl = self.control.lock().await;
        match self.stage() {
            Stage::Running => {
                self.checkpoint_held().await;
                Ok(())
            }
            Stage::None | Stage::FailoverFailed => Err(ReplicationError::NotRunning),
            Stage::Failover | Stage::Done => Ok(()),
        }
    }

    /// `stop` (spec 5.4, 5.5). With failover this only switches to `failover` and returns
    /// `true` to the one caller that did so: that caller runs the merge
    /// ([`Secondary::run_merge`]) as a background task. Overlapping calls get `false`.
    pub async fn stop(&self, failover: bool) -> Result<bool, ReplicationError> {
        let _ctl = self.control.lock().await;
        match (self.stage(), failover) {
            (Stage::Running, false) => {
                let _hold = self.gate.hold().await;
                self.empty_overlays();
                self.counters.checkpoints.fetch_add(1, Relaxed);
                self.stage.set(Stage::Done);
                tracing::info!("replication stopped without failover; top now serves the base");
                Ok(false)
            }
            (Stage::Running, true) | (Stage::FailoverFailed, true) => {
                // Hold so that no ingress write that passed its stage check is still on its
                // way to the base when the merge starts.
                let _hold = self.gate.hold().await;
                self.error.store(false, SeqCst);
                self.merge_cursor.store(0, SeqCst);
                self.merge_done.store(0, SeqCst);
                self.merge_total.store(self.overlay_bytes(), SeqCst);
                self.stage.set(Stage::Failover);
                tracing::info!(
                    total_bytes = self.merge_total.load(SeqCst),
                    "failover: merge started"
                );
                Ok(true)
            }
            (Stage::None, _) | (Stage::FailoverFailed, false) => Err(ReplicationError::NotRunning),
            (Stage::Failover, _) | (Stage::Done, _) => Ok(false),
        }
    }

    /// `bdev_replication_reprotect`, engine part: a promoted secondary (`done`) hands its
    /// base over to a primary. From now on top writes still routed here (issued before the
    /// host switched the bdev's role) mark `map`; then in-flight I/O is drained, so when
    /// this returns nothing issued before the switch is still on its way to the base,
    /// except a write that read the old role just before the switch, which `map` catches.
    /// Set once: a second call is refused.
    pub async fn retire(&self, map: Arc<DirtyMap>) -> Result<(), ReplicationError> {
        let _ctl = self.control.lock().await;
        let stage = self.stage();
        if stage != Stage::Done {
            return Err(ReplicationError::NotPromoted { stage });
        }
        if self.retired.set(map).is_err() {
            return Err(ReplicationError::InvalidParam {
                param: "name",
                reason: "already reprotected".into(),
            });
        }
        Ok(())
    }

    /// Waits until no I/O that entered this secondary's gate is in flight.
    pub async fn drain(&self) {
        drop(self.gate.hold().await);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.get().is_some()
    }

    /// True while a failover merge is in progress (a host's delete waits for this).
    pub fn is_merging(&self) -> bool {
        self.stage() == Stage::Failover
    }

    /// Whether `bdev_replication_delete` may proceed (spec 5.5): in `failover_failed` the
    /// overlays hold SVM data the base lacks, so only `force` deletes.
    pub fn check_delete(&self, force: bool) -> Result<(), ReplicationError> {
        if self.stage() == Stage::FailoverFailed && !force {
            return Err(ReplicationError::UnmergedData);
        }
        Ok(())
    }
}
