//! The target (controller) side: subsystems, controllers and the per-connection state
//! machine, with namespaces served through the [`Backend`] seam.

mod admin;
pub mod backend;
mod capsule;
mod conn;
mod connect;
mod gather;
mod io;
mod stats;
mod subsystem;

pub use backend::{Backend, IoDone, IoOp, IoRequest, IoResult, NsError, RamBackend};
pub use conn::TargetConn;
pub use gather::TxBatch;
pub use stats::TargetStats;
pub use subsystem::{ConfigError, NamespaceConfig, SubsystemConfig, Target, TargetConfig};
