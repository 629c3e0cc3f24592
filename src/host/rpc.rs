//! `bdev_replication_*` JSON-RPC methods (spec section 6), params decoded with serde.
//!
//! Error codes follow SPDK: -32602 for params that do not decode, otherwise a negative
//! errno: -ENODEV (no such bdev), -EEXIST (name taken), -EINVAL (bad value, wrong mode),
//! -EPERM (the operation is not valid in the current stage), -EIO (I/O failed).

use super::exec;
use super::json;
use super::node::{self, Node, Role};
use crate::engine::{
    DEFAULT_COW_GRANULARITY, DEFAULT_REMOTE_TIMEOUT_MS, MergeStep, Mode, ReplicationError, Stage,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use spdk_sys as s;
use std::ffi::CString;
use std::sync::Arc;

#[derive(Debug)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: String) -> Self {
        RpcError { code, message }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub name: String,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_bdev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_bdev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_bdev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_bdev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_bdev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cow_granularity: Option<u64>,
}

fn invalid(param: &str, msg: &str) -> RpcError {
    RpcError::new(-22, format!("{param}: {msg}"))
}

/// Parameter names and whether each was given.
type Presence<'a> = &'a [(&'a str, bool)];

impl CreateParams {
    /// Checks which parameters belong to the mode, and fills in the defaults.
    pub fn validated(mut self) -> Result<Self, RpcError> {
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let (required, foreign): (Presence, Presence) = match self.mode {
            Mode::Primary => (
                &[
                    ("local_bdev", self.local_bdev.is_some()),
                    ("remote_bdev", self.remote_bdev.is_some()),
                ],
                &[
                    ("base_bdev", self.base_bdev.is_some()),
                    ("hidden_bdev", self.hidden_bdev.is_some()),
                    ("active_bdev", self.active_bdev.is_some()),
                    ("ingress_name", self.ingress_name.is_some()),
                    ("cow_granularity", self.cow_granularity.is_some()),
                ],
            ),
            Mode::Secondary => (
                &[
                    ("base_bdev", self.base_bdev.is_some()),
                    ("hidden_bdev", self.hidden_bdev.is_some()),
                    ("active_bdev", self.active_bdev.is_some()),
                ],
                &[
                    ("local_bdev", self.local_bdev.is_some()),
                    ("remote_bdev", self.remote_bdev.is_some()),
                    ("remote_timeout_ms", self.remote_timeout_ms.is_some()),
                ],
            ),
        };
        if let Some((p, _)) = required.iter().find(|(_, present)| !present) {
            return Err(invalid(p, &format!("required with mode {}", self.mode)));
        }
        if let Some((p, _)) = foreign.iter().find(|(_, present)| *present) {
            return Err(invalid(p, &format!("not valid with mode {}", self.mode)));
        }
        match self.mode {
            Mode::Primary => {
                self.remote_timeout_ms
                    .get_or_insert(DEFAULT_REMOTE_TIMEOUT_MS);
            }
            Mode::Secondary => {
                let ingress = self
                    .ingress_name
                    .get_or_insert_with(|| format!("{}_ingress", self.name));
                if ingress.is_empty() || *ingress == self.name {
                    return Err(invalid(
                        "ingress_name",
                        "must be non-empty and differ from name",
                    ));
                }
                self.cow_granularity.get_or_insert(DEFAULT_COW_GRANULARITY);
            }
        }
        Ok(self)
    }

    /// The base bdevs to claim, in engine order, with their parameter names.
    pub fn leg_params(&self) -> Vec<(&'static str, &str)> {
        let legs: [(&'static str, &Option<String>); 5] = [
            ("local_bdev", &self.local_bdev),
            ("remote_bdev", &self.remote_bdev),
            ("base_bdev", &self.base_bdev),
            ("hidden_bdev", &self.hidden_bdev),
            ("active_bdev", &self.active_bdev),
        ];
        legs.iter()
            .filter_map(|(p, v)| v.as_deref().map(|v| (*p, v)))
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParam {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptName {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartParams {
    name: Option<String>,
    mode: Option<Mode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopParams {
    name: Option<String>,
    #[serde(default)]
    failover: bool,
}

unsafe fn send_result(req: *mut s::spdk_jsonrpc_request, v: &Value) {
    // SAFETY: `req` is unanswered until here.
    unsafe {
        let w = s::spdk_jsonrpc_begin_result(req);
        json::write_value(w, v);
        s::spdk_jsonrpc_end_result(req, w);
    }
}

unsafe fn send_error(req: *mut s::spdk_jsonrpc_request, e: RpcError) {
    tracing::debug!(code = e.code, message = %e.message, "RPC error");
    let msg = CString::new(e.message.replace('\0', " ")).expect("no NUL");
    // SAFETY: `req` is unanswered until here.
    unsafe { s::spdk_jsonrpc_send_error_response(req, e.code, msg.as_ptr()) };
}

unsafe fn reply(req: *mut s::spdk_jsonrpc_request, r: Result<Value, RpcError>) {
    unsafe {
        match r {
            Ok(v) => send_result(req, &v),
            Err(e) => send_error(req, e),
        }
    }
}

unsafe fn decode<T: DeserializeOwned>(params: *const s::spdk_json_val) -> Result<T, RpcError> {
    let v = unsafe { json::params(params) }
        .map_err(|m| RpcError::new(s::SPDK_JSONRPC_ERROR_INVALID_PARAMS, m))?;
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        };
        RpcError::new(s::SPDK_JSONRPC_ERROR_INVALID_PARAMS, msg)
    })
}

fn stage_err(node: &Node, e: ReplicationError) -> RpcError {
    let code = match e {
        ReplicationError::NotRunning | ReplicationError::RunningOrDone => -1,
        ReplicationError::Io => -5,
        _ => -22,
    };
    RpcError::new(code, format!("{}: {e}", node.name()))
}

fn targets(name: Option<&str>) -> Result<Vec<Arc<Node>>, RpcError> {
    match name {
        Some(n) => node::find(n)
            .map(|n| vec![n])
            .ok_or_else(|| RpcError::new(-19, format!("name: no replication bdev named {n}"))),
        None => Ok(node::nodes()),
    }
}

#[derive(Clone, Copy)]
enum Control {
    Start(Option<Mode>),
    Checkpoint,
    Stop(bool),
}

async fn control(node: &Arc<Node>, op: Control) -> Result<(), ReplicationError> {
    match (&node.role, op) {
        (Role::Primary(p), Control::Start(m)) => p.start(m),
        (Role::Primary(p), Control::Checkpoint) => p.checkpoint(),
        (Role::Primary(p), Control::Stop(f)) => p.stop(f),
        (Role::Secondary(sec), Control::Start(m)) => sec.start(m).await,
        (Role::Secondary(sec), Control::Checkpoint) => sec.checkpoint().await,
        (Role::Secondary(sec), Control::Stop(f)) => {
            let was = sec.stage();
            sec.stop(f).await?;
            if f && was != Stage::Failover && sec.stage() == Stage::Failover {
                spawn_merge(node.clone());
            }
            Ok(())
        }
    }
}

/// The failover merge, as a task on the app thread: one cluster per step; each step
/// yields to the reactor while its I/O is in flight.
fn spawn_merge(node: Arc<Node>) {
    exec::spawn(async move {
        let Role::Secondary(sec) = &node.role else {
            return;
        };
        loop {
            match sec.merge_step().await {
                Ok(MergeStep::Progress) => {}
                Ok(MergeStep::Done) => {
                    tracing::info!(name = node.name(), "failover merge done");
                    break;
                }
                Ok(MergeStep::Idle) => break,
                Err(e) => {
                    tracing::error!(name = node.name(), error = %e, "failover merge failed");
                    break;
                }
            }
        }
    });
}

unsafe fn run_control(req: *mut s::spdk_jsonrpc_request, name: Option<String>, op: Control) {
    let nodes = match targets(name.as_deref()) {
        Ok(n) => n,
        Err(e) => return unsafe { send_error(req, e) },
    };
    exec::spawn(async move {
        // Most recently created first; stop at the first error (COLO's *_all semantics).
        for node in &nodes {
            if let Err(e) = control(node, op).await {
                return unsafe { send_error(req, stage_err(node, e)) };
            }
        }
        unsafe { send_result(req, &Value::Bool(true)) };
    });
}

unsafe extern "C" fn rpc_create(
    req: *mut s::spdk_jsonrpc_request,
    params: *const s::spdk_json_val,
) {
    unsafe {
        let r = decode::<CreateParams>(params)
            .and_then(node::create)
            .map(Value::from);
        reply(req, r);
    }
}

struct SendReq(*mut s::spdk_jsonrpc_request);
// SAFETY: answered exactly once, on the app thread, by the node's teardown.
unsafe impl Send for SendReq {}

unsafe extern "C" fn rpc_delete(
    req: *mut s::spdk_jsonrpc_request,
    params: *const s::spdk_json_val,
) {
    unsafe {
        let p = match decode::<NameParam>(params) {
            Ok(p) => p,
            Err(e) => return send_error(req, e),
        };
        let Some(node) = node::find(&p.name) else {
            return send_error(
                req,
                RpcError::new(-19, format!("name: no replication bdev named {}", p.name)),
            );
        };
        let r = SendReq(req);
        node::delete(
            node,
            Box::new(move || {
                let r = r;
                send_result(r.0, &Value::Bool(true))
            }),
        );
    }
}

unsafe extern "C" fn rpc_start(req: *mut s::spdk_jsonrpc_request, params: *const s::spdk_json_val) {
    unsafe {
        match decode::<StartParams>(params) {
            Ok(p) => run_control(req, p.name, Control::Start(p.mode)),
            Err(e) => send_error(req, e),
        }
    }
}

unsafe extern "C" fn rpc_checkpoint(
    req: *mut s::spdk_jsonrpc_request,
    params: *const s::spdk_json_val,
) {
    unsafe {
        match decode::<OptName>(params) {
            Ok(p) => run_control(req, p.name, Control::Checkpoint),
            Err(e) => send_error(req, e),
        }
    }
}

unsafe extern "C" fn rpc_stop(req: *mut s::spdk_jsonrpc_request, params: *const s::spdk_json_val) {
    unsafe {
        match decode::<StopParams>(params) {
            Ok(p) => run_control(req, p.name, Control::Stop(p.failover)),
            Err(e) => send_error(req, e),
        }
    }
}

unsafe fn list(
    req: *mut s::spdk_jsonrpc_request,
    params: *const s::spdk_json_val,
    f: fn(&Node) -> Value,
) {
    unsafe {
        let r = decode::<OptName>(params)
            .and_then(|p| targets(p.name.as_deref()))
            .map(|nodes| Value::Array(nodes.iter().map(|n| f(n)).collect()));
        reply(req, r);
    }
}

unsafe extern "C" fn rpc_get_error(
    req: *mut s::spdk_jsonrpc_request,
    params: *const s::spdk_json_val,
) {
    unsafe { list(req, params, json::get_error) }
}

unsafe extern "C" fn rpc_get_status(
    req: *mut s::spdk_jsonrpc_request,
    params: *const s::spdk_json_val,
) {
    unsafe { list(req, params, json::status) }
}

pub fn register_all() {
    let methods: [(&std::ffi::CStr, s::spdk_rpc_method_handler); 7] = [
        (c"bdev_replication_create", Some(rpc_create)),
        (c"bdev_replication_delete", Some(rpc_delete)),
        (c"bdev_replication_start", Some(rpc_start)),
        (c"bdev_replication_checkpoint", Some(rpc_checkpoint)),
        (c"bdev_replication_stop", Some(rpc_stop)),
        (c"bdev_replication_get_error", Some(rpc_get_error)),
        (c"bdev_replication_get_status", Some(rpc_get_status)),
    ];
    for (name, f) in methods {
        // SAFETY: static names; handlers live for the program.
        unsafe { s::spdk_rpc_register_method(name.as_ptr(), f, s::SPDK_RPC_RUNTIME) };
    }
}
