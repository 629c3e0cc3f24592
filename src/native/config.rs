//! `save_config` and the `--json` loader: SPDK's config file format
//! (`{"subsystems": [{"subsystem": "bdev", "config": [{"method", "params"}]}]}`), so the
//! same files run on both hosts and a saved config restarts the node as it was.

use super::framework::{RUNTIME, RpcState, STARTUP, runs_in, state_mask, unknown_method};
use super::host::{App, Origin};
use serde::Deserialize;
use serde_json::{Value, json};
use std::rc::Rc;

/// The subsystems this host has, in SPDK's initialisation order, with their dependencies.
pub const SUBSYSTEMS: &[(&str, &[&str])] =
    &[("bdev", &[]), ("nvmf", &["bdev"]), ("vhost_blk", &["bdev"])];

/// The node's configuration, replayable in order.
pub fn save(app: &Rc<App>) -> Value {
    json!({"subsystems": SUBSYSTEMS.iter().filter_map(|(name, _)| {
        subsystem_config(app, name).map(|c| json!({"subsystem": name, "config": c}))
    }).collect::<Vec<_>>()})
}

/// One subsystem's part of [`save`] (`framework_get_config`).
pub fn subsystem_config(app: &Rc<App>, name: &str) -> Option<Value> {
    match name {
        "bdev" => Some(Value::Array(bdev_config(app))),
        "nvmf" => Some(Value::Array(app.nvmf.config())),
        "vhost_blk" => Some(Value::Array(app.vhost.config())),
        _ => None,
    }
}

fn bdev_config(app: &Rc<App>) -> Vec<Value> {
    let mut bdev = Vec::new();
    if let Some(o) = app.nvme_options.borrow().as_ref() {
        bdev.push(json!({"method": "bdev_nvme_set_options", "params": o}));
    }
    let mut controllers_done = Vec::new();
    {
        let b = app.bdevs.borrow();
        let mut all: Vec<_> = b.iter().collect();
        all.sort_by_key(|(_, e)| e.seq);
        for (name, e) in all {
            let entry = match &e.origin {
                Origin::Malloc {
                    block_size,
                    num_blocks,
                } => json!({"method": "bdev_malloc_create", "params": {
                    "name": name, "block_size": block_size, "num_blocks": num_blocks}}),
                Origin::Uring {
                    filename,
                    block_size,
                } => json!({"method": "bdev_uring_create", "params": {
                    "name": name, "filename": filename, "block_size": block_size}}),
                Origin::Aio {
                    filename,
                    block_size,
                } => json!({"method": "bdev_aio_create", "params": {
                    "name": name, "filename": filename, "block_size": block_size}}),
                Origin::Nvme { controller } => {
                    if controllers_done.contains(controller) {
                        continue;
                    }
                    controllers_done.push(controller.clone());
                    let Some(c) = app.nvme.borrow().get(controller).cloned() else {
                        continue;
                    };
                    json!({"method": "bdev_nvme_attach_controller", "params": c.params})
                }
                Origin::Delay(p) => match &e.dev {
                    super::bdev::Dev::Delay(d) => {
                        json!({"method": "bdev_delay_create", "params": d.params(name)})
                    }
                    _ => json!({"method": "bdev_delay_create", "params": p}),
                },
                Origin::Error { base } => {
                    json!({"method": "bdev_error_create", "params": {"base_name": base}})
                }
            };
            bdev.push(entry);
        }
    }
    // Oldest first, after every bdev they claim.
    for node in app.replicas() {
        bdev.push(node.replica.config_entry());
    }
    bdev.push(json!({"method": "bdev_wait_for_examine"}));
    bdev
}

#[derive(Deserialize)]
struct File {
    subsystems: Vec<Subsystem>,
}

#[derive(Deserialize)]
struct Subsystem {
    subsystem: String,
    #[serde(default)]
    config: Option<Vec<Entry>>,
}

/// A config entry: one call, or an explicit batch (SPDK sends it as a JSON-RPC batch).
#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Call(Call),
    Batch(Vec<Call>),
}

#[derive(Deserialize)]
struct Call {
    method: String,
    #[serde(default)]
    params: Option<Value>,
}

/// Subsystems in SPDK's initialisation order; others keep the file's order, after these.
fn rank(subsystem: &str) -> usize {
    SUBSYSTEMS
        .iter()
        .position(|(n, _)| *n == subsystem)
        .unwrap_or(SUBSYSTEMS.len())
}

/// Runs the calls of a config file that belong to `pass` (SPDK's startup or runtime pass),
/// in order; the first failure ends it, naming the call, unless `keep_going`. Subsystems
/// this host does not have are skipped, as SPDK skips those not linked into an app.
pub async fn load(
    app: &Rc<App>,
    text: &str,
    keep_going: bool,
    pass: RpcState,
) -> Result<(), String> {
    let f: File = serde_json::from_str(text).map_err(|e| format!("invalid JSON config: {e}"))?;
    let mut subs = f.subsystems;
    subs.sort_by_key(|s| rank(&s.subsystem));
    for s in subs {
        if rank(&s.subsystem) == SUBSYSTEMS.len() {
            if pass == RpcState::Startup {
                tracing::info!(subsystem = %s.subsystem, "skipping a subsystem this host does not have");
            }
            continue;
        }
        for (i, entry) in s.config.unwrap_or_default().into_iter().enumerate() {
            let calls = match entry {
                Entry::Call(c) => vec![c],
                Entry::Batch(b) => b,
            };
            let r = run_entry(app, &calls, pass).await;
            if let Err((method, e)) = r {
                let msg = format!(
                    "subsystem {} config[{i}] {method}: {} (code {})",
                    s.subsystem, e.message, e.code
                );
                if !keep_going {
                    return Err(msg);
                }
                tracing::error!("{msg} (ignored: --json-ignore-init-errors)");
            }
        }
    }
    Ok(())
}

/// Runs one entry if it belongs to `pass`; an unknown method fails in the startup pass.
async fn run_entry(
    app: &Rc<App>,
    calls: &[Call],
    pass: RpcState,
) -> Result<(), (String, crate::control::RpcError)> {
    let mut mask = STARTUP | RUNTIME;
    for c in calls {
        match state_mask(&c.method) {
            Some(m) => mask &= m,
            None if pass == RpcState::Startup => {
                return Err((c.method.clone(), unknown_method(&c.method)));
            }
            None => return Ok(()),
        }
    }
    if !runs_in(mask, pass) {
        return Ok(());
    }
    for c in calls {
        super::rpc::call(app, &c.method, c.params.clone())
            .await
            .map_err(|e| (c.method.clone(), e))?;
    }
    Ok(())
}
