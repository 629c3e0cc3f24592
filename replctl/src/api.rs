//! Typed view of the `bdev_replication_*` JSON-RPC contract.
//!
//! Request structs serialize to exactly the params object the SPDK module
//! decodes; optional params are skipped rather than sent as `null`, because
//! SPDK's object decoder rejects `null` for string and integer fields.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const CREATE: &str = "bdev_replication_create";
pub const DELETE: &str = "bdev_replication_delete";
pub const START: &str = "bdev_replication_start";
pub const CHECKPOINT: &str = "bdev_replication_checkpoint";
pub const STOP: &str = "bdev_replication_stop";
pub const GET_ERROR: &str = "bdev_replication_get_error";
pub const GET_STATUS: &str = "bdev_replication_get_status";
pub const RESYNC: &str = "bdev_replication_resync";
pub const VERIFY: &str = "bdev_replication_verify";
pub const REPROTECT: &str = "bdev_replication_reprotect";
pub const GET_DIRTY_MAP: &str = "bdev_replication_get_dirty_map";

/// Role of a replication bdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Primary,
    Secondary,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Primary => "primary",
            Mode::Secondary => "secondary",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replication stage as reported by the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    None,
    Running,
    Failover,
    FailoverFailed,
    Done,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::None => "none",
            Stage::Running => "running",
            Stage::Failover => "failover",
            Stage::FailoverFailed => "failover_failed",
            Stage::Done => "done",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One JSON-RPC call: method name plus (possibly absent) params.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub params: Option<Value>,
}

impl Request {
    /// Builds a request from typed params. An empty params object is dropped
    /// altogether, as SPDK's own rpc.py does, so parameterless calls look the
    /// same on the wire whichever client sent them.
    pub fn new(method: &str, params: &impl Serialize) -> Self {
        let params = serde_json::to_value(params)
            .expect("request params are plain structs and always serialize");
        let params = match params {
            Value::Object(map) if map.is_empty() => None,
            other => Some(other),
        };
        Request {
            method: method.to_owned(),
            params,
        }
    }
}

/// Params of `bdev_replication_create`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateParams {
    pub name: String,
    #[serde(flatten)]
    pub role: CreateRole,
}

/// Mode-specific part of [`CreateParams`]; the variant becomes the `mode` param.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum CreateRole {
    Primary {
        local_bdev: String,
        remote_bdev: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        remote_timeout_ms: Option<u64>,
    },
    Secondary {
        base_bdev: String,
        hidden_bdev: String,
        active_bdev: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        ingress_name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cow_granularity: Option<u64>,
    },
}

/// Params of `bdev_replication_delete`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeleteParams {
    pub name: String,
    /// Needed in `failover_failed`: deleting then drops SVM data the base lacks.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Params of the calls that take only an optional bdev name
/// (`checkpoint`, `get_error`, `get_status`); no name means all bdevs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NameParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Params of `bdev_replication_start`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Primary: `none` (the disks are equal) or `full` (copy the whole disk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncMode>,
}

/// `bdev_replication_start`'s `sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    None,
    Full,
}

/// Params of `bdev_replication_resync`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResyncParams {
    pub name: String,
    pub full: bool,
}

/// Params of `bdev_replication_reprotect`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReprotectParams {
    pub name: String,
    pub remote_bdev: String,
    /// `full` (the module's default), `none` or `incremental`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<ReprotectSync>,
    /// The former primary's dirty map (`[offset, length]` byte extents), with `incremental`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_dirty_extents: Option<Vec<[u64; 2]>>,
}

/// `bdev_replication_reprotect`'s `sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReprotectSync {
    None,
    Full,
    Incremental,
}

/// Params of `bdev_replication_verify`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyParams {
    pub name: String,
}

/// A primary's `sync` status (sync, resync and verify progress).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Sync {
    pub state: String,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub dirty_bytes: u64,
    pub mismatches: u64,
    #[serde(default)]
    pub first_mismatches: Vec<u64>,
}

/// Params of `bdev_replication_stop`. `failover` is always sent so the
/// request states the operator's intent explicitly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StopParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub failover: bool,
}

/// One element of the `bdev_replication_get_error` result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ErrorReport {
    pub name: String,
    pub stage: Stage,
    pub error: Option<String>,
}

/// One element of the `bdev_replication_get_status` result. Unknown fields
/// (e.g. a primary's `local_bdev`) are ignored and absent optional ones
/// default, so the client keeps working as the module grows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Status {
    pub name: String,
    pub mode: Mode,
    pub stage: Stage,
    pub error: Option<String>,
    pub cow_granularity: Option<u64>,
    pub ingress_name: Option<String>,
    /// Free-form: the set of counters is an implementation detail of the module.
    #[serde(default)]
    pub counters: Map<String, Value>,
    pub merge: Option<Merge>,
    /// Primaries only.
    #[serde(default)]
    pub sync: Option<Sync>,
}

/// Progress of the secondary's failover merge of the active image into the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Merge {
    pub total_bytes: u64,
    pub done_bytes: u64,
}

impl Merge {
    /// Completion in percent; an empty merge counts as complete.
    pub fn percent(self) -> f64 {
        if self.total_bytes == 0 {
            100.0
        } else {
            self.done_bytes as f64 * 100.0 / self.total_bytes as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_tolerates_unknown_and_missing_fields() {
        let primary: Status = serde_json::from_value(json!({
            "name": "r0", "mode": "primary", "stage": "running", "error": null,
            "cow_granularity": null, "ingress_name": null,
            "local_bdev": "nvme0n1", "remote_bdev": "nbd0", "remote_timeout_ms": 5000,
        }))
        .unwrap();
        assert_eq!(primary.mode, Mode::Primary);
        assert!(primary.counters.is_empty());
        assert_eq!(primary.merge, None);

        let secondary: Status = serde_json::from_value(json!({
            "name": "r1", "mode": "secondary", "stage": "failover_failed",
            "error": "merge write failed", "cow_granularity": 16384,
            "ingress_name": "r1_ingress", "counters": {"writes": 3, "cow_copies": 1},
            "merge": {"total_bytes": 4096, "done_bytes": 1024},
        }))
        .unwrap();
        assert_eq!(secondary.stage, Stage::FailoverFailed);
        assert_eq!(secondary.error.as_deref(), Some("merge write failed"));
        assert_eq!(secondary.counters["writes"], json!(3));
        assert_eq!(secondary.merge.unwrap().percent(), 25.0);
    }
}
