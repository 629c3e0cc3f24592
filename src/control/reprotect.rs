//! `bdev_replication_reprotect` (spec 8): a promoted secondary (stage `done`) becomes a
//! primary replicating to a new secondary, in place: same bdev, same name, same exports and
//! guest connections. The former base is the local leg, `remote_bdev` the remote one; the
//! overlays are released and the ingress face goes away (docs/protection.md).

use super::error::RpcError;
use super::params::CreateParams;
use super::replica::{Replica, Task};
use crate::engine::{BlockDevice, Mode, Primary, PrimaryConfig, ReplicationError, SyncMode};
use serde::Deserialize;
use std::time::Duration;

/// What a reprotect switched a replication bdev to; set once.
pub struct Promotion<D: BlockDevice> {
    /// The primary's params (`local_bdev` = the former base): status and save_config.
    pub params: CreateParams,
    pub primary: Primary<D>,
    /// Claimed now: the former base and the remote leg.
    pub legs: Vec<D>,
}

/// `bdev_replication_reprotect`'s `sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReprotectSync {
    /// The operator asserts both disks are equal: nothing is copied.
    None,
    /// Every region is copied in the background (the default).
    Full,
    /// Only what this node changed since the last common checkpoint (the overlays merged
    /// at failover and every write since): for a new secondary that is the former
    /// primary's disk, whose own changes after that checkpoint all reached this node.
    Incremental,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReprotectParams {
    pub name: String,
    pub remote_bdev: String,
    /// Default `"full"`.
    pub sync: Option<ReprotectSync>,
    /// As `bdev_replication_create`'s for a primary; defaults filled in.
    pub remote_timeout_ms: Option<u64>,
    pub sync_granularity: Option<u64>,
    /// The former primary's part of the map exchange: `[offset, length]` byte extents (its
    /// `bdev_replication_get_dirty_map`), copied too; only with `sync: "incremental"`.
    pub peer_dirty_extents: Option<Vec<(u64, u64)>>,
}

/// How many extents `peer_dirty_extents` may hold (a map of alternating regions of a
/// 64 GiB disk at 64 KiB is half a million; more is not a dirty map).
pub const MAX_PEER_EXTENTS: usize = 1 << 20;

impl<D: BlockDevice + Clone> Replica<D> {
    /// Whether this bdev can be reprotected now: a secondary (never reprotected) in `done`.
    pub fn check_reprotect(&self) -> Result<(), RpcError> {
        let e = match self.secondary() {
            None => ReplicationError::InvalidParam {
                param: "reprotect",
                reason: if self.is_reprotected() {
                    "not valid with mode primary (already reprotected)".into()
                } else {
                    "not valid with mode primary".into()
                },
            },
            Some(s) if s.stage() != crate::engine::Stage::Done => {
                ReplicationError::NotPromoted { stage: s.stage() }
            }
            Some(_) => return Ok(()),
        };
        Err(RpcError::from_engine(self.name(), e))
    }

    /// The primary's create params (validated, defaults filled in) for `p`.
    pub fn reprotect_params(&self, p: &ReprotectParams) -> Result<CreateParams, RpcError> {
        CreateParams {
            name: self.params.name.clone(),
            mode: Mode::Primary,
            local_bdev: self.params.base_bdev.clone(),
            remote_bdev: Some(p.remote_bdev.clone()),
            remote_timeout_ms: p.remote_timeout_ms,
            base_bdev: None,
            hidden_bdev: None,
            active_bdev: None,
            ingress_name: None,
            cow_granularity: None,
            sync_granularity: p.sync_granularity,
        }
        .validated()
    }

    /// `peer_dirty_extents` checked against this bdev's disk, as block extents.
    pub fn peer_extents(&self, p: &ReprotectParams) -> Result<Vec<(u64, u64)>, RpcError> {
        let Some(ext) = &p.peer_dirty_extents else {
            return Ok(Vec::new());
        };
        let bad = |reason: String| RpcError::invalid("peer_dirty_extents", reason);
        if p.sync != Some(ReprotectSync::Incremental) {
            return Err(bad("only valid with sync \"incremental\"".into()));
        }
        if ext.len() > MAX_PEER_EXTENTS {
            return Err(bad(format!(
                "{} extents, more than {MAX_PEER_EXTENTS}",
                ext.len()
            )));
        }
        let Some(sec) = self.secondary() else {
            return Err(RpcError::from_engine(self.name(), ReplicationError::Io));
        };
        let bs = u64::from(sec.base().block_size());
        let disk = sec.base().num_blocks() * bs;
        ext.iter()
            .enumerate()
            .map(|(i, &(off, len))| {
                let end = off.checked_add(len).filter(|&e| e <= disk);
                if len == 0 || off % bs != 0 || len % bs != 0 || end.is_none() {
                    return Err(bad(format!(
                        "extent {i} [{off}, {len}]: not a non-empty run of whole {bs}-byte \
                         blocks inside the {disk}-byte disk"
                    )));
                }
                Ok((off / bs, len / bs))
            })
            .collect()
    }

    /// The engine part of a reprotect over the opened, claimed `remote` (`params` from
    /// [`Replica::reprotect_params`]). On error nothing changed (the caller releases
    /// `remote`). On success new I/O routes to the primary, I/O that took the secondary's
    /// path has drained, and `Task::Job` asks the caller to run the full sync.
    pub async fn reprotect(
        &self,
        remote: D,
        params: CreateParams,
        sync: ReprotectSync,
        peer: &[(u64, u64)],
    ) -> Result<Task, RpcError> {
        let err = |e| RpcError::from_engine(self.name(), e);
        self.check_reprotect()?;
        let Some(sec) = self.secondary() else {
            return Err(err(ReplicationError::Io));
        };
        let base = sec.base().clone();
        let primary = Primary::new(
            base.clone(),
            remote.clone(),
            PrimaryConfig {
                remote_timeout: Duration::from_millis(params.remote_timeout_ms.unwrap_or_default()),
                sync_granularity: params
                    .sync_granularity
                    .unwrap_or(crate::engine::DEFAULT_SYNC_GRANULARITY),
            },
        )
        .map_err(err)?;
        let (mode, changed) = match sync {
            ReprotectSync::Full => (SyncMode::Full, None),
            ReprotectSync::None => (SyncMode::None, None),
            ReprotectSync::Incremental => (SyncMode::None, Some(sec.changed_since_checkpoint())),
        };
        let job = primary.start_promoted(mode, changed, peer).map_err(err)?;
        // From here on the secondary's late writes mark the primary's map.
        sec.retire(primary.dirty_map()).await.map_err(err)?;
        let promotion = super::reprotect::Promotion {
            params,
            primary,
            legs: vec![base, remote],
        };
        if self.promoted.set(promotion).is_err() {
            // `retire` is the set-once guard: unreachable, but never a panic.
            return Err(err(ReplicationError::Io));
        }
        sec.drain().await;
        tracing::info!(name = self.name(), sync = ?sync, "reprotected: now a primary");
        Ok(if job { Task::Job } else { Task::None })
    }
}
