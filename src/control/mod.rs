//! The host-agnostic control plane: `bdev_replication_*` params, validation, error codes
//! and messages, status and saved-config JSON, and the RPC methods themselves over a
//! [`Host`]. Both hosts (SPDK and native) answer through this code, so they cannot drift.

mod error;
mod host;
mod params;
mod replica;
mod reprotect;
pub mod testing;

pub use error::{
    EBUSY, EEXIST, EINVAL, EIO, ENODEV, ENOTSUP, EPERM, INVALID_PARAMS, METHOD_NOT_FOUND, RpcError,
    errno_name,
};
pub use host::{EXTRA_METHODS, Host, METHODS, create, delete, find, handle, reprotect};
pub use params::{
    CreateParams, DeleteParams, NameParams, OptName, ResyncParams, StartParams, StopParams, decode,
};
pub use replica::{Control, Replica, Role, RoleRef, Task};
pub use reprotect::{Promotion, ReprotectParams, ReprotectSync};
