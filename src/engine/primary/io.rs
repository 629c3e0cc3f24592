//! The primary's driver: reads from the local leg; writes to both legs per the plan, under
//! the region locks while a sync or verify runs; dirty marking of everything the remote
//! may have missed.

use super::{Primary, PrimaryWritePlan};
use crate::engine::cluster_lock::ClusterGuard;
use crate::engine::device::{BlockDevice, IoBuf, IoError, Runtime, WriteOp};
use futures::future::{Either, select};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Gives back a detached remote request's count when it really ends (or is dropped).
pub(super) struct Detached(pub(super) Arc<AtomicU64>);

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = self
            .0
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
    }
}

impl<D: BlockDevice + Clone> Primary<D> {
    pub async fn read(&self, lba: u64, buf: D::Buf) -> Result<(), IoError> {
        self.local.read(lba, buf).await
    }

    pub async fn write<R: Runtime>(&self, rt: &R, lba: u64, buf: D::Buf) -> Result<(), IoError> {
        self.modify(rt, lba, Some(WriteOp::Data(buf))).await
    }

    pub async fn write_zeroes<R: Runtime>(&self, rt: &R, lba: u64, n: u64) -> Result<(), IoError> {
        self.modify(rt, lba, Some(WriteOp::Zeroes(n))).await
    }

    pub async fn unmap<R: Runtime>(&self, rt: &R, lba: u64, n: u64) -> Result<(), IoError> {
        self.modify(rt, lba, Some(WriteOp::Unmap(n))).await
    }

    pub async fn flush<R: Runtime>(&self, rt: &R) -> Result<(), IoError> {
        self.modify(rt, 0, None).await
    }

    /// Takes the region locks of `[lba, lba + n)` in ascending order.
    pub(super) async fn lock_range(&self, lba: u64, n: u64) -> Vec<ClusterGuard<'_>> {
        let mut g = Vec::new();
        for r in self.dirty.regions_of(lba, n) {
            g.push(self.regions.lock(r).await);
        }
        g
    }

    /// `op == None` is a flush. Completes when the local leg has completed and the remote
    /// leg has completed, failed or timed out; a timed-out remote request keeps running on
    /// its own (holding its buffer) until it really ends, counted as detached.
    async fn modify<R: Runtime>(
        &self,
        rt: &R,
        lba: u64,
        op: Option<WriteOp<D::Buf>>,
    ) -> Result<(), IoError> {
        let bs = self.local.block_size();
        let nblocks = op.as_ref().map_or(0, |o| o.nblocks(bs));
        let plan = self.plan_write();
        if op.is_none() {
            let both = !matches!(plan, PrimaryWritePlan::LocalOnly);
            self.count_flush(
                self.local.supports_flush(),
                both && self.remote.supports_flush(),
            );
        }
        let (link_gen, locked) = match plan {
            PrimaryWritePlan::LocalOnly => {
                let r = issue(self.local.clone(), lba, op).await;
                if nblocks > 0 {
                    self.local_only_done(lba, nblocks);
                }
                return r;
            }
            PrimaryWritePlan::Both { link_gen } => (link_gen, false),
            PrimaryWritePlan::Locked { link_gen } => (link_gen, true),
        };
        let _guards = match locked && nblocks > 0 {
            true => self.lock_range(lba, nblocks).await,
            false => Vec::new(),
        };
        self.count_forwarded();
        let local = issue(self.local.clone(), lba, op.clone());
        let remote = Box::pin(issue(self.remote.clone(), lba, op));
        let remote_leg = async {
            match select(remote, Box::pin(rt.sleep(self.config.remote_timeout))).await {
                Either::Left((Ok(()), _)) => true,
                Either::Left((Err(_), _)) => {
                    self.record_remote_write_failure(link_gen, false, lba, nblocks);
                    false
                }
                Either::Right(((), still_running)) => {
                    self.record_remote_write_failure(link_gen, true, lba, nblocks);
                    let detached = self.detach_guard();
                    rt.spawn(Box::pin(async move {
                        let _ = still_running.await;
                        drop(detached);
                    }));
                    false
                }
            }
        };
        let (local_result, remote_ok) = futures::join!(local, remote_leg);
        if nblocks > 0 {
            if !remote_ok {
                // Again now that the local leg has completed: a copy that ran between the
                // failure and the local completion may have read the old local data.
                self.dirty.mark_range(lba, nblocks);
            }
            if !locked {
                self.forwarded_done(link_gen, lba, nblocks);
            }
        }
        local_result
    }
}

pub(super) async fn issue<D: BlockDevice>(
    dev: D,
    lba: u64,
    op: Option<WriteOp<D::Buf>>,
) -> Result<(), IoError>
where
    D::Buf: IoBuf,
{
    match op {
        Some(op) => op.issue(&dev, lba).await,
        // A leg without flush support is skipped, never a reason to fail (spec 4).
        None if !dev.supports_flush() => Ok(()),
        None => dev.flush().await,
    }
}
