//! SPDK's application framework as RPC clients see it: the startup/runtime RPC states
//! (`--wait-for-rpc`, `framework_start_init`, `framework_wait_init`), which methods each
//! state allows (`rpc_get_methods {"current": true}`), and the subsystem view that
//! `spdk-rpc save_config` / `load_config` are built on (`framework_get_subsystems`,
//! `framework_get_config`). The `--json` loader runs in SPDK's two passes: methods allowed at
//! startup first, the rest once the framework is initialised.

use super::host::App;
use crate::control::{self, EINVAL, INVALID_PARAMS, METHOD_NOT_FOUND, RpcError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::rc::Rc;

/// SPDK's `SPDK_JSONRPC_ERROR_INVALID_STATE`.
const INVALID_STATE: i32 = -1;
const INTERNAL_ERROR: i32 = -32603;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcState {
    Startup,
    Runtime,
}

/// SPDK's `SPDK_RPC_STARTUP` / `SPDK_RPC_RUNTIME` bits.
pub const STARTUP: u8 = 1;
pub const RUNTIME: u8 = 2;

impl RpcState {
    fn bit(self) -> u8 {
        match self {
            RpcState::Startup => STARTUP,
            RpcState::Runtime => RUNTIME,
        }
    }
}

/// The states a method may be called in (as SPDK registers it); `None` for unknown methods.
pub fn state_mask(method: &str) -> Option<u8> {
    match method {
        "spdk_get_version"
        | "rpc_get_methods"
        | "framework_wait_init"
        | "bdev_nvme_set_options" => Some(STARTUP | RUNTIME),
        "framework_start_init" => Some(STARTUP),
        m if super::rpc::NATIVE_METHODS.contains(&m)
            || METHODS.contains(&m)
            || control::METHODS.contains(&m)
            || control::EXTRA_METHODS.contains(&m) =>
        {
            Some(RUNTIME)
        }
        _ => None,
    }
}

/// Every method this host answers.
fn all_methods() -> impl Iterator<Item = &'static str> {
    super::rpc::NATIVE_METHODS
        .iter()
        .chain(METHODS)
        .chain(control::METHODS)
        .chain(control::EXTRA_METHODS)
        .copied()
}

/// A call from an RPC client: refused with SPDK's messages outside the states it allows.
pub async fn call_client(
    app: &Rc<App>,
    method: &str,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let state = app.rpc_state.get();
    match state_mask(method) {
        None => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )),
        Some(m) if m & state.bit() == 0 => Err(RpcError::new(
            INVALID_STATE,
            match state {
                RpcState::Startup => {
                    "Method may only be called after framework is initialized using \
                     framework_start_init RPC."
                }
                RpcState::Runtime => {
                    "Method may only be called before framework is initialized. Use \
                     --wait-for-rpc command line parameter and then issue this RPC before \
                     the framework_start_init RPC."
                }
            },
        )),
        Some(_) => super::rpc::call(app, method, params).await,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    #[allow(dead_code)]
    include_aliases: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    with_batches: bool,
}

/// The framework's own methods.
pub const METHODS: &[&str] = &[
    "rpc_get_methods",
    "framework_wait_init",
    "framework_start_init",
    "framework_get_subsystems",
    "framework_get_config",
];

/// One of [`METHODS`].
pub async fn call(app: &Rc<App>, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    match method {
        "rpc_get_methods" => {
            let p: GetMethods = match params {
                None => GetMethods::default(),
                Some(v) => match serde_json::from_value(v) {
                    Ok(p) => p,
                    Err(_) => return Err(RpcError::new(INVALID_PARAMS, "Invalid parameters")),
                },
            };
            let state = app.rpc_state.get().bit();
            Ok(json!(
                all_methods()
                    .filter(|m| !p.current || state_mask(m).is_some_and(|s| s & state != 0))
                    .collect::<Vec<_>>()
            ))
        }
        "framework_wait_init" => {
            // SPDK answers once the framework is initialised (the --json file included).
            while !app.init_done.get() {
                super::reactor::sleep(std::time::Duration::from_millis(10)).await;
            }
            Ok(Value::Bool(true))
        }
        "framework_start_init" => {
            if params.is_some() {
                return Err(RpcError::new(
                    INVALID_PARAMS,
                    "framework_start_init requires no parameters",
                ));
            }
            finish_init(app)
                .await
                .map(|()| Value::Bool(true))
                .map_err(|e| RpcError::new(INTERNAL_ERROR, e))
        }
        "framework_get_subsystems" => {
            if params.is_some() {
                return Err(RpcError::new(
                    INVALID_PARAMS,
                    "'framework_get_subsystems' requires no arguments",
                ));
            }
            Ok(Value::Array(
                super::config::SUBSYSTEMS
                    .iter()
                    .map(|(name, deps)| json!({"subsystem": name, "depends_on": deps}))
                    .collect(),
            ))
        }
        "framework_get_config" => {
            let Some(Ok(p)) = params.map(serde_json::from_value::<GetConfig>) else {
                return Err(RpcError::new(INVALID_PARAMS, "Invalid arguments"));
            };
            super::config::subsystem_config(app, &p.name).ok_or_else(|| {
                RpcError::new(INVALID_PARAMS, format!("Subsystem '{}' not found", p.name))
            })
        }
        other => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("Method not found: {other}"),
        )),
    }
}

/// Start-up as SPDK's app does it: the `--json` file's startup pass, then (unless
/// `wait_for_rpc`, which leaves it to `framework_start_init`) initialisation and the runtime
/// pass.
pub async fn boot(
    app: &Rc<App>,
    json: Option<String>,
    keep_going: bool,
    wait_for_rpc: bool,
) -> Result<(), String> {
    if let Some(text) = json {
        super::config::load(app, &text, keep_going, RpcState::Startup).await?;
        *app.pending_json.borrow_mut() = Some((text, keep_going));
    }
    if wait_for_rpc {
        return Ok(());
    }
    finish_init(app).await
}

/// Moves to the runtime state and runs the held `--json` runtime pass. A failing runtime
/// pass is reported to the caller (the process exits, or `framework_start_init` answers
/// the error); the node stays in the runtime state with what was created so far, as SPDK's.
async fn finish_init(app: &Rc<App>) -> Result<(), String> {
    if app.rpc_state.get() == RpcState::Runtime {
        return Err("the framework is already initialized".into());
    }
    app.rpc_state.set(RpcState::Runtime);
    let pending = app.pending_json.borrow_mut().take();
    let r = match pending {
        Some((text, keep_going)) => {
            super::config::load(app, &text, keep_going, RpcState::Runtime).await
        }
        None => Ok(()),
    };
    app.init_done.set(true);
    r
}

/// Which pass runs a config entry calling methods with `mask` (a batch: the AND of its
/// methods'): startup if the startup state allows it, else runtime; never both.
pub fn runs_in(mask: u8, pass: RpcState) -> bool {
    match pass {
        RpcState::Startup => mask & STARTUP != 0,
        RpcState::Runtime => mask & STARTUP == 0 && mask & RUNTIME != 0,
    }
}

/// `-EINVAL` for a config entry naming no known method.
pub fn unknown_method(method: &str) -> RpcError {
    RpcError::new(EINVAL, format!("Method '{method}' was not found"))
}
