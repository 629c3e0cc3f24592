//! vhost-user-blk exports (`vhost_create_blk_controller`, `vhost_delete_controller`,
//! `vhost_get_controllers`) for QEMU guests on the same node, served by the `vhost-blk`
//! crate; sockets live in the `-S` directory, named after the controller, as SPDK's.
//! Requests run on the reactors of the controller's cpumask through the same submit path
//! as NVMe-oF; vring and completion threads never block a reactor.

use super::node::{BlockOp, ExportError, Exported, submit};
use super::reactor::Reactor;
use crate::control::{EEXIST, EINVAL, ENODEV, METHOD_NOT_FOUND, RpcError, decode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use vhost_blk::{BlockBackend, Controller, ControllerOptions, Done, Request, Status};

/// Queues each controller offers; the frontend (QEMU's `num-queues`) uses up to this.
const NUM_QUEUES: usize = 8;
/// `sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// SPDK's defaults for the coalescing figures it reports.
const DELAY_BASE_US: u64 = 0;
const IOPS_THRESHOLD: u64 = 60000;

/// One exported bdev as the vhost-blk device sees it.
struct VhostBackend {
    exported: Exported,
    reactors: Vec<Reactor>,
    block_size: u32,
    num_blocks: u64,
    write_cache: bool,
    read_only: bool,
}

impl BlockBackend for VhostBackend {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn write_cache(&self) -> bool {
        self.write_cache
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn submit(&self, req: Request, done: Done) {
        let ops = match req {
            Request::Read { lba, nblocks } => vec![BlockOp::Read { lba, nblocks }],
            Request::Write { lba, data } => vec![BlockOp::Write { lba, data }],
            Request::Flush => vec![BlockOp::Flush],
            Request::Discard { ranges } => ranges
                .into_iter()
                .map(|(lba, nblocks)| BlockOp::Unmap { lba, nblocks })
                .collect(),
            Request::WriteZeroes { ranges, .. } => ranges
                .into_iter()
                .map(|(lba, nblocks)| BlockOp::WriteZeroes { lba, nblocks })
                .collect(),
        };
        submit(&self.exported, &self.reactors, ops, move |r| {
            done(r.map_err(|e: ExportError| {
                tracing::debug!("vhost-blk I/O failed: {e:?}");
                Status::IoErr
            }))
        });
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBlk {
    ctrlr: String,
    dev_name: String,
    #[serde(default)]
    cpumask: Option<String>,
    #[serde(default)]
    readonly: Option<bool>,
    #[serde(default)]
    packed_ring: Option<bool>,
    #[serde(default)]
    transport: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ctrlr {
    ctrlr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    name: Option<String>,
}

struct Ctrl {
    name: String,
    dev_name: String,
    /// The cores serving it, as a hex mask.
    cpumask: String,
    readonly: bool,
    socket: PathBuf,
    controller: Controller,
}

pub struct VhostState {
    reactors: Vec<Reactor>,
    /// The core each reactor runs on (the `-m` mask's cores, in reactor order).
    cores: Vec<usize>,
    dir: PathBuf,
    ctrls: RefCell<Vec<Ctrl>>,
}

impl VhostState {
    pub fn new(reactors: Vec<Reactor>, cores: Vec<usize>, dir: PathBuf) -> Self {
        Self {
            reactors,
            cores,
            dir,
            ctrls: RefCell::default(),
        }
    }

    fn core_of(&self, i: usize) -> usize {
        self.cores.get(i).copied().unwrap_or(i)
    }

    fn app_mask(&self) -> u128 {
        (0..self.reactors.len())
            .map(|i| self.core_of(i))
            .filter(|&c| c < 128)
            .fold(0, |m, c| m | (1u128 << c))
    }

    /// The reactors a cpumask selects (all of the app's by default), and the mask.
    fn select(&self, cpumask: Option<&str>) -> Result<(Vec<Reactor>, String), RpcError> {
        let app = self.app_mask();
        let mask = match cpumask {
            None => app,
            Some(s) => {
                let cores = super::app::parse_cpumask(s).map_err(|_| {
                    RpcError::invalid("cpumask", format!("invalid core mask {s:?}"))
                })?;
                let m = cores
                    .iter()
                    .filter(|&&c| c < 128)
                    .fold(0u128, |m, &c| m | (1u128 << c));
                if m & !app != 0 || cores.iter().any(|&c| c >= 128) {
                    return Err(RpcError::invalid(
                        "cpumask",
                        format!("{s} is not a subset of the app's core mask {app:#x}"),
                    ));
                }
                m
            }
        };
        let picked: Vec<Reactor> = (0..self.reactors.len())
            .filter(|&i| {
                let c = self.core_of(i);
                c < 128 && mask & (1u128 << c) != 0
            })
            .filter_map(|i| self.reactors.get(i).cloned())
            .collect();
        if picked.is_empty() {
            return Err(RpcError::invalid("cpumask", "selects no core"));
        }
        Ok((picked, format!("{mask:#x}")))
    }

    fn create(&self, p: CreateBlk, exported: Option<Exported>) -> Result<(), RpcError> {
        if p.ctrlr.is_empty() || p.ctrlr.contains('/') || p.ctrlr == "." || p.ctrlr == ".." {
            return Err(RpcError::invalid(
                "ctrlr",
                format!("{:?} is not a valid controller name", p.ctrlr),
            ));
        }
        if self.ctrls.borrow().iter().any(|c| c.name == p.ctrlr) {
            return Err(RpcError::new(
                EEXIST,
                format!("ctrlr: vhost controller {} already exists", p.ctrlr),
            ));
        }
        match p.transport.as_deref() {
            None | Some("vhost_user_blk") => {}
            Some(t) => {
                return Err(RpcError::invalid(
                    "transport",
                    format!("{t} is not supported (vhost_user_blk only)"),
                ));
            }
        }
        if p.packed_ring == Some(true) {
            return Err(RpcError::invalid(
                "packed_ring",
                "packed virtqueues are not supported (split rings only)",
            ));
        }
        let Some(exported) = exported else {
            return Err(RpcError::new(
                ENODEV,
                format!("dev_name: no such bdev {}", p.dev_name),
            ));
        };
        let (reactors, cpumask) = self.select(p.cpumask.as_deref())?;
        let socket = self.dir.join(&p.ctrlr);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(RpcError::invalid(
                "ctrlr",
                format!("socket path {} is too long", socket.display()),
            ));
        }
        let readonly = p.readonly.unwrap_or(false);
        let backend = Arc::new(VhostBackend {
            block_size: exported.block_size(),
            num_blocks: exported.num_blocks(),
            write_cache: exported.write_cache(),
            read_only: readonly,
            exported,
            reactors,
        });
        let controller = Controller::start(
            backend,
            ControllerOptions {
                name: p.ctrlr.clone(),
                socket: socket.clone(),
                num_queues: NUM_QUEUES,
                // SPDK answers GET_ID with the bdev's name.
                id: p.dev_name.clone(),
            },
        )
        .map_err(|e| match e {
            vhost_blk::Error::SocketExists(path) => {
                RpcError::new(EEXIST, format!("ctrlr: socket path {path} already exists"))
            }
            other => RpcError::new(EINVAL, format!("ctrlr {}: {other}", p.ctrlr)),
        })?;
        tracing::info!(
            "vhost controller {} on {} serving {}",
            p.ctrlr,
            socket.display(),
            p.dev_name
        );
        self.ctrls.borrow_mut().push(Ctrl {
            name: p.ctrlr,
            dev_name: p.dev_name,
            cpumask,
            readonly,
            socket,
            controller,
        });
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), RpcError> {
        let c = {
            let mut ctrls = self.ctrls.borrow_mut();
            let i = ctrls.iter().position(|c| c.name == name).ok_or_else(|| {
                RpcError::new(ENODEV, format!("ctrlr: no vhost controller named {name}"))
            })?;
            ctrls.remove(i)
        };
        // Detached: joining could wait on a completion that needs this reactor.
        c.controller.stop_detached();
        Ok(())
    }

    fn get(&self, name: Option<&str>) -> Result<Value, RpcError> {
        let ctrls = self.ctrls.borrow();
        let out: Vec<Value> = ctrls
            .iter()
            .filter(|c| name.is_none_or(|n| n == c.name))
            .map(|c| {
                let sessions: Vec<Value> = if c.controller.connected() {
                    vec![json!({"vid": 0, "id": 0, "name": format!("{}s0", c.name),
                                "started": true})]
                } else {
                    Vec::new()
                };
                json!({
                    "ctrlr": c.name,
                    "cpumask": c.cpumask,
                    "delay_base_us": DELAY_BASE_US,
                    "iops_threshold": IOPS_THRESHOLD,
                    "socket": c.socket.display().to_string(),
                    "sessions": sessions,
                    "backend_specific": {"block": {
                        "readonly": c.readonly,
                        "bdev": c.dev_name,
                        "transport": "vhost_user_blk",
                    }},
                })
            })
            .collect();
        match name {
            Some(n) if out.is_empty() => Err(RpcError::new(
                ENODEV,
                format!("name: no vhost controller named {n}"),
            )),
            _ => Ok(Value::Array(out)),
        }
    }

    /// SPDK hot-removes a bdev from the controllers exporting it: their I/O fails and the
    /// controllers go (socket removed, frontend disconnected).
    pub fn bdev_removed(&self, bdev: &str) {
        let gone: Vec<Ctrl> = {
            let mut ctrls = self.ctrls.borrow_mut();
            let (gone, keep) = std::mem::take(&mut *ctrls)
                .into_iter()
                .partition(|c| c.dev_name == bdev);
            *ctrls = keep;
            gone
        };
        for c in gone {
            tracing::info!("vhost controller {}: bdev {bdev} removed", c.name);
            c.controller.fail_io();
            c.controller.stop_detached();
        }
    }

    /// The `vhost_blk` subsystem's save_config entries.
    pub fn config(&self) -> Vec<Value> {
        self.ctrls
            .borrow()
            .iter()
            .map(|c| {
                json!({"method": "vhost_create_blk_controller", "params": {
                    "ctrlr": c.name, "dev_name": c.dev_name, "cpumask": c.cpumask,
                    "readonly": c.readonly, "packed_ring": false,
                    "transport": "vhost_user_blk"}})
            })
            .collect()
    }

    /// Disconnects every frontend and removes the sockets (process exit).
    pub fn shutdown(&self) {
        for c in std::mem::take(&mut *self.ctrls.borrow_mut()) {
            c.controller.stop_detached();
        }
    }
}

/// `vhost_*` methods.
pub fn call(
    app: &std::rc::Rc<super::host::App>,
    method: &str,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    match method {
        "vhost_create_blk_controller" => {
            let p: CreateBlk = decode(params)?;
            let exported = app.exported(&p.dev_name);
            app.vhost.create(p, exported).map(|()| Value::Bool(true))
        }
        "vhost_delete_controller" => {
            let p: Ctrlr = decode(params)?;
            app.vhost.delete(&p.ctrlr).map(|()| Value::Bool(true))
        }
        "vhost_get_controllers" => {
            let p: GetParams = decode(params)?;
            app.vhost.get(p.name.as_deref())
        }
        _ => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )),
    }
}
