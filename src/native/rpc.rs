//! The native host's JSON-RPC methods, with SPDK's names, params and error codes; the
//! `bdev_replication_*` methods are the shared control plane's. Every method runs on the
//! app reactor.

use super::bdev::{
    AttachParams, Delay, DelayParams, Dev, ErrorBdev, FileBdev, InjectParams, Malloc,
    NvmeController,
};
use super::host::{App, Origin};
use super::nvmf::{AddNs, CreateSubsystem, Listener, TransportParams};
use crate::control::{self, EEXIST, EINVAL, ENODEV, METHOD_NOT_FOUND, RpcError, decode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::rc::Rc;
use std::sync::Arc;

const ENOMEM: i32 = -12;

/// The methods this host answers besides the control plane's and the framework's.
pub const NATIVE_METHODS: &[&str] = &[
    "spdk_get_version",
    "save_config",
    "bdev_get_bdevs",
    "bdev_wait_for_examine",
    "bdev_malloc_create",
    "bdev_malloc_delete",
    "bdev_uring_create",
    "bdev_uring_delete",
    "bdev_aio_create",
    "bdev_aio_delete",
    "bdev_nvme_set_options",
    "bdev_nvme_attach_controller",
    "bdev_nvme_detach_controller",
    "bdev_nvme_get_controllers",
    "bdev_delay_create",
    "bdev_delay_delete",
    "bdev_delay_update_latency",
    "bdev_error_create",
    "bdev_error_delete",
    "bdev_error_inject_error",
    "nvmf_create_transport",
    "nvmf_get_transports",
    "nvmf_create_subsystem",
    "nvmf_delete_subsystem",
    "nvmf_get_subsystems",
    "nvmf_subsystem_add_ns",
    "nvmf_subsystem_remove_ns",
    "nvmf_subsystem_add_listener",
    "nvmf_subsystem_remove_listener",
    "nvmf_subsystem_add_host",
    "nvmf_subsystem_remove_host",
    "nvmf_subsystem_allow_any_host",
    "vhost_create_blk_controller",
    "vhost_delete_controller",
    "vhost_get_controllers",
];

#[derive(Deserialize)]
struct Name {
    name: String,
}

#[derive(Deserialize)]
struct OptName {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    timeout: Option<u64>,
}

#[derive(Deserialize)]
struct MallocParams {
    #[serde(default)]
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
    #[serde(flatten)]
    _rest: std::collections::BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileParams {
    name: String,
    filename: String,
    #[serde(default)]
    block_size: Option<u32>,
    #[serde(default)]
    readonly: Option<bool>,
    #[serde(default)]
    fallocate: Option<bool>,
    #[serde(default)]
    uuid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorCreate {
    base_name: String,
    #[serde(default)]
    uuid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateLatency {
    delay_bdev_name: String,
    latency_type: String,
    latency_us: u64,
}

#[derive(Deserialize)]
struct Nqn {
    nqn: String,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
}

#[derive(Deserialize)]
struct HostParams {
    nqn: String,
    host: String,
}

#[derive(Deserialize)]
struct AllowAny {
    nqn: String,
    allow_any_host: bool,
}

fn check_block_size(bs: u32) -> Result<(), RpcError> {
    if bs < 512 || !bs.is_power_of_two() || bs > 65536 {
        return Err(RpcError::invalid(
            "block_size",
            format!("{bs} is not a power of two between 512 and 65536"),
        ));
    }
    Ok(())
}

/// Answers one call.
pub async fn call(app: &Rc<App>, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    if control::METHODS.contains(&method) || control::EXTRA_METHODS.contains(&method) {
        return control::handle(app, method, params).await;
    }
    if super::framework::METHODS.contains(&method) {
        // Boxed: framework_start_init runs the config loader, which calls back in here.
        return Box::pin(super::framework::call(app, method, params)).await;
    }
    let t = Value::Bool(true);
    match method {
        "spdk_get_version" => Ok(json!({
            "version": format!("SPDK v26.05 compatible (spdk-replication native host {})",
                               env!("CARGO_PKG_VERSION")),
            "fields": {"major": 26, "minor": 5, "patch": 0, "suffix": "-native"},
        })),
        "bdev_wait_for_examine" => Ok(t),
        "save_config" => Ok(super::config::save(app)),
        "bdev_get_bdevs" => {
            let p: OptName = decode(params)?;
            app.bdev_info(p.name.as_deref())
        }
        "bdev_malloc_create" => malloc_create(app, decode(params)?),
        "bdev_uring_create" => file_create(app, decode(params)?, false),
        "bdev_aio_create" => file_create(app, decode(params)?, true),
        "bdev_malloc_delete" => delete(app, params, |o| matches!(o, Origin::Malloc { .. })),
        "bdev_uring_delete" => delete(app, params, |o| matches!(o, Origin::Uring { .. })),
        "bdev_aio_delete" => delete(app, params, |o| matches!(o, Origin::Aio { .. })),
        "bdev_delay_delete" => delete(app, params, |o| matches!(o, Origin::Delay(_))),
        "bdev_error_delete" => delete(app, params, |o| matches!(o, Origin::Error { .. })),
        "bdev_nvme_set_options" => {
            *app.nvme_options.borrow_mut() = params;
            Ok(t)
        }
        "bdev_nvme_attach_controller" => attach(app, params).await,
        "bdev_nvme_detach_controller" => detach(app, decode(params)?),
        "bdev_nvme_get_controllers" => {
            let p: OptName = decode(params)?;
            let c = app.nvme.borrow();
            Ok(Value::Array(
                c.iter()
                    .filter(|(n, _)| p.name.as_ref().is_none_or(|x| x == *n))
                    .map(|(n, c)| {
                        json!({"name": n, "ctrlrs": [{
                            "state": if c.ctrl.is_connected() { "enabled" } else { "resetting" },
                            "trid": {"trtype": "TCP", "traddr": c.params.traddr,
                                     "trsvcid": c.params.trsvcid, "subnqn": c.params.subnqn},
                        }]})
                    })
                    .collect(),
            ))
        }
        "bdev_delay_create" => delay_create(app, decode(params)?),
        "bdev_delay_update_latency" => {
            let p: UpdateLatency = decode(params)?;
            let b = app.bdevs.borrow();
            match b.get(&p.delay_bdev_name).map(|e| &e.dev) {
                Some(Dev::Delay(d)) => d
                    .update(&p.latency_type, p.latency_us)
                    .map(|()| t)
                    .map_err(|m| RpcError::new(EINVAL, m)),
                _ => Err(RpcError::new(
                    ENODEV,
                    format!("delay_bdev_name: no delay bdev {}", p.delay_bdev_name),
                )),
            }
        }
        "bdev_error_create" => error_create(app, decode(params)?),
        "bdev_error_inject_error" => {
            let p: InjectParams = decode(params)?;
            let b = app.bdevs.borrow();
            match b.get(&p.name).map(|e| &e.dev) {
                Some(Dev::Error(e)) => e
                    .inject(&p)
                    .map(|()| t)
                    .map_err(|m| RpcError::new(EINVAL, m)),
                _ => Err(RpcError::new(
                    ENODEV,
                    format!("name: no error bdev {}", p.name),
                )),
            }
        }
        "nvmf_create_transport" => {
            let raw = params.clone().unwrap_or(Value::Null);
            let p: TransportParams = decode(params)?;
            app.nvmf.create_transport(raw, p).map(|()| t)
        }
        "nvmf_get_transports" => Ok(json!([{"trtype": "TCP"}])),
        "nvmf_create_subsystem" => {
            let p: CreateSubsystem = decode(params)?;
            app.nvmf.create_subsystem(p).map(|()| t)
        }
        "nvmf_delete_subsystem" => {
            let p: Nqn = decode(params)?;
            app.nvmf.delete_subsystem(&p.nqn).map(|()| t)
        }
        "nvmf_get_subsystems" => Ok(app.nvmf.get_subsystems()),
        "nvmf_subsystem_add_ns" => {
            let p: AddNs = decode(params)?;
            let ex = app.exported(&p.namespace.bdev_name).ok_or_else(|| {
                RpcError::new(
                    ENODEV,
                    format!(
                        "namespace.bdev_name: no bdev named {}",
                        p.namespace.bdev_name
                    ),
                )
            })?;
            app.nvmf.add_ns(p, ex).map(Value::from)
        }
        "nvmf_subsystem_remove_ns" => {
            let p: RemoveNs = decode(params)?;
            app.nvmf.remove_ns(&p.nqn, p.nsid).map(|()| t)
        }
        "nvmf_subsystem_add_listener" => {
            let p: Listener = decode(params)?;
            app.nvmf.add_listener(p).map(|()| t)
        }
        "nvmf_subsystem_remove_listener" => {
            let p: Listener = decode(params)?;
            app.nvmf.remove_listener(p).map(|()| t)
        }
        "nvmf_subsystem_add_host" => {
            let p: HostParams = decode(params)?;
            app.nvmf
                .set_hosts(&p.nqn, |d| {
                    if !d.hosts.contains(&p.host) {
                        d.hosts.push(p.host.clone())
                    }
                })
                .map(|()| t)
        }
        "nvmf_subsystem_remove_host" => {
            let p: HostParams = decode(params)?;
            app.nvmf
                .set_hosts(&p.nqn, |d| d.hosts.retain(|h| h != &p.host))
                .map(|()| t)
        }
        "nvmf_subsystem_allow_any_host" => {
            let p: AllowAny = decode(params)?;
            app.nvmf
                .set_hosts(&p.nqn, |d| d.allow_any_host = p.allow_any_host)
                .map(|()| t)
        }
        m if m.starts_with("vhost_") => super::vhost::call(app, m, params),
        other => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("Method not found: {other}"),
        )),
    }
}

fn malloc_create(app: &Rc<App>, p: MallocParams) -> Result<Value, RpcError> {
    check_block_size(p.block_size)?;
    if p.num_blocks == 0 {
        return Err(RpcError::invalid("num_blocks", "must be at least 1"));
    }
    let name = match p.name {
        Some(n) if !n.is_empty() => n,
        _ => (0..)
            .map(|i| format!("Malloc{i}"))
            .find(|n| !app.name_taken(n))
            .unwrap_or_default(),
    };
    if app.name_taken(&name) {
        return Err(RpcError::new(
            EEXIST,
            format!("bdev name {name} already exists"),
        ));
    }
    let m = Malloc::new(p.block_size, p.num_blocks).ok_or_else(|| {
        RpcError::new(
            ENOMEM,
            format!(
                "{name}: cannot allocate {} blocks of {}",
                p.num_blocks, p.block_size
            ),
        )
    })?;
    app.add_bdev(
        &name,
        Dev::Malloc(Arc::new(m)),
        Origin::Malloc {
            block_size: p.block_size,
            num_blocks: p.num_blocks,
        },
    )?;
    Ok(Value::String(name))
}

fn file_create(app: &Rc<App>, p: FileParams, aio: bool) -> Result<Value, RpcError> {
    let _ = (p.readonly, p.fallocate, &p.uuid);
    let bs = p.block_size.unwrap_or(512);
    check_block_size(bs)?;
    if app.name_taken(&p.name) {
        return Err(RpcError::new(
            EEXIST,
            format!("bdev name {} already exists", p.name),
        ));
    }
    let f = FileBdev::open(std::path::Path::new(&p.filename), bs).map_err(|e| {
        RpcError::new(
            -e.raw_os_error().unwrap_or(5),
            format!("filename: cannot open {}: {e}", p.filename),
        )
    })?;
    if f.num_blocks() == 0 {
        return Err(RpcError::invalid(
            "filename",
            format!("{} is smaller than one block", p.filename),
        ));
    }
    let origin = if aio {
        Origin::Aio {
            filename: p.filename,
            block_size: bs,
        }
    } else {
        Origin::Uring {
            filename: p.filename,
            block_size: bs,
        }
    };
    app.add_bdev(&p.name, Dev::File(Arc::new(f)), origin)?;
    Ok(Value::String(p.name))
}

fn delete(
    app: &Rc<App>,
    params: Option<Value>,
    kind: fn(&Origin) -> bool,
) -> Result<Value, RpcError> {
    let p: Name = decode(params)?;
    let e = app.remove_bdev(&p.name, kind)?;
    // A stacked bdev's base is free again.
    match &e.dev {
        Dev::Delay(d) => app.unclaim(d.inner()),
        Dev::Error(x) => app.unclaim(x.inner()),
        _ => {}
    }
    app.nvmf.bdev_removed(&p.name);
    app.vhost.bdev_removed(&p.name);
    Ok(Value::Bool(true))
}

async fn attach(app: &Rc<App>, params: Option<Value>) -> Result<Value, RpcError> {
    let p: AttachParams = decode(params)?;
    if app.nvme.borrow().contains_key(&p.name) {
        return Err(RpcError::new(
            EEXIST,
            format!("A controller named {} already exists", p.name),
        ));
    }
    p.addr().map_err(|m| RpcError::new(EINVAL, m))?;
    p.reconnect().map_err(|m| RpcError::new(EINVAL, m))?;
    // Connecting blocks (socket, bring-up): off the reactor.
    let (tx, rx) = futures::channel::oneshot::channel();
    let name = p.name.clone();
    let reactors = app.reactors.clone();
    std::thread::Builder::new()
        .name("nvme-attach".into())
        .spawn(move || {
            let _ = tx.send(NvmeController::attach(p, reactors));
        })
        .map_err(|e| RpcError::new(-5, format!("{name}: {e}")))?;
    let c = rx
        .await
        .map_err(|_| RpcError::new(-5, format!("{name}: attach aborted")))?
        .map_err(|m| RpcError::new(-5, m))?;
    let mut names = Vec::new();
    for (n, ns) in &c.namespaces {
        if let Err(e) = app.add_bdev(
            n,
            Dev::Nvme(ns.clone()),
            Origin::Nvme {
                controller: name.clone(),
            },
        ) {
            for done in &names {
                app.bdevs.borrow_mut().remove(done);
            }
            return Err(e);
        }
        names.push(n.clone());
    }
    app.nvme.borrow_mut().insert(name, Arc::new(c));
    Ok(json!(names))
}

fn detach(app: &Rc<App>, p: Name) -> Result<Value, RpcError> {
    let Some(c) = app.nvme.borrow().get(&p.name).cloned() else {
        return Err(RpcError::new(
            ENODEV,
            format!("Failed to find NVMe controller {}", p.name),
        ));
    };
    for (n, _) in &c.namespaces {
        if let Some(e) = app.bdevs.borrow().get(n)
            && let Some(by) = e.claimed_by
        {
            return Err(RpcError::new(
                -16,
                format!("{}: bdev {n} is claimed by {by}", p.name),
            ));
        }
    }
    for (n, _) in &c.namespaces {
        app.bdevs.borrow_mut().remove(n);
        app.nvmf.bdev_removed(n);
    }
    app.nvme.borrow_mut().remove(&p.name);
    Ok(Value::Bool(true))
}

fn delay_create(app: &Rc<App>, p: DelayParams) -> Result<Value, RpcError> {
    if app.name_taken(&p.name) {
        return Err(RpcError::new(
            EEXIST,
            format!("bdev name {} already exists", p.name),
        ));
    }
    let base = app.claim(&p.base_bdev_name, "delay", "base_bdev_name")?;
    let d = Delay::new(base, &p);
    let name = p.name.clone();
    app.add_bdev(&name, Dev::Delay(Arc::new(d)), Origin::Delay(p))?;
    Ok(Value::String(name))
}

fn error_create(app: &Rc<App>, p: ErrorCreate) -> Result<Value, RpcError> {
    let _ = p.uuid;
    let name = format!("EE_{}", p.base_name);
    if app.name_taken(&name) {
        return Err(RpcError::new(
            EEXIST,
            format!("bdev name {name} already exists"),
        ));
    }
    let base = app.claim(&p.base_name, "error", "base_name")?;
    let e = ErrorBdev::new(base, &p.base_name);
    app.add_bdev(
        &name,
        Dev::Error(Arc::new(e)),
        Origin::Error { base: p.base_name },
    )?;
    Ok(Value::Bool(true))
}
