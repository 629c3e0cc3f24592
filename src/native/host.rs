//! The native host's bdev layer and its [`Host`] adapter for the shared control plane:
//! named bdevs with SPDK's claim rules, the replication bdevs registered over them, and
//! the lookups exports make. All of it lives on the app reactor (reactor 0), as SPDK's
//! bdev layer lives on its app thread; I/O never touches it.

use super::bdev::{DelayParams, Dev};
use super::node::{Exported, Face, Node};
use super::reactor::{NativeRuntime, Reactor, sleep, spawn_local};
use crate::control::{EBUSY, EINVAL, ENODEV, Host, Replica, Role, RpcError};
use crate::engine::{Mode, Stage};
use futures::future::LocalBoxFuture;
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How a bdev was made, for `save_config` and `bdev_get_bdevs`.
#[derive(Clone, Debug)]
pub enum Origin {
    Malloc {
        block_size: u32,
        num_blocks: u64,
    },
    Uring {
        filename: String,
        block_size: u32,
    },
    Aio {
        filename: String,
        block_size: u32,
    },
    /// A namespace of the attached controller of this name.
    Nvme {
        controller: String,
    },
    Delay(DelayParams),
    Error {
        base: String,
    },
}

pub struct Entry {
    pub dev: Dev,
    /// The module holding the claim, as SPDK names it.
    pub claimed_by: Option<&'static str>,
    pub origin: Origin,
    pub seq: u64,
}

pub struct App {
    pub reactors: Vec<Reactor>,
    pub bdevs: RefCell<BTreeMap<String, Entry>>,
    seq: Cell<u64>,
    nodes: RefCell<Vec<Arc<Node>>>,
    pub nvme: RefCell<BTreeMap<String, Arc<super::bdev::NvmeController>>>,
    /// `bdev_nvme_set_options` as given, replayed by save_config.
    pub nvme_options: RefCell<Option<Value>>,
    pub nvmf: super::nvmf::NvmfState,
    pub vhost: super::vhost::VhostState,
    /// Start-up (the `--json` startup pass, `--wait-for-rpc`) or runtime, as SPDK's RPC state.
    pub rpc_state: Cell<super::framework::RpcState>,
    /// The `--json` file's runtime pass, held until `framework_start_init` under `--wait-for-rpc`.
    pub pending_json: RefCell<Option<(String, bool)>>,
    pub init_done: Cell<bool>,
}

impl App {
    /// `cores`: the core of each reactor, in order.
    pub fn new(
        reactors: Vec<Reactor>,
        cores: Vec<usize>,
        vhost_dir: std::path::PathBuf,
    ) -> Rc<Self> {
        Rc::new(Self {
            nvmf: super::nvmf::NvmfState::new(reactors.clone()),
            vhost: super::vhost::VhostState::new(reactors.clone(), cores, vhost_dir),
            reactors,
            bdevs: RefCell::default(),
            seq: Cell::new(0),
            nodes: RefCell::default(),
            nvme: RefCell::default(),
            nvme_options: RefCell::default(),
            rpc_state: Cell::new(super::framework::RpcState::Startup),
            pending_json: RefCell::default(),
            init_done: Cell::new(false),
        })
    }

    /// Adds a bdev; the name must be free (checked here too, with SPDK's message).
    pub fn add_bdev(&self, name: &str, dev: Dev, origin: Origin) -> Result<(), RpcError> {
        if self.name_taken(name) {
            return Err(RpcError::new(
                -17,
                format!("bdev name {name} already exists"),
            ));
        }
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        self.bdevs.borrow_mut().insert(
            name.to_owned(),
            Entry {
                dev,
                claimed_by: None,
                origin,
                seq,
            },
        );
        Ok(())
    }

    pub fn name_taken(&self, name: &str) -> bool {
        self.bdevs.borrow().contains_key(name) || self.replica_face(name).is_some()
    }

