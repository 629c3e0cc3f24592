//! The primary's background jobs (spec 8): the sync (dirty regions local -> remote) and
//! the online verify (local vs remote, region by region), both under the region locks
//! while guest I/O continues. One job at a time.

use super::{BROKEN, LOCKING, Primary};
use crate::engine::device::{BlockDevice, IoBuf, IoError, Runtime};
use crate::engine::{ReplicationError, Stage};
use futures::StreamExt;
use futures::future::{Either, select};
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// How many mismatching offsets a verify keeps.
pub const FIRST_MISMATCHES: usize = 8;

/// `bdev_replication_start`'s `sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// The operator asserts the disks are equal: the dirty map is cleared.
    None,
    /// Every region dirty, then a background sync.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    InSync,
    Syncing,
    OutOfSync,
    Verifying,
}

/// The `sync` object of a primary's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncStatus {
    pub state: SyncState,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub dirty_bytes: u64,
    pub mismatches: u64,
    pub first_mismatches: Vec<u64>,
    pub detached_requests: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Job {
    Idle = 0,
    Sync = 1,
    Verify = 2,
}

#[derive(Default)]
pub(super) struct Progress {
    total: AtomicU64,
    done: AtomicU64,
    mismatches: AtomicU64,
    first: Mutex<Vec<u64>>,
    pub(super) copies: AtomicU64,
    pub(super) copied_bytes: AtomicU64,
}

/// What a job step does between regions (a host yields, or pauses when out of buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStep {
    Progress,
    Backoff,
}

/// Why a region could not be handled.
enum Fail {
    NoMem,
    /// The remote leg failed or timed out (the link is broken).
    Remote,
    Local,
}

impl<D: BlockDevice + Clone> Primary<D> {
    fn job(&self) -> Job {
        match self.job.load(SeqCst) {
            1 => Job::Sync,
            2 => Job::Verify,
            _ => Job::Idle,
        }
    }

    pub(super) fn begin_job(&self, job: Job) -> Result<(), ReplicationError> {
        if self
            .job
            .compare_exchange(Job::Idle as u8, job as u8, SeqCst, SeqCst)
            .is_err()
        {
            return Err(ReplicationError::Busy(format!(
                "a {} is already running",
                if self.job() == Job::Verify {
                    "verify"
                } else {
                    "sync"
                }
            )));
        }
        self.sync.done.store(0, SeqCst);
        if job == Job::Verify {
            self.sync.total.store(self.bytes(), SeqCst);
            self.sync.mismatches.store(0, SeqCst);
            self.sync
                .first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        } else {
            let bs = self.local.block_size();
            self.sync.total.store(self.dirty.dirty_bytes(bs), SeqCst);
        }
        Ok(())
    }

    fn end_job(&self) {
        self.link.fetch_and(!LOCKING, SeqCst);
        self.job.store(Job::Idle as u8, SeqCst);
    }

    fn bytes(&self) -> u64 {
        self.local.num_blocks() * u64::from(self.local.block_size())
    }

    fn check_job_allowed(&self, op: &'static str) -> Result<(), ReplicationError> {
        let stage = self.stage();
        if stage != Stage::Running {
            return Err(ReplicationError::WrongStage { op, stage });
        }
        let n = self.detached();
        if n > 0 {
            return Err(ReplicationError::Busy(format!(
                "{n} timed-out remote request(s) still pending on the remote leg could land \
                 after the copies; retry {op} once they end (or the remote leg is removed)"
            )));
        }
        Ok(())
    }

    /// `bdev_replication_resync`: re-arms forwarding (a new link generation), marks
    /// everything dirty if `full`, and starts a sync; the caller runs
    /// [`Primary::run_job`]. The sticky error stays until the sync completes.
    pub fn resync(&self, full: bool) -> Result<(), ReplicationError> {
        self.check_job_allowed("resync")?;
        if full {
            self.dirty.mark_all();
        }
        self.begin_job(Job::Sync)?;
        if full {
            let bs = self.local.block_size();
            self.sync.total.store(self.dirty.dirty_bytes(bs), SeqCst);
        }
        self.new_generation(true);
        tracing::info!(full, "resync started");
        Ok(())
    }

