//! One replication bdev as the control plane sees it: its params, its engine, the bdevs it
//! claimed; the control operations, status and saved-config entry both hosts report.

use super::error::RpcError;
use super::params::CreateParams;
use crate::engine::{
    BlockDevice, JobStep, MergeStep, Mode, Primary, PrimaryConfig, ReplicationError, Runtime,
    Secondary, Stage, SyncMode,
};
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::time::Duration;

/// A background task a control operation started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    None,
    /// The failover merge ([`Replica::run_merge`]).
    Merge,
    /// A primary's sync or verify ([`Replica::run_job`]).
    Job,
}

#[allow(clippy::large_enum_variant)] // one per replication bdev
pub enum Role<D: BlockDevice> {
    Primary(Primary<D>),
    Secondary(Secondary<D>),
}

/// The role a replication bdev plays now: the role it was created with, or, after a
/// reprotect, the primary it was promoted to. What hosts' I/O paths route by.
pub enum RoleRef<'a, D: BlockDevice> {
    Primary(&'a Primary<D>),
    Secondary(&'a Secondary<D>),
}

pub struct Replica<D: BlockDevice> {
    /// As created, defaults filled in: what status reports and save_config replays.
    /// After a reprotect, [`Replica::params`] gives the primary's.
    pub params: CreateParams,
    /// The role it was created with; after a reprotect, [`Replica::role`] is the primary.
    pub role: Role<D>,
    /// The claimed bdevs in `CreateParams::leg_params` order: local, remote (primary) or
    /// base, hidden, active (secondary).
    pub legs: Vec<D>,
    /// Set once by `bdev_replication_reprotect` (`reprotect.rs`).
    pub(super) promoted: OnceLock<super::reprotect::Promotion<D>>,
    /// A reprotect holds a claim on its remote leg that the promotion does not own yet: a
    /// delete waits for it (else the claim would outlive the bdev).
    pub(super) reprotecting: std::sync::atomic::AtomicBool,
}

impl<D: BlockDevice> AsRef<Replica<D>> for Replica<D> {
    fn as_ref(&self) -> &Replica<D> {
        self
    }
}

/// A control operation on one replication bdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Start {
        mode: Option<Mode>,
        sync: Option<SyncMode>,
    },
    Checkpoint,
    Stop {
        failover: bool,
    },
}