    /// Deletes an unclaimed bdev of the given origin kind; errors as SPDK's.
    pub fn remove_bdev(&self, name: &str, kind: fn(&Origin) -> bool) -> Result<Entry, RpcError> {
        let mut b = self.bdevs.borrow_mut();
        match b.get(name) {
            None => Err(RpcError::new(
                ENODEV,
                format!("No such device: bdev {name}"),
            )),
            Some(e) if !kind(&e.origin) => Err(RpcError::new(
                ENODEV,
                format!("bdev {name} is not a bdev of this type"),
            )),
            Some(e) if e.claimed_by.is_some() => Err(RpcError::new(
                EBUSY,
                format!(
                    "bdev {name} is claimed by {}",
                    e.claimed_by.unwrap_or("a module")
                ),
            )),
            Some(_) => b.remove(name).ok_or_else(|| RpcError::new(ENODEV, "gone")),
        }
    }

    /// Claims a plain bdev for a stacked module (delay, error).
    pub fn claim(&self, name: &str, by: &'static str, param: &str) -> Result<Dev, RpcError> {
        let mut b = self.bdevs.borrow_mut();
        let Some(e) = b.get_mut(name) else {
            return Err(RpcError::new(
                ENODEV,
                format!("{param}: cannot open bdev {name} (no such device)"),
            ));
        };
        if let Some(holder) = e.claimed_by {
            return Err(RpcError::new(
                EBUSY,
                format!("{param}: bdev {name} is already claimed by {holder}"),
            ));
        }
        e.claimed_by = Some(by);
        Ok(e.dev.clone())
    }

    pub fn unclaim(&self, dev: &Dev) {
        for e in self.bdevs.borrow_mut().values_mut() {
            if e.dev.same(dev) {
                e.claimed_by = None;
            }
        }
    }

    fn replica_face(&self, name: &str) -> Option<(Arc<Node>, Face)> {
        self.nodes.borrow().iter().find_map(|n| {
            let p = n.replica.params();
            if p.name == name {
                Some((n.clone(), Face::Top))
            } else if p.ingress_name.as_deref() == Some(name) {
                Some((n.clone(), Face::Ingress))
            } else {
                None
            }
        })
    }

    /// What an export of bdev `name` serves.
    pub fn exported(&self, name: &str) -> Option<Exported> {
        if let Some((n, f)) = self.replica_face(name) {
            return Some(Exported::Replica(n, f));
        }
        self.bdevs
            .borrow()
            .get(name)
            .map(|e| Exported::Dev(e.dev.clone()))
    }

    pub fn replicas(&self) -> Vec<Arc<Node>> {
        self.nodes.borrow().clone()
    }

    /// `bdev_get_bdevs` entries, SPDK's shape (the fields scripts read).
    pub fn bdev_info(&self, name: Option<&str>) -> Result<Value, RpcError> {
        let mut out = Vec::new();
        let io_types = |flush: bool, unmap: bool| {
            json!({"read": true, "write": true, "unmap": unmap, "write_zeroes": true,
                   "flush": flush, "reset": true, "nvme_admin": false, "nvme_io": false})
        };
        {
            let b = self.bdevs.borrow();
            let mut all: Vec<_> = b.iter().collect();
            all.sort_by_key(|(_, e)| e.seq);
            for (n, e) in all {
                use crate::engine::BlockDevice;
                out.push(json!({
                    "name": n,
                    "aliases": [],
                    "product_name": e.dev.product_name(),
                    "block_size": e.dev.block_size(),
                    "num_blocks": e.dev.num_blocks(),
                    "claimed": e.claimed_by.is_some(),
                    "claim_type": if e.claimed_by.is_some() { "exclusive_write" } else { "none" },
                    "write_cache": e.dev.write_cache(),
                    "supported_io_types": io_types(true, true),
                    "driver_specific": e.dev.driver_specific(),
                }));
            }
        }
        for node in self.nodes.borrow().iter() {
            let r = &node.replica;
            let faces: Vec<&str> = r.params().bdev_names();
            for (i, n) in faces.into_iter().enumerate() {
                let ex =
                    Exported::Replica(node.clone(), if i == 0 { Face::Top } else { Face::Ingress });
                let mut status = r.status();
                status["role"] = json!(match (r.mode(), i) {
                    (Mode::Primary, _) => "primary",
                    (_, 0) => "top",
                    _ => "ingress",
                });
                out.push(json!({
                    "name": n,
                    "aliases": [],
                    "product_name": "replication",
                    "block_size": ex.block_size(),
                    "num_blocks": ex.num_blocks(),
                    "claimed": false,
                    "claim_type": "none",
                    "write_cache": ex.write_cache(),
                    "supported_io_types": io_types(true, true),
                    "driver_specific": {"replication": status},
                }));
            }
        }
        match name {
            None => Ok(Value::Array(out)),
            Some(want) => {
                let hit: Vec<Value> = out.into_iter().filter(|v| v["name"] == want).collect();
                if hit.is_empty() {
                    Err(RpcError::new(
                        ENODEV,
                        format!("No such device: bdev {want}"),
                    ))
                } else {
                    Ok(Value::Array(hit))
                }
            }
        }
    }
}