    /// `bdev_replication_verify`: starts an online compare; the caller runs
    /// [`Primary::run_job`].
    pub fn verify(&self) -> Result<(), ReplicationError> {
        self.check_job_allowed("verify")?;
        if self.link_broken() {
            return Err(ReplicationError::LinkBroken);
        }
        self.begin_job(Job::Verify)?;
        // Same generation: writes forwarded before need no re-marking (verify writes nothing).
        self.link.fetch_or(LOCKING, SeqCst);
        tracing::info!("verify started");
        Ok(())
    }

    pub fn sync_status(&self) -> SyncStatus {
        let bs = self.local.block_size();
        let dirty_bytes = self.dirty.dirty_bytes(bs);
        let done = self.sync.done.load(SeqCst);
        let job = self.job();
        let state = match job {
            Job::Sync => SyncState::Syncing,
            Job::Verify => SyncState::Verifying,
            Job::Idle if dirty_bytes > 0 || self.link_broken() => SyncState::OutOfSync,
            Job::Idle => SyncState::InSync,
        };
        let mut total = self.sync.total.load(SeqCst);
        if job == Job::Sync {
            total = total.max(done + dirty_bytes);
        }
        SyncStatus {
            state,
            total_bytes: total,
            done_bytes: done,
            dirty_bytes,
            mismatches: self.sync.mismatches.load(SeqCst),
            first_mismatches: self
                .sync
                .first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            detached_requests: self.detached(),
        }
    }

