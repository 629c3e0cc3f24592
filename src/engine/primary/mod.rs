//! Primary node: reads from the local leg; writes to the local leg and, while replication
//! runs, to the remote leg (the secondary's ingress over NVMe-oF). A remote failure is
//! recorded, never returned, and breaks the link: forwarding after a gap is useless.

use crate::engine::device::{BlockDevice, IoBuf, IoError, Runtime, WriteOp};
use crate::engine::stage::AtomicStage;
use crate::engine::{Mode, ReplicationError, Stage};
use futures::future::{Either, select};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

/// A remote write or flush still pending after this long breaks the link. Long enough to
/// ride out a TCP retransmission or two on a healthy link, short enough that a frozen
/// secondary stalls the primary VM for about a second at most.
pub const DEFAULT_REMOTE_TIMEOUT_MS: u64 = 1000;

/// Upper bound of `remote_timeout_ms` (one hour): longer would stall a guest past any use,
/// and the bound keeps every host's tick arithmetic far from overflow.
pub const MAX_REMOTE_TIMEOUT_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryConfig {
    pub remote_timeout: Duration,
}

impl Default for PrimaryConfig {
    fn default() -> Self {
        PrimaryConfig {
            remote_timeout: Duration::from_millis(DEFAULT_REMOTE_TIMEOUT_MS),
        }
    }
}

/// How a primary write is routed. `Both` carries the link generation to pass back to
/// [`Primary::record_remote_failure`], so a late failure from before a `start` is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryWritePlan {
    LocalOnly,
    Both { link_gen: u64 },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PrimaryCounters {
    pub forwarded: u64,
    /// Flushes sent to the local and to the remote leg.
    pub local_flushes: u64,
    pub remote_flushes: u64,
    pub remote_failures: u64,
    pub remote_timeouts: u64,
}

pub struct Primary<D: BlockDevice> {
    local: D,
    remote: D,
    config: PrimaryConfig,
    stage: AtomicStage,
    /// Bumped by start and stop; a remote failure of an older generation is stale.
    link_gen: AtomicU64,
    link_broken: AtomicBool,
    error: AtomicBool,
    forwarded: AtomicU64,
    local_flushes: AtomicU64,
    remote_flushes: AtomicU64,
    remote_failures: AtomicU64,
    remote_timeouts: AtomicU64,
}

impl<D: BlockDevice + Clone> Primary<D> {
    pub fn new(local: D, remote: D, config: PrimaryConfig) -> Result<Self, ReplicationError> {
        if remote.block_size() != local.block_size() {
            return Err(ReplicationError::InvalidParam {
                param: "remote_bdev",
                reason: format!(
                    "block size {} differs from the local bdev's {}",
                    remote.block_size(),
                    local.block_size()
                ),
            });
        }
        if remote.num_blocks() < local.num_blocks() {
            return Err(ReplicationError::InvalidParam {
                param: "remote_bdev",
                reason: format!(
                    "{} blocks is smaller than the local bdev's {}",
                    remote.num_blocks(),
                    local.num_blocks()
                ),
            });
        }
        let ms = config.remote_timeout.as_millis();
        if ms == 0 || ms > u128::from(MAX_REMOTE_TIMEOUT_MS) {
            return Err(ReplicationError::InvalidParam {
                param: "remote_timeout_ms",
                reason: format!("must be between 1 and {MAX_REMOTE_TIMEOUT_MS}, got {ms}"),
            });
        }
        Ok(Primary {
            local,
            remote,
            config,
            stage: AtomicStage::default(),
            link_gen: AtomicU64::new(0),
            link_broken: AtomicBool::new(false),
            error: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            local_flushes: AtomicU64::new(0),
            remote_flushes: AtomicU64::new(0),
            remote_failures: AtomicU64::new(0),
            remote_timeouts: AtomicU64::new(0),
        })
    }

    pub fn stage(&self) -> Stage {
        self.stage.get()
    }
    pub fn config(&self) -> PrimaryConfig {
        self.config
    }
    pub fn local(&self) -> &D {
        &self.local
    }
    pub fn remote(&self) -> &D {
        &self.remote
    }
    pub fn link_broken(&self) -> bool {
        self.link_broken.load(SeqCst)
    }

    pub fn counters(&self) -> PrimaryCounters {
        PrimaryCounters {
            forwarded: self.forwarded.load(Relaxed),
            local_flushes: self.local_flushes.load(Relaxed),
            remote_flushes: self.remote_flushes.load(Relaxed),
            remote_failures: self.remote_failures.load(Relaxed),
            remote_timeouts: self.remote_timeouts.load(Relaxed),
        }
    }

    // ---------------------------------------------------------------------- core --

    pub fn plan_write(&self) -> PrimaryWritePlan {
        if self.stage() == Stage::Running && !self.link_broken.load(Relaxed) {
            PrimaryWritePlan::Both {
                link_gen: self.link_gen.load(Relaxed),
            }
        } else {
            PrimaryWritePlan::LocalOnly
        }
    }