impl Host for Rc<App> {
    type Dev = Dev;
    type Node = Node;

    fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.borrow().iter().rev().cloned().collect()
    }

    fn bdev_exists(&self, name: &str) -> bool {
        self.name_taken(name)
    }

    fn open_claim(&self, param: &'static str, bdev: &str) -> Result<Dev, RpcError> {
        if self.replica_face(bdev).is_some() {
            return Err(RpcError::new(
                EINVAL,
                format!("{param}: bdev {bdev} is a replication bdev and cannot be a leg"),
            ));
        }
        let mut b = self.bdevs.borrow_mut();
        let Some(e) = b.get_mut(bdev) else {
            return Err(RpcError::new(
                ENODEV,
                format!("{param}: cannot open bdev {bdev} (no such device)"),
            ));
        };
        if e.claimed_by.is_some() {
            return Err(RpcError::new(
                EBUSY,
                format!("{param}: bdev {bdev} is already claimed"),
            ));
        }
        e.claimed_by = Some("replication");
        Ok(e.dev.clone())
    }

    fn release(&self, legs: Vec<Dev>) {
        for l in &legs {
            self.unclaim(l);
        }
    }

    fn register(&self, replica: Replica<Dev>) -> Result<Arc<Node>, RpcError> {
        let node = Arc::new(Node::new(replica));
        self.nodes.borrow_mut().push(node.clone());
        Ok(node)
    }

    fn unregister(&self, node: Arc<Node>) -> LocalBoxFuture<'static, ()> {
        self.nodes.borrow_mut().retain(|n| !Arc::ptr_eq(n, &node));
        node.gone.store(true, Ordering::Release);
        let released = node.overlays_released.load(Ordering::Acquire);
        let legs = if node.replica.is_reprotected() {
            node.replica.current_legs()
        } else if released {
            &node.replica.legs[..1]
        } else {
            &node.replica.legs[..]
        };
        self.release(legs.to_vec());
        // SPDK hot-removes a deleted bdev from the subsystems and vhost controllers using it.
        let names: Vec<String> = node
            .replica
            .params()
            .bdev_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        for n in &names {
            self.nvmf.bdev_removed(n);
            self.vhost.bdev_removed(n);
        }
        Box::pin(std::future::ready(()))
    }

    fn spawn_merge(&self, node: Arc<Node>) {
        let app = self.clone();
        spawn_local(async move {
            node.replica.run_merge(&NativeRuntime).await;
            if node.replica.stage() == Stage::Done {
                app.release_overlays(&node);
            }
        });
    }

    fn spawn_sync(&self, node: Arc<Node>) {
        spawn_local(async move {
            node.replica.run_job(&NativeRuntime).await;
        });
    }

    fn release_overlays(&self, node: &Arc<Node>) {
        if matches!(node.replica.role, Role::Secondary(_))
            && !node.overlays_released.swap(true, Ordering::AcqRel)
        {
            self.release(node.replica.legs[1..].to_vec());
        }
    }

    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(sleep(d))
    }

    /// The native I/O path routes by [`Replica::role`] on every request.
    fn reprotect_supported(&self, _name: &str) -> Result<(), RpcError> {
        Ok(())
    }

    /// The ingress name no longer resolves ([`App::exported`] goes by the current params);
    /// exports of it lose their namespace, as when a bdev is deleted.
    fn retire_ingress(&self, node: &Arc<Node>) {
        if let Some(ingress) = node.replica.params.ingress_name.as_deref() {
            self.nvmf.bdev_removed(ingress);
            self.vhost.bdev_removed(ingress);
            tracing::info!(ingress, "reprotect: ingress bdev unregistered");
        }
    }
}
