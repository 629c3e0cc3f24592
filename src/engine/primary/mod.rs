//! Primary node: reads from the local leg; writes to the local leg and, while replication
//! runs, to the remote leg (the secondary's ingress over NVMe-oF). A remote failure is
//! recorded, never returned, and breaks the link: forwarding after a gap is useless.
//! Regions that may differ on the remote are kept in a dirty map; the background sync and
//! verify jobs (`sync.rs`) copy and compare them (spec 8, docs/protection.md).

mod io;
mod sync;

pub use sync::{SyncMode, SyncState, SyncStatus};
pub mod sync_job {
    pub use super::sync::JobStep;
}

use crate::engine::cluster_lock::ClusterLocks;
use crate::engine::device::BlockDevice;
use crate::engine::dirty::{DirtyMap, MAX_SYNC_GRANULARITY};
use crate::engine::shard::ShardedCount;
use crate::engine::stage::AtomicStage;
use crate::engine::{Mode, ReplicationError, Stage};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

/// Bits of the link word: the link is broken; a sync or verify runs (guest writes take
/// the region locks). The link generation is the rest.
const BROKEN: u64 = 1;
const LOCKING: u64 = 2;
const GEN_SHIFT: u32 = 2;

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
    /// Bytes per dirty-map region: a power of two, at least the block size.
    pub sync_granularity: u64,
}

impl Default for PrimaryConfig {
    fn default() -> Self {
        PrimaryConfig {
            remote_timeout: Duration::from_millis(DEFAULT_REMOTE_TIMEOUT_MS),
            sync_granularity: crate::engine::dirty::DEFAULT_SYNC_GRANULARITY,
        }
    }
}

/// How a primary write is routed. The link generation goes back to
/// [`Primary::record_remote_failure`] (a late failure from before a `start` does not break
/// the current link) and to [`Primary::forwarded_done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryWritePlan {
    /// Local leg only; a host calls [`Primary::local_only_done`] when it completes.
    LocalOnly,
    /// Both legs, no locks (the hot path); a host calls [`Primary::forwarded_done`] when
    /// both legs have completed.
    Both { link_gen: u64 },
    /// A sync or verify runs: both legs under the region locks (the engine's driver,
    /// [`Primary::write`]; hosts with fast paths send these there).
    Locked { link_gen: u64 },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PrimaryCounters {
    pub forwarded: u64,
    /// Flushes sent to the local and to the remote leg.
    pub local_flushes: u64,
    pub remote_flushes: u64,
    pub remote_failures: u64,
    pub remote_timeouts: u64,
    /// Regions copied by sync jobs, and their bytes.
    pub sync_copies: u64,
    pub sync_bytes: u64,
}

