//! `save_config` and the `--json` loader: SPDK's config file format
//! (`{"subsystems": [{"subsystem": "bdev", "config": [{"method", "params"}]}]}`), so the
//! same files run on both hosts and a saved config restarts the node as it was.

use super::host::{App, Origin};
use serde::Deserialize;
use serde_json::{Value, json};
use std::rc::Rc;

/// The node's configuration, replayable in order.
pub fn save(app: &Rc<App>) -> Value {
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
    json!({"subsystems": [
        {"subsystem": "bdev", "config": bdev},
        {"subsystem": "nvmf", "config": app.nvmf.config()},
        {"subsystem": "vhost_blk", "config": app.vhost.config()},
    ]})
}

#[derive(Deserialize)]
struct File {
    subsystems: Vec<Subsystem>,
}

#[derive(Deserialize)]
struct Subsystem {
    subsystem: String,
    #[serde(default)]
    config: Option<Vec<Call>>,
}

#[derive(Deserialize)]
struct Call {
    method: String,
    #[serde(default)]
    params: Option<Value>,
}

/// Subsystems in SPDK's initialisation order; others keep the file's order, after these.
fn rank(subsystem: &str) -> usize {
    match subsystem {
        "bdev" => 0,
        "nvmf" => 1,
        "vhost_blk" | "vhost_scsi" => 2,
        _ => 3,
    }
}

/// Runs a config file's calls in order; the first failure ends it, naming the call.
pub async fn load(app: &Rc<App>, text: &str, keep_going: bool) -> Result<(), String> {
    let f: File = serde_json::from_str(text).map_err(|e| format!("invalid JSON config: {e}"))?;
    let mut subs = f.subsystems;
    subs.sort_by_key(|s| rank(&s.subsystem));
    for s in subs {
        for (i, c) in s.config.unwrap_or_default().into_iter().enumerate() {
            if let Err(e) = super::rpc::call(app, &c.method, c.params).await {
                let msg = format!(
                    "subsystem {} config[{i}] {}: {} (code {})",
                    s.subsystem, c.method, e.message, e.code
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