impl<D: BlockDevice + Clone> Replica<D> {
    /// Builds the engine over opened, claimed legs (`params` validated).
    pub fn new(params: CreateParams, legs: Vec<D>) -> Result<Self, ReplicationError> {
        let leg = |i: usize| legs.get(i).cloned().ok_or(ReplicationError::Io);
        let role = match params.mode {
            Mode::Secondary => Role::Secondary(Secondary::new(
                leg(0)?,
                leg(1)?,
                leg(2)?,
                params.cow_granularity.unwrap_or_default(),
            )?),
            Mode::Primary => Role::Primary(Primary::new(
                leg(0)?,
                leg(1)?,
                PrimaryConfig {
                    remote_timeout: Duration::from_millis(
                        params.remote_timeout_ms.unwrap_or_default(),
                    ),
                    sync_granularity: params
                        .sync_granularity
                        .unwrap_or(crate::engine::DEFAULT_SYNC_GRANULARITY),
                },
            )?),
        };
        Ok(Replica {
            params,
            role,
            legs,
            promoted: OnceLock::new(),
            reprotecting: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.params.name
    }

    /// The current role: one atomic load (the promotion), for hosts' I/O paths.
    #[inline]
    pub fn role(&self) -> RoleRef<'_, D> {
        if let Some(p) = self.promoted.get() {
            return RoleRef::Primary(&p.primary);
        }
        match &self.role {
            Role::Primary(p) => RoleRef::Primary(p),
            Role::Secondary(s) => RoleRef::Secondary(s),
        }
    }

    /// The params in force: as created, or the primary's after a reprotect.
    pub fn params(&self) -> &CreateParams {
        self.promoted.get().map_or(&self.params, |p| &p.params)
    }

    /// The bdevs claimed now, in [`CreateParams::leg_params`] order of [`Replica::params`]
    /// (after a reprotect: the former base and the remote; the overlays were released).
    pub fn current_legs(&self) -> &[D] {
        self.promoted.get().map_or(&self.legs[..], |p| &p.legs[..])
    }

    /// Whether a reprotect turned this (former) secondary into a primary.
    pub fn is_reprotected(&self) -> bool {
        self.promoted.get().is_some()
    }

    pub fn mode(&self) -> Mode {
        match self.role() {
            RoleRef::Primary(_) => Mode::Primary,
            RoleRef::Secondary(_) => Mode::Secondary,
        }
    }

    pub fn stage(&self) -> Stage {
        match self.role() {
            RoleRef::Primary(p) => p.stage(),
            RoleRef::Secondary(s) => s.stage(),
        }
    }

    /// The secondary engine while this bdev is one (not after a reprotect).
    pub fn secondary(&self) -> Option<&Secondary<D>> {
        match self.role() {
            RoleRef::Secondary(s) => Some(s),
            RoleRef::Primary(_) => None,
        }
    }

    /// The primary engine: created as one, or promoted to one by a reprotect.
    pub fn primary(&self) -> Option<&Primary<D>> {
        match self.role() {
            RoleRef::Primary(p) => Some(p),
            RoleRef::Secondary(_) => None,
        }
    }

    /// Runs `op`; says which background task, if any, the caller must run
    /// ([`Replica::run_merge`], [`Replica::run_job`]).
    pub async fn control(&self, op: Control) -> Result<Task, RpcError> {
        let job = |started: bool| if started { Task::Job } else { Task::None };
        let merge = |started: bool| if started { Task::Merge } else { Task::None };
        let r = match (self.role(), op) {
            // Reprotect started replication already; the COLO framework's start of the
            // primary that follows is accepted and ignored (as on a promoted secondary).
            (RoleRef::Primary(p), Control::Start { mode, sync })
                if self.is_reprotected()
                    && p.stage() == Stage::Running
                    && sync != Some(SyncMode::Full)
                    && mode != Some(Mode::Secondary) =>
            {
                Ok(Task::None)
            }
            (RoleRef::Primary(p), Control::Start { mode, sync }) => {
                p.start_with(mode, sync).map(job)
            }
            (RoleRef::Primary(p), Control::Checkpoint) => p.checkpoint().map(|()| Task::None),
            (RoleRef::Primary(p), Control::Stop { failover }) => {
                p.stop(failover).map(|()| Task::None)
            }
            (RoleRef::Secondary(_), Control::Start { sync: Some(_), .. }) => {
                Err(ReplicationError::InvalidParam {
                    param: "sync",
                    reason: "not valid with mode secondary".into(),
                })
            }
            (RoleRef::Secondary(s), Control::Start { mode, .. }) => {
                s.start(mode).await.map(|()| Task::None)
            }
            (RoleRef::Secondary(s), Control::Checkpoint) => {
                s.checkpoint().await.map(|()| Task::None)
            }
            (RoleRef::Secondary(s), Control::Stop { failover }) => {
                s.stop(failover).await.map(merge)
            }
        };
        r.map_err(|e| RpcError::from_engine(self.name(), e))
    }

    fn primary_for(&self, op: &'static str) -> Result<&Primary<D>, RpcError> {
        match self.role() {
            RoleRef::Primary(p) => Ok(p),
            RoleRef::Secondary(_) => Err(RpcError::from_engine(
                self.name(),
                ReplicationError::InvalidParam {
                    param: op,
                    reason: "not valid with mode secondary".into(),
                },
            )),
        }
    }

    /// `bdev_replication_resync`; on success the caller runs [`Replica::run_job`].
    pub fn resync(&self, full: bool) -> Result<(), RpcError> {
        self.primary_for("resync")?
            .resync(full)
            .map_err(|e| RpcError::from_engine(self.name(), e))
    }

    /// `bdev_replication_verify`; on success the caller runs [`Replica::run_job`].
    pub fn verify(&self) -> Result<(), RpcError> {
        self.primary_for("verify")?
            .verify()
            .map_err(|e| RpcError::from_engine(self.name(), e))
    }

    /// A primary's sync or verify job to its end, [`Runtime::pause`] between regions;
    /// logs the outcome.
    pub async fn run_job<R: Runtime>(&self, rt: &R) {
        let RoleRef::Primary(p) = self.role() else {
            return;
        };
        let r = p
            .run_job(rt, |step| rt.pause(step == JobStep::Backoff))
            .await;
        if let Err(e) = r {
            tracing::warn!(name = self.name(), error = %e, "sync/verify stopped");
        }
    }

    /// The failover merge to its end, [`Runtime::pause`] after every cluster (a merge over
    /// devices that complete at once must not hold the reactor from the SVM); logs the
    /// outcome.
    pub async fn run_merge<R: Runtime>(&self, rt: &R) {
        let Some(sec) = self.secondary() else { return };
        match sec
            .run_merge_with(|step| rt.pause(step == MergeStep::Backoff))
            .await
        {
            Ok(MergeStep::Done) => tracing::info!(name = self.name(), "failover merge done"),
            Ok(_) => {}
            Err(e) => tracing::error!(name = self.name(), error = %e, "failover merge failed"),
        }
    }

    /// Whether a delete may proceed now (spec 5.5): refused in `failover_failed` without
    /// `force`. A host waits for a running merge, then asks again.
    pub fn check_delete(&self, force: bool) -> Result<(), RpcError> {
        match self.role() {
            RoleRef::Secondary(s) => s
                .check_delete(force)
                .map_err(|e| RpcError::from_engine(self.name(), e)),
            RoleRef::Primary(_) => Ok(()),
        }
    }

    pub fn is_merging(&self) -> bool {
        self.secondary().is_some_and(|s| s.is_merging())
    }

    /// A `bdev_replication_reprotect` is between claiming its remote leg and its end.
    pub fn is_reprotecting(&self) -> bool {
        self.reprotecting.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn error(&self) -> Value {
        let r = match self.role() {
            RoleRef::Primary(p) => p.get_error(),
            RoleRef::Secondary(s) => s.get_error(),
        };
        match r {
            Ok(()) => Value::Null,
            Err(e) => Value::from(e.to_string()),
        }
    }

    /// A `bdev_replication_get_error` entry.
    pub fn get_error(&self) -> Value {
        json!({"name": self.name(), "stage": self.stage(), "error": self.error()})
    }

    /// `bdev_replication_get_dirty_map` of a primary: the regions that may differ on its
    /// remote, as `[offset, length]` byte extents (a snapshot); what a promoted peer's
    /// `reprotect` takes as `peer_dirty_extents`.
    pub fn dirty_map(&self) -> Result<Value, RpcError> {
        let Some(p) = self.primary() else {
            return Err(RpcError::from_engine(
                self.name(),
                ReplicationError::InvalidParam {
                    param: "get_dirty_map",
                    reason: "not valid with mode secondary".into(),
                },
            ));
        };
        let bs = u64::from(p.local().block_size());
        let extents: Vec<[u64; 2]> = p
            .dirty()
            .extents()
            .into_iter()
            .map(|(lba, n)| [lba * bs, n * bs])
            .collect();
        Ok(json!({
            "name": self.name(),
            "block_size": bs,
            "sync_granularity": p.config().sync_granularity,
            "dirty_bytes": p.dirty().dirty_bytes(p.local().block_size()),
            "extents": extents,
        }))
    }

    /// A `bdev_replication_get_status` entry, also `driver_specific.replication`.
    pub fn status(&self) -> Value {
        let p = self.params();
        match self.role() {
            RoleRef::Secondary(sec) => {
                let (active_blocks, hidden_clusters) = sec.allocated();
                json!({
                    "name": p.name,
                    "mode": "secondary",
                    "stage": sec.stage(),
                    "error": self.error(),
                    "cow_granularity": sec.geometry().cow_granularity(),
                    "ingress_name": p.ingress_name,
                    "base_bdev": p.base_bdev,
                    "hidden_bdev": p.hidden_bdev,
                    "active_bdev": p.active_bdev,
                    "counters": sec.counters(),
                    "allocated": {"active_blocks": active_blocks, "hidden_clusters": hidden_clusters},
                    "merge": sec.merge_progress(),
                })
            }
            RoleRef::Primary(pr) => json!({
                "name": p.name,
                "mode": "primary",
                "reprotected": self.is_reprotected(),
                "stage": pr.stage(),
                "error": self.error(),
                "cow_granularity": null,
                "ingress_name": null,
                "local_bdev": p.local_bdev,
                "remote_bdev": p.remote_bdev,
                "remote_timeout_ms": p.remote_timeout_ms,
                "sync_granularity": pr.config().sync_granularity,
                "link_broken": pr.link_broken(),
                "counters": pr.counters(),
                "sync": pr.sync_status(),
                "merge": {"total_bytes": 0, "done_bytes": 0},
            }),
        }
    }

    /// The `save_config` entry that recreates this replication bdev.
    pub fn config_entry(&self) -> Value {
        json!({"method": "bdev_replication_create", "params": self.params()})
    }
}