    /// For hosts that forward on their own fast path (the driver counts its own).
    pub fn count_forwarded(&self) {
        self.forwarded.fetch_add(1, Relaxed);
    }

    /// For hosts that send flushes on their own fast path.
    pub fn count_flush(&self, local: bool, remote: bool) {
        if local {
            self.local_flushes.fetch_add(1, Relaxed);
        }
        if remote {
            self.remote_flushes.fetch_add(1, Relaxed);
        }
    }

    /// Records a failed (or timed-out) remote request and stops forwarding.
    pub fn record_remote_failure(&self, link_gen: u64, timed_out: bool) {
        if self.link_gen.load(SeqCst) != link_gen {
            return;
        }
        self.remote_failures.fetch_add(1, Relaxed);
        if timed_out {
            self.remote_timeouts.fetch_add(1, Relaxed);
        }
        self.error.store(true, SeqCst);
        if !self.link_broken.swap(true, SeqCst) {
            tracing::warn!(
                timed_out,
                "remote leg failed: replication link broken, continuing locally"
            );
        }
    }

    /// The remote leg went away (hot-remove): record it for the current run.
    pub fn break_link(&self) {
        self.record_remote_failure(self.link_gen.load(SeqCst), false);
    }

    pub fn get_error(&self) -> Result<(), ReplicationError> {
        match self.stage() {
            Stage::None => Err(ReplicationError::NotRunning),
            _ if self.error.load(SeqCst) => Err(ReplicationError::Io),
            _ => Ok(()),
        }
    }

    // -------------------------------------------------------------------- control --

    pub fn start(&self, mode: Option<Mode>) -> Result<(), ReplicationError> {
        match self.stage() {
            Stage::None => {
                if let Some(m) = mode.filter(|m| *m != Mode::Primary) {
                    return Err(ReplicationError::ModeMismatch {
                        have: Mode::Primary,
                        got: m,
                    });
                }
                self.reset_link();
                self.stage.set(Stage::Running);
                tracing::info!("replication started (primary)");
                Ok(())
            }
            Stage::Running | Stage::FailoverFailed => Err(ReplicationError::RunningOrDone),
            Stage::Failover | Stage::Done => Ok(()),
        }
    }

    /// A no-op in every stage (spec 4): the checkpoint is the secondary's business.
    pub fn checkpoint(&self) -> Result<(), ReplicationError> {
        Ok(())
    }

    /// With or without failover: `running` becomes `done` and forwarding ends.
    pub fn stop(&self, _failover: bool) -> Result<(), ReplicationError> {
        match self.stage() {
            Stage::Running => {
                self.reset_link();
                self.stage.set(Stage::Done);
                tracing::info!("replication stopped (primary)");
                Ok(())
            }
            Stage::None | Stage::FailoverFailed => Err(ReplicationError::NotRunning),
            Stage::Failover | Stage::Done => Ok(()),
        }
    }

    fn reset_link(&self) {
        self.link_gen.fetch_add(1, SeqCst);
        self.link_broken.store(false, SeqCst);
        self.error.store(false, SeqCst);
    }

    // --------------------------------------------------------------------- driver --

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

    /// `op == None` is a flush. Completes when the local leg has completed and the remote
    /// leg has completed, failed or timed out; a timed-out remote request keeps running on
    /// its own (holding its buffer) until it really ends.
    async fn modify<R: Runtime>(
        &self,
        rt: &R,
        lba: u64,
        op: Option<WriteOp<D::Buf>>,
    ) -> Result<(), IoError> {
        let local = issue(self.local.clone(), lba, op.clone());
        let plan = self.plan_write();
        if op.is_none() {
            let both = matches!(plan, PrimaryWritePlan::Both { .. });
            self.count_flush(
                self.local.supports_flush(),
                both && self.remote.supports_flush(),
            );
        }
        let PrimaryWritePlan::Both { link_gen } = plan else {
            return local.await;
        };
        self.count_forwarded();
        let remote = Box::pin(issue(self.remote.clone(), lba, op));
        let remote_leg = async {
            match select(remote, Box::pin(rt.sleep(self.config.remote_timeout))).await {
                Either::Left((Ok(()), _)) => {}
                Either::Left((Err(_), _)) => self.record_remote_failure(link_gen, false),
                Either::Right(((), still_running)) => {
                    self.record_remote_failure(link_gen, true);
                    rt.spawn(Box::pin(async move {
                        let _ = still_running.await;
                    }));
                }
            }
        };
        let (local_result, ()) = futures::join!(local, remote_leg);
        local_result
    }
}

async fn issue<D: BlockDevice>(dev: D, lba: u64, op: Option<WriteOp<D::Buf>>) -> Result<(), IoError>
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
