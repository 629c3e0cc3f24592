//! `bdev_replication_*` params (spec section 6), decoded with serde; the checks that need
//! no device; defaults filled in so that status and save_config show what is in force.

use super::error::{INVALID_PARAMS, RpcError};
use crate::engine::{
    DEFAULT_COW_GRANULARITY, DEFAULT_REMOTE_TIMEOUT_MS, DEFAULT_SYNC_GRANULARITY,
    MAX_COW_GRANULARITY, MAX_REMOTE_TIMEOUT_MS, MAX_SYNC_GRANULARITY, Mode, SyncMode,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Primary: bytes per dirty-map region (docs/protection.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_granularity: Option<u64>,
}

/// Parameter names and whether each was given.
type Presence<'a> = &'a [(&'a str, bool)];

fn check_name(param: &str, v: &str) -> Result<(), RpcError> {
    if v.is_empty() {
        return Err(RpcError::invalid(param, "must not be empty"));
    }
    if v.contains('\0') {
        return Err(RpcError::invalid(param, "must not contain NUL"));
    }
    Ok(())
}

impl CreateParams {
    /// Checks which parameters belong to the mode and their values, and fills in the
    /// defaults.
    pub fn validated(mut self) -> Result<Self, RpcError> {
        check_name("name", &self.name)?;
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
                    ("sync_granularity", self.sync_granularity.is_some()),
                ],
            ),
        };
        if let Some((p, _)) = required.iter().find(|(_, present)| !present) {
            return Err(RpcError::invalid(
                p,
                format!("required with mode {}", self.mode),
            ));
        }
        if let Some((p, _)) = foreign.iter().find(|(_, present)| *present) {
            return Err(RpcError::invalid(
                p,
                format!("not valid with mode {}", self.mode),
            ));
        }
        for (param, bdev) in self.leg_params() {
            check_name(param, bdev)?;
        }
        match self.mode {
            Mode::Primary => {
                let ms = *self
                    .remote_timeout_ms
                    .get_or_insert(DEFAULT_REMOTE_TIMEOUT_MS);
                if ms == 0 || ms > MAX_REMOTE_TIMEOUT_MS {
                    return Err(RpcError::invalid(
                        "remote_timeout_ms",
                        format!("must be between 1 and {MAX_REMOTE_TIMEOUT_MS}, got {ms}"),
                    ));
                }
                let g = *self
                    .sync_granularity
                    .get_or_insert(DEFAULT_SYNC_GRANULARITY);
                if !g.is_power_of_two() || g > MAX_SYNC_GRANULARITY {
                    return Err(RpcError::invalid(
                        "sync_granularity",
                        format!("{g} must be a power of two, at most {MAX_SYNC_GRANULARITY}"),
                    ));
                }
            }
            Mode::Secondary => {
                let ingress = self
                    .ingress_name
                    .get_or_insert_with(|| format!("{}_ingress", self.name));
                if ingress.is_empty() || *ingress == self.name {
                    return Err(RpcError::invalid(
                        "ingress_name",
                        "must be non-empty and differ from name",
                    ));
                }
                check_name("ingress_name", ingress)?;
                let g = *self.cow_granularity.get_or_insert(DEFAULT_COW_GRANULARITY);
                if !g.is_power_of_two() || g > MAX_COW_GRANULARITY {
                    return Err(RpcError::invalid(
                        "cow_granularity",
                        format!("{g} must be a power of two, at most {MAX_COW_GRANULARITY}"),
                    ));
                }
            }
        }
        Ok(self)
    }

    /// The bdevs to claim, in engine order (local, remote or base, hidden, active), with
    /// their parameter names.
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

    /// The names of the bdevs this replication bdev registers: `name` (and the ingress).
    pub fn bdev_names(&self) -> Vec<&str> {
        std::iter::once(self.name.as_str())
            .chain(self.ingress_name.as_deref())
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub name: String,
    /// Needed in `failover_failed`, where deleting drops unmerged SVM data.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptName {
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    pub name: Option<String>,
    pub mode: Option<Mode>,
    /// Primary only: `"none"` (default) or `"full"`.
    pub sync: Option<SyncMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncParams {
    pub name: String,
    /// Copy every region, not only the dirty ones.
    #[serde(default)]
    pub full: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameParams {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    pub name: Option<String>,
    #[serde(default)]
    pub failover: bool,
}

/// Decodes an RPC's params (absent params are `{}`); errors are -32602 with the path of
/// the parameter at fault (`mode: unknown variant ...`).
pub fn decode<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    let v = match params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(RpcError::new(INVALID_PARAMS, "params: must be an object")),
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        };
        RpcError::new(INVALID_PARAMS, msg)
    })
}