pub struct Primary<D: BlockDevice> {
    local: D,
    remote: D,
    config: PrimaryConfig,
    stage: AtomicStage,
    /// Generation (bumped by start, stop and resync) and the BROKEN and LOCKING bits: one
    /// load on the hot path. A remote failure of an older generation is stale.
    link: AtomicU64,
    error: AtomicBool,
    /// Shared with a retired secondary's late writes after a reprotect.
    dirty: Arc<DirtyMap>,
    /// Per-region serialisation of sync copies, verify compares and (while a job runs)
    /// guest writes.
    regions: ClusterLocks,
    /// Remote requests that timed out but have not ended yet (guest forwards and copies).
    detached: Arc<AtomicU64>,
    job: AtomicU8,
    sync: sync::Progress,
    /// Bumped by every forwarded write, on the submitting reactor's own line.
    forwarded: ShardedCount,
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
        let g = config.sync_granularity;
        let bs = u64::from(local.block_size());
        if !g.is_power_of_two() || g < bs || g > MAX_SYNC_GRANULARITY {
            return Err(ReplicationError::InvalidParam {
                param: "sync_granularity",
                reason: format!(
                    "{g} must be a power of two from the block size ({bs}) to {MAX_SYNC_GRANULARITY}"
                ),
            });
        }
        Ok(Primary {
            dirty: Arc::new(DirtyMap::new(local.num_blocks(), g / bs)),
            local,
            remote,
            config,
            stage: AtomicStage::default(),
            link: AtomicU64::new(0),
            error: AtomicBool::new(false),
            regions: ClusterLocks::default(),
            detached: Arc::default(),
            job: AtomicU8::new(0),
            sync: sync::Progress::default(),
            forwarded: ShardedCount::default(),
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
        self.link.load(SeqCst) & BROKEN != 0
    }
    fn link_gen(&self) -> u64 {
        self.link.load(SeqCst) >> GEN_SHIFT
    }
    /// The dirty map (regions that may differ on the remote).
    pub fn dirty(&self) -> &DirtyMap {
        &self.dirty
    }
    /// The dirty map, shared: a retired secondary marks its late writes in it
    /// ([`crate::engine::Secondary::retire`]).
    pub fn dirty_map(&self) -> Arc<DirtyMap> {
        self.dirty.clone()
    }
    /// Timed-out remote requests still pending.
    pub fn detached(&self) -> u64 {
        self.detached.load(SeqCst)
    }

    pub fn counters(&self) -> PrimaryCounters {
        PrimaryCounters {
            forwarded: u64::try_from(self.forwarded.sum(Relaxed)).unwrap_or(0),
            local_flushes: self.local_flushes.load(Relaxed),
            remote_flushes: self.remote_flushes.load(Relaxed),
            remote_failures: self.remote_failures.load(Relaxed),
            remote_timeouts: self.remote_timeouts.load(Relaxed),
            sync_copies: self.sync.copies.load(Relaxed),
            sync_bytes: self.sync.copied_bytes.load(Relaxed),
        }
    }

    // ---------------------------------------------------------------------- core --

    pub fn plan_write(&self) -> PrimaryWritePlan {
        if self.stage() != Stage::Running {
            return PrimaryWritePlan::LocalOnly;
        }
        let link = self.link.load(SeqCst);
        let link_gen = link >> GEN_SHIFT;
        match link & (BROKEN | LOCKING) {
            0 => PrimaryWritePlan::Both { link_gen },
            LOCKING => PrimaryWritePlan::Locked { link_gen },
            _ => PrimaryWritePlan::LocalOnly,
        }
    }

    /// A write (or write_zeroes/unmap) that was not forwarded has completed (or failed) on
    /// the local leg: its regions may now differ on the remote.
    pub fn local_only_done(&self, lba: u64, nblocks: u64) {
        self.dirty.mark_range(lba, nblocks);
    }

    /// A write forwarded unlocked under `link_gen` has completed on both legs. If a resync
    /// started meanwhile (new generation), its copy may have read the local leg before this
    /// write reached it: mark the regions so the sync copies them again.
    pub fn forwarded_done(&self, link_gen: u64, lba: u64, nblocks: u64) {
        if self.link_gen() != link_gen {
            self.dirty.mark_range(lba, nblocks);
        }
    }

    /// A forwarded write's remote leg failed or timed out: mark its regions, then record
    /// the failure.
    pub fn record_remote_write_failure(
        &self,
        link_gen: u64,
        timed_out: bool,
        lba: u64,
        nblocks: u64,
    ) {
        self.dirty.mark_range(lba, nblocks);
        self.record_remote_failure(link_gen, timed_out);
    }

    /// A remote request timed out but is still pending: resync and verify are refused
    /// until [`Primary::detached_done`] (it could land after a later copy).
    pub fn detach(&self) {
        self.detached.fetch_add(1, SeqCst);
    }
    pub fn detached_done(&self) {
        drop(io::Detached(self.detached.clone()));
    }
    /// [`Primary::detach`], given back when the returned guard drops.
    fn detach_guard(&self) -> io::Detached {
        self.detach();
        io::Detached(self.detached.clone())
    }

    /// For hosts that forward on their own fast path (the driver counts its own).
    pub fn count_forwarded(&self) {
        self.forwarded.add(1, Relaxed);
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
        let mut cur = self.link.load(SeqCst);
        let was_broken = loop {
            if cur >> GEN_SHIFT != link_gen {
                return;
            }
            match self
                .link
                .compare_exchange(cur, cur | BROKEN, SeqCst, SeqCst)
            {
                Ok(_) => break cur & BROKEN != 0,
                Err(now) => cur = now,
            }
        };
        self.remote_failures.fetch_add(1, Relaxed);
        if timed_out {
            self.remote_timeouts.fetch_add(1, Relaxed);
        }
        self.error.store(true, SeqCst);
        if !was_broken {
            tracing::warn!(
                timed_out,
                "remote leg failed: replication link broken, continuing locally"
            );
        }
    }

    /// The remote leg went away (hot-remove): record it for the current run.
    pub fn break_link(&self) {
        self.record_remote_failure(self.link_gen(), false);
    }

    pub fn get_error(&self) -> Result<(), ReplicationError> {
        match self.stage() {
            Stage::None => Err(ReplicationError::NotRunning),
            _ if self.error.load(SeqCst) => Err(ReplicationError::Io),
            _ => Ok(()),
        }
    }

    // -------------------------------------------------------------------- control --

    /// `start` with `sync: "none"`: the operator asserts the disks are equal.
    pub fn start(&self, mode: Option<Mode>) -> Result<(), ReplicationError> {
        self.start_with(mode, None).map(|_| ())
    }

    /// `Ok(true)`: a full sync was requested; the caller runs [`Primary::run_job`] as a
    /// background task.
    pub fn start_with(
        &self,
        mode: Option<Mode>,
        sync: Option<SyncMode>,
    ) -> Result<bool, ReplicationError> {
        match self.stage() {
            Stage::None => {
                if let Some(m) = mode.filter(|m| *m != Mode::Primary) {
                    return Err(ReplicationError::ModeMismatch {
                        have: Mode::Primary,
                        got: m,
                    });
                }
                let full = sync == Some(SyncMode::Full);
                if full {
                    self.dirty.mark_all();
                    self.begin_job(sync::Job::Sync)?;
                } else {
                    // The operator asserts the disks are equal.
                    self.dirty.clear_all();
                }
                self.reset_link(full);
                self.stage.set(Stage::Running);
                tracing::info!(full_sync = full, "replication started (primary)");
                Ok(full)
            }
            Stage::Running | Stage::FailoverFailed => Err(ReplicationError::RunningOrDone),
            stage @ (Stage::Failover | Stage::Done) if sync == Some(SyncMode::Full) => {
                Err(ReplicationError::WrongStage { op: "sync", stage })
            }
            Stage::Failover | Stage::Done => Ok(false),
        }
    }

    /// `bdev_replication_reprotect`'s start of a fresh primary built over a promoted
    /// secondary's base (stage `none`): `Full` marks every region; `None` keeps the map
    /// clean, except with `changed` (incremental): the regions of that map (over the same
    /// blocks: the promoted secondary's changes since the last checkpoint) are marked, and
    /// the block extents `peer` (the former primary's dirty map). A sync begins
    /// when anything is dirty (`Ok(true)`: the caller runs [`Primary::run_job`]).
    pub fn start_promoted(
        &self,
        sync: SyncMode,
        changed: Option<&DirtyMap>,
        peer: &[(u64, u64)],
    ) -> Result<bool, ReplicationError> {
        if self.stage() != Stage::None {
            return Err(ReplicationError::RunningOrDone);
        }
        if sync == SyncMode::Full {
            self.dirty.mark_all();
        } else if let Some(map) = changed {
            for r in map.iter() {
                let (lba, n) = map.extent(r);
                self.dirty.mark_range(lba, n);
            }
        }
        if sync != SyncMode::Full {
            for &(lba, n) in peer {
                self.dirty.mark_range(lba, n);
            }
        }
        let job = self.dirty.count() > 0;
        if job {
            self.begin_job(sync::Job::Sync)?;
        }
        self.reset_link(job);
        self.stage.set(Stage::Running);
        tracing::info!(
            sync = ?sync,
            incremental = changed.is_some(),
            dirty_bytes = self.dirty.dirty_bytes(self.local.block_size()),
            "replication started (reprotected primary)"
        );
        Ok(job)
    }

    /// A no-op in every stage (spec 4): the checkpoint is the secondary's business.
    pub fn checkpoint(&self) -> Result<(), ReplicationError> {
        Ok(())
    }

    /// With or without failover: `running` becomes `done` and forwarding ends.
    pub fn stop(&self, _failover: bool) -> Result<(), ReplicationError> {
        match self.stage() {
            Stage::Running => {
                self.reset_link(false);
                self.stage.set(Stage::Done);
                tracing::info!("replication stopped (primary)");
                Ok(())
            }
            Stage::None | Stage::FailoverFailed => Err(ReplicationError::NotRunning),
            Stage::Failover | Stage::Done => Ok(()),
        }
    }

    /// A new link generation, not broken; `locking` while a sync job is about to run.
    /// Clears the sticky error.
    fn reset_link(&self, locking: bool) {
        self.new_generation(locking);
        self.error.store(false, SeqCst);
    }

    fn new_generation(&self, locking: bool) {
        let flags = if locking { LOCKING } else { 0 };
        let _ = self.link.fetch_update(SeqCst, SeqCst, |l| {
            Some((((l >> GEN_SHIFT) + 1) << GEN_SHIFT) | flags)
        });
    }
}
