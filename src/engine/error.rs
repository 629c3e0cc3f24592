use thiserror::Error;

/// Control-path errors. The messages are the contract's (spec 5.6, 5.7); hosts prefix them
/// with the bdev name when they answer an RPC.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplicationError {
    #[error("Block replication is not running")]
    NotRunning,
    #[error("Block replication is running or done")]
    RunningOrDone,
    #[error("I/O error occurred")]
    Io,
    #[error(
        "Block replication failover failed: the overlays hold SVM data the base lacks; retry stop with failover, or delete with force to drop it"
    )]
    UnmergedData,
    #[error("The parameter mode's value is invalid: the bdev is {have}, but got {got}")]
    ModeMismatch {
        have: crate::engine::Mode,
        got: crate::engine::Mode,
    },
    #[error("{param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },
    /// A protection operation (resync, verify, a start with sync) in a stage where it
    /// makes no sense.
    #[error("Block replication is not running (stage {stage}): {op} needs stage running")]
    WrongStage {
        op: &'static str,
        stage: crate::engine::Stage,
    },
    /// `bdev_replication_reprotect` on a secondary that is not (yet) promoted.
    #[error(
        "Block replication is not done (stage {stage}): reprotect needs a promoted secondary in stage done"
    )]
    NotPromoted { stage: crate::engine::Stage },
    #[error("{0}")]
    Busy(String),
    #[error("the replication link is broken: run resync first")]
    LinkBroken,
}
