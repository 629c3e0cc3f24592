//! vhost-user-blk exports (`vhost_create_blk_controller`, `vhost_delete_controller`) for
//! QEMU guests on the same node; sockets live in the `-S` directory, named after the
//! controller, as SPDK's.

use super::reactor::Reactor;
use serde_json::Value;
use std::path::PathBuf;

pub struct VhostState {
    #[allow(dead_code)]
    reactors: Vec<Reactor>,
    #[allow(dead_code)]
    dir: PathBuf,
}

impl VhostState {
    pub fn new(reactors: Vec<Reactor>, dir: PathBuf) -> Self {
        Self { reactors, dir }
    }

    pub fn bdev_removed(&self, _bdev: &str) {}

    pub fn config(&self) -> Vec<Value> {
        Vec::new()
    }

    pub fn shutdown(&self) {}
}

/// `vhost_*` methods.
pub fn call(
    _app: &std::rc::Rc<super::host::App>,
    method: &str,
    _params: Option<Value>,
) -> Result<Value, crate::control::RpcError> {
    Err(crate::control::RpcError::new(
        crate::control::METHOD_NOT_FOUND,
        format!("Method not found: {method}"),
    ))
}