    /// Runs the job a `start` with `sync: "full"`, a resync or a verify began, to its end.
    /// `Ok(())`: completed; `Err`: stopped (a remote failure, the stage changed), the
    /// dirty map kept. `between` runs after each region.
    pub async fn run_job<R, F, Fut>(&self, rt: &R, mut between: F) -> Result<(), ReplicationError>
    where
        R: Runtime,
        F: FnMut(JobStep) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let gen_ = self.link.load(SeqCst) >> super::GEN_SHIFT;
        // Logged at the end: how long a resync takes is what an operator plans around.
        let started = std::time::Instant::now();
        let r = match self.job() {
            Job::Idle => return Ok(()),
            Job::Sync => self.sync_loop(rt, gen_, &mut between).await,
            Job::Verify => self.verify_loop(rt, gen_, &mut between).await,
        };
        let was_sync = self.job() == Job::Sync;
        let secs = started.elapsed().as_secs_f64();
        let bytes = self.sync.done.load(SeqCst);
        self.end_job();
        match &r {
            Ok(()) if was_sync => {
                // The copy completed: the sticky error clears (unless the link broke again).
                self.error.store(false, SeqCst);
                if self.link.load(SeqCst) & BROKEN != 0 {
                    self.error.store(true, SeqCst);
                }
                tracing::info!(bytes, secs, "sync complete: remote in sync");
            }
            Ok(()) => tracing::info!(
                bytes,
                secs,
                mismatches = self.sync.mismatches.load(SeqCst),
                "verify complete"
            ),
            Err(e) => {
                tracing::warn!(error = %e, bytes, secs, "sync/verify stopped; dirty map kept")
            }
        }
        r
    }

    /// Whether the job may go on under generation `gen_`.
    fn still_valid(&self, gen_: u64) -> Result<(), ReplicationError> {
        let link = self.link.load(SeqCst);
        if self.stage() != Stage::Running {
            return Err(ReplicationError::WrongStage {
                op: "sync",
                stage: self.stage(),
            });
        }
        if link >> super::GEN_SHIFT != gen_ || link & BROKEN != 0 {
            return Err(ReplicationError::Io);
        }
        Ok(())
    }

    /// Copies the dirty regions with up to [`Primary::sync_depth`] in flight, each under
    /// its region lock (a copy of one region at a time left the NVMe/TCP path idle for a
    /// round trip per region). Stops issuing at the first remote or local failure, lets
    /// the copies in flight end, and returns the failure (their regions stay dirty).
    async fn sync_loop<R: Runtime, F, Fut>(
        &self,
        rt: &R,
        gen_: u64,
        between: &mut F,
    ) -> Result<(), ReplicationError>
    where
        F: FnMut(JobStep) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let depth = self.sync_depth();
        let mut inflight = FuturesUnordered::new();
        let mut cursor = 0;
        let mut stop = None;
        loop {
            while stop.is_none() && inflight.len() < depth {
                if let Err(e) = self.still_valid(gen_) {
                    stop = Some(e);
                    break;
                }
                match self.dirty.next_dirty(cursor) {
                    Some(r) => {
                        cursor = r + 1;
                        inflight.push(self.sync_region(rt, gen_, r));
                    }
                    // Wrap only once the copies in flight have cleared their regions, so a
                    // region is not queued twice.
                    None if inflight.is_empty() => {
                        if self.dirty.count() == 0 {
                            return Ok(());
                        }
                        // Marked behind the cursor meanwhile: another pass.
                        cursor = 0;
                    }
                    None => break,
                }
            }
            match inflight.next().await {
                None => return Err(stop.unwrap_or(ReplicationError::Io)),
                Some(Ok(step)) => between(step).await,
                Some(Err(e)) => {
                    stop.get_or_insert(e);
                }
            }
        }
    }

    /// Regions a sync keeps in flight: about 1 MiB, from 2 to 32 requests.
    fn sync_depth(&self) -> usize {
        const BYTES_IN_FLIGHT: u64 = 1 << 20;
        (BYTES_IN_FLIGHT / self.config.sync_granularity).clamp(2, 32) as usize
    }

    /// One region of a sync, under its lock: `Ok(Backoff)` when out of buffers (the
    /// region stays dirty for the next pass).
    async fn sync_region<R: Runtime>(
        &self,
        rt: &R,
        gen_: u64,
        r: u64,
    ) -> Result<JobStep, ReplicationError> {
        let _g = self.regions.lock(r).await;
        self.still_valid(gen_)?;
        // Cleared before reading local: a write landing after the read re-marks it (or,
        // holding the lock, waits for the copy).
        if !self.dirty.clear(r) {
            return Ok(JobStep::Progress);
        }
        match self.copy_region(rt, gen_, r).await {
            Ok(()) => Ok(JobStep::Progress),
            Err(f) => {
                self.dirty.mark(r);
                match f {
                    Fail::NoMem => Ok(JobStep::Backoff),
                    Fail::Remote | Fail::Local => Err(ReplicationError::Io),
                }
            }
        }
    }

    /// Copies region `r` local -> remote. The caller owns the region lock.
    async fn copy_region<R: Runtime>(&self, rt: &R, gen_: u64, r: u64) -> Result<(), Fail> {
        let (lba, n) = self.dirty.extent(r);
        let len = n * u64::from(self.local.block_size());
        let buf = self
            .local
            .alloc_buf(len as usize)
            .map_err(|_| Fail::NoMem)?;
        match self.local.read(lba, buf.clone()).await {
            Ok(()) => {}
            Err(IoError::NoMem) => return Err(Fail::NoMem),
            Err(e) => {
                tracing::error!(region = r, error = %e, "sync: reading the local leg failed");
                return Err(Fail::Local);
            }
        }
        let remote = self.remote.clone();
        self.remote_op(
            rt,
            gen_,
            Box::pin(async move { remote.write(lba, buf).await }),
        )
        .await?;
        self.sync.done.fetch_add(len, SeqCst);
        self.sync.copies.fetch_add(1, SeqCst);
        self.sync.copied_bytes.fetch_add(len, SeqCst);
        Ok(())
    }

    /// A remote request of a job, with the remote timeout: a failure or timeout breaks the
    /// link (sticky error); a timed-out request is counted as detached until it ends.
    async fn remote_op<R: Runtime>(
        &self,
        rt: &R,
        gen_: u64,
        op: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), IoError>>>>,
    ) -> Result<(), Fail> {
        match select(op, Box::pin(rt.sleep(self.config.remote_timeout))).await {
            Either::Left((Ok(()), _)) => Ok(()),
            Either::Left((Err(IoError::NoMem), _)) => Err(Fail::NoMem),
            Either::Left((Err(_), _)) => {
                self.record_remote_failure(gen_, false);
                Err(Fail::Remote)
            }
            Either::Right(((), still_running)) => {
                self.record_remote_failure(gen_, true);
                let detached = self.detach_guard();
                rt.spawn(Box::pin(async move {
                    let _ = still_running.await;
                    drop(detached);
                }));
                Err(Fail::Remote)
            }
        }
    }

    async fn verify_loop<R: Runtime, F, Fut>(
        &self,
        rt: &R,
        gen_: u64,
        between: &mut F,
    ) -> Result<(), ReplicationError>
    where
        F: FnMut(JobStep) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut suspects = Vec::new();
        let mut r = 0;
        while r < self.dirty.regions() {
            self.still_valid(gen_)?;
            let step = match self.compare_region(rt, gen_, r).await {
                Ok(equal) => {
                    if !equal {
                        suspects.push(r);
                    }
                    let (_, n) = self.dirty.extent(r);
                    self.sync
                        .done
                        .fetch_add(n * u64::from(self.local.block_size()), SeqCst);
                    r += 1;
                    JobStep::Progress
                }
                Err(Fail::NoMem) => JobStep::Backoff,
                Err(_) => return Err(ReplicationError::Io),
            };
            between(step).await;
        }
        if suspects.is_empty() {
            return Ok(());
        }
        // A write forwarded (unlocked) before the verify began may still have been in
        // flight at the first look: let every such request end, then look again.
        rt.sleep(self.config.remote_timeout).await;
        let bs = u64::from(self.local.block_size());
        for r in suspects {
            loop {
                self.still_valid(gen_)?;
                match self.compare_region(rt, gen_, r).await {
                    Ok(true) => break,
                    Ok(false) => {
                        self.dirty.mark(r);
                        self.sync.mismatches.fetch_add(1, SeqCst);
                        let mut first = self.sync.first.lock().unwrap_or_else(|e| e.into_inner());
                        if first.len() < FIRST_MISMATCHES {
                            first.push(self.dirty.extent(r).0 * bs);
                        }
                        break;
                    }
                    Err(Fail::NoMem) => between(JobStep::Backoff).await,
                    Err(_) => return Err(ReplicationError::Io),
                }
            }
        }
        Ok(())
    }

    /// Compares region `r` of both legs under its lock: `Ok(true)` when equal.
    async fn compare_region<R: Runtime>(&self, rt: &R, gen_: u64, r: u64) -> Result<bool, Fail>
    where
        D::Buf: IoBuf,
    {
        let _g = self.regions.lock(r).await;
        let (lba, n) = self.dirty.extent(r);
        let len = (n * u64::from(self.local.block_size())) as usize;
        let a = self.local.alloc_buf(len).map_err(|_| Fail::NoMem)?;
        let b = self.remote.alloc_buf(len).map_err(|_| Fail::NoMem)?;
        match self.local.read(lba, a.clone()).await {
            Ok(()) => {}
            Err(IoError::NoMem) => return Err(Fail::NoMem),
            Err(_) => return Err(Fail::Local),
        }
        let remote = self.remote.clone();
        let rb = b.clone();
        self.remote_op(
            rt,
            gen_,
            Box::pin(async move { remote.read(lba, rb).await }),
        )
        .await?;
        Ok(a.bytes_equal(&b))
    }
}
