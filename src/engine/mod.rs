//! The host-agnostic replication engine.
//!
//! Layering follows `quinn-proto`: the *core* (maps, stage machine, routing plans) does no
//! I/O and is what a host's hot path calls directly; the *driver* methods (`async fn` on
//! [`Secondary`] and [`Primary`]) implement complete I/O semantics over the [`BlockDevice`]
//! trait, including every slow path (copy-before-write, merge, failover-failed split).

mod alloc_map;
mod cluster_lock;
mod device;
mod dirty;
mod error;
mod gate;
mod geometry;
mod membarrier;
mod primary;
mod secondary;
mod shard;
mod stage;
pub mod testing;

pub use alloc_map::{AllocMap, AllocState};
pub use cluster_lock::{ClusterGuard, ClusterLocks};
pub use device::{BlockDevice, IoBuf, IoError, JOB_BACKOFF, Runtime, yield_with};
pub use dirty::{DEFAULT_SYNC_GRANULARITY, DirtyMap, MAX_SYNC_GRANULARITY};
pub use error::ReplicationError;
pub use gate::{GateGuard, IoGate};
pub use geometry::{Geometry, MAX_COW_GRANULARITY};
pub use primary::sync_job::JobStep;
pub use primary::{
    DEFAULT_REMOTE_TIMEOUT_MS, MAX_REMOTE_TIMEOUT_MS, Primary, PrimaryConfig, PrimaryCounters,
    PrimaryWritePlan, SyncMode, SyncState, SyncStatus,
};
pub use secondary::{
    DEFAULT_COW_GRANULARITY, IngressWritePlan, MergeProgress, MergeStep, ReadSegment, ReadSegments,
    Secondary, SecondaryCounters, Source, TopWritePlan,
};
pub use stage::{Mode, Stage};
