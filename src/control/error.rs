//! RPC errors as both hosts answer them: SPDK's codes (-32602 for params that do not
//! decode, otherwise a negative errno) and messages naming the parameter or bdev.

use crate::engine::ReplicationError;
use serde_json::{Value, json};

pub const INVALID_PARAMS: i32 = -32602;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const EPERM: i32 = -1;
pub const EIO: i32 = -5;
pub const EBUSY: i32 = -16;
pub const EEXIST: i32 = -17;
pub const ENODEV: i32 = -19;
pub const EINVAL: i32 = -22;
pub const ENOTSUP: i32 = -95;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// `-EINVAL` naming the parameter at fault.
    pub fn invalid(param: &str, msg: impl std::fmt::Display) -> Self {
        RpcError::new(EINVAL, format!("{param}: {msg}"))
    }

    pub fn no_such_replica(name: &str) -> Self {
        RpcError::new(ENODEV, format!("name: no replication bdev named {name}"))
    }

    /// An engine error about the replication bdev `name`.
    pub fn from_engine(name: &str, e: ReplicationError) -> Self {
        let code = match e {
            ReplicationError::NotRunning
            | ReplicationError::RunningOrDone
            | ReplicationError::UnmergedData
            | ReplicationError::WrongStage { .. }
            | ReplicationError::NotPromoted { .. }
            | ReplicationError::LinkBroken => EPERM,
            ReplicationError::Busy(_) => EBUSY,
            ReplicationError::Io => EIO,
            ReplicationError::ModeMismatch { .. } | ReplicationError::InvalidParam { .. } => EINVAL,
        };
        RpcError::new(code, format!("{name}: {e}"))
    }

    /// The JSON-RPC error object.
    pub fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

/// Engine errors at create time name a parameter already (`cow_granularity: ...`).
impl From<ReplicationError> for RpcError {
    fn from(e: ReplicationError) -> Self {
        RpcError::new(EINVAL, e.to_string())
    }
}

/// Human name of a negative errno, for messages.
pub fn errno_name(rc: i32) -> &'static str {
    match -rc {
        1 => "operation not permitted",
        5 => "I/O error",
        12 => "out of memory",
        16 => "busy",
        17 => "already exists",
        19 => "no such device",
        22 => "invalid argument",
        95 => "operation not supported",
        _ => "error",
    }
}
