//! Command-line definition and its mapping to JSON-RPC requests.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::api::{
    self, CreateParams, CreateRole, DeleteParams, Mode, NameParams, ReprotectParams, ReprotectSync,
    Request, ResyncParams, StartParams, StopParams, SyncMode, VerifyParams,
};
use crate::client::DEFAULT_SOCKET;

/// Control COLO block replication bdevs of a running SPDK application.
#[derive(Debug, Parser)]
#[command(name = "replctl", version)]
pub struct Cli {
    /// JSON-RPC Unix socket of the SPDK application
    #[arg(short, long, global = true, env = "REPLCTL_SOCKET",
          help_heading = "Global options", value_name = "PATH",
          default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Timeout of each request, in seconds
    #[arg(short, long, global = true,
          help_heading = "Global options", value_name = "SECS",
          default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a replication bdev
    Create(CreateArgs),
    /// Delete a replication bdev
    Delete {
        /// Replication bdev name
        name: String,
        /// Delete even in failover_failed, dropping the unmerged SVM data
        #[arg(long)]
        force: bool,
    },
    /// Start replication (all bdevs if NAME is omitted)
    Start {
        /// Replication bdev name
        name: Option<String>,
        /// Mode to start replication in
        #[arg(long)]
        mode: Option<Mode>,
        /// Primary: `full` copies the whole local disk to the remote in the background
        #[arg(long)]
        sync: Option<SyncMode>,
    },
    /// Re-establish a primary's broken link and copy the dirty regions
    Resync {
        /// Replication bdev name
        name: String,
        /// Copy every region, not only the dirty ones
        #[arg(long)]
        full: bool,
        /// Wait, showing progress, until the copy has finished
        #[arg(long)]
        wait: bool,
    },
    /// Turn a promoted secondary (stage done) into a primary replicating to REMOTE_BDEV,
    /// in place: same bdev, exports and guest connections
    Reprotect {
        /// Replication bdev name
        name: String,
        /// The new secondary's ingress, attached on this node (e.g. an NVMe-oF bdev)
        remote_bdev: String,
        /// `full` (default) copies the whole disk in the background; `none` asserts the
        /// disks are equal; `incremental` copies what this node changed since the last
        /// checkpoint (the new secondary is the former primary's disk)
        #[arg(long)]
        sync: Option<ReprotectSync>,
        /// With `--sync incremental`: also copy the regions in this file, the former
        /// primary's `replctl dirty-map` output (what it wrote that may not have reached
        /// this node)
        #[arg(long, value_name = "FILE", value_parser = parse_peer_map)]
        peer_map: Option<PeerMap>,
        /// Wait, showing progress, until the copy has finished
        #[arg(long)]
        wait: bool,
    },
    /// Print a primary's dirty map (the regions that may differ on its remote) as JSON,
    /// for `reprotect --peer-map` on the promoted peer
    DirtyMap {
        /// Replication bdev name
        name: String,
    },
    /// Compare a primary's local and remote disks online; mismatches become dirty
    Verify {
        /// Replication bdev name
        name: String,
        /// Wait, showing progress, until the compare has finished
        #[arg(long)]
        wait: bool,
    },
    /// Take a checkpoint (all bdevs if NAME is omitted)
    Checkpoint {
        /// Replication bdev name
        name: Option<String>,
    },
    /// Stop replication (all bdevs if NAME is omitted)
    Stop {
        /// Replication bdev name
        name: Option<String>,
        /// Fail over rather than just stop (a secondary merges its active disk into its base)
        #[arg(long)]
        failover: bool,
        /// Wait, showing progress, until the failover merge has finished
        #[arg(long, requires = "failover")]
        wait: bool,
    },
    /// Show replication status (all bdevs if NAME is omitted)
    Status {
        /// Replication bdev name
        name: Option<String>,
        /// Print the raw JSON result
        #[arg(long)]
        json: bool,
    },
    /// Show each bdev's stage and last error
    GetError {
        /// Replication bdev name
        name: Option<String>,
    },
    /// Call any JSON-RPC method and print its result as JSON
    Rpc {
        /// Method name, e.g. bdev_get_bdevs
        method: String,
        /// Params as a JSON object or array, e.g. '{"name":"r0"}'
        #[arg(value_name = "PARAMS_JSON", value_parser = parse_json)]
        params: Option<Value>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the new bdev
    #[arg(long)]
    pub name: String,
    /// Role of the new bdev
    #[arg(long)]
    pub mode: Mode,

    /// Local bdev written through on the primary
    #[arg(long, value_name = "BDEV", help_heading = "Primary options")]
    pub local_bdev: Option<String>,
    /// Bdev reaching the secondary (e.g. NVMe-oF), mirrored to
    #[arg(long, value_name = "BDEV", help_heading = "Primary options")]
    pub remote_bdev: Option<String>,
    /// Timeout of remote writes, in milliseconds
    #[arg(long, value_name = "MS", help_heading = "Primary options")]
    pub remote_timeout_ms: Option<u64>,

    /// Base image on the secondary
    #[arg(long, value_name = "BDEV", help_heading = "Secondary options")]
    pub base_bdev: Option<String>,
    /// Hidden (copy-on-write) disk on the secondary
    #[arg(long, value_name = "BDEV", help_heading = "Secondary options")]
    pub hidden_bdev: Option<String>,
    /// Active disk on the secondary
    #[arg(long, value_name = "BDEV", help_heading = "Secondary options")]
    pub active_bdev: Option<String>,
    /// Name of the bdev receiving the primary's writes [default: <NAME>_ingress]
    #[arg(long, value_name = "NAME", help_heading = "Secondary options")]
    pub ingress_name: Option<String>,
    /// Copy-on-write granularity, in bytes
    #[arg(long, value_name = "BYTES", help_heading = "Secondary options")]
    pub cow_granularity: Option<u64>,
}

/// An option combination clap cannot express: which bdev options are
/// required or allowed depends on the value of `--mode`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("{option} is required with --mode {mode}")]
    Missing { option: &'static str, mode: Mode },
    #[error("{option} is only valid with --mode {mode}")]
    WrongMode { option: &'static str, mode: Mode },
}

fn parse_json(s: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(s)
}

/// `[offset, length]` byte extents read from a `replctl dirty-map` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMap(pub Vec<[u64; 2]>);

/// Reads `path`: the `bdev_replication_get_dirty_map` result (an object with `extents`),
/// or just its `extents` array.
fn parse_peer_map(path: &str) -> Result<PeerMap, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let extents = match v {
        Value::Object(mut o) => o
            .remove("extents")
            .ok_or(format!("{path}: no \"extents\""))?,
        v => v,
    };
    serde_json::from_value(extents)
        .map(PeerMap)
        .map_err(|e| format!("{path}: extents: {e}"))
}

impl Command {
    /// The JSON-RPC request this command sends first.
    pub fn request(&self) -> Result<Request, UsageError> {
        Ok(match self {
            Command::Create(args) => Request::new(api::CREATE, &args.params()?),
            Command::Delete { name, force } => Request::new(
                api::DELETE,
                &DeleteParams {
                    name: name.clone(),
                    force: *force,
                },
            ),
            Command::Start { name, mode, sync } => Request::new(
                api::START,
                &StartParams {
                    name: name.clone(),
                    mode: *mode,
                    sync: *sync,
                },
            ),
            Command::Resync { name, full, .. } => Request::new(
                api::RESYNC,
                &ResyncParams {
                    name: name.clone(),
                    full: *full,
                },
            ),
            Command::Verify { name, .. } => {
                Request::new(api::VERIFY, &VerifyParams { name: name.clone() })
            }
            Command::Reprotect {
                name,
                remote_bdev,
                sync,
                peer_map,
                ..
            } => Request::new(
                api::REPROTECT,
                &ReprotectParams {
                    name: name.clone(),
                    remote_bdev: remote_bdev.clone(),
                    sync: *sync,
                    peer_dirty_extents: peer_map.as_ref().map(|m| m.0.clone()),
                },
            ),
            Command::DirtyMap { name } => Request::new(
                api::GET_DIRTY_MAP,
                &NameParams {
                    name: Some(name.clone()),
                },
            ),
            Command::Checkpoint { name } => Request::new(api::CHECKPOINT, &name_params(name)),
            Command::Stop { name, failover, .. } => Request::new(
                api::STOP,
                &StopParams {
                    name: name.clone(),
                    failover: *failover,
                },
            ),
            Command::Status { name, .. } => Request::new(api::GET_STATUS, &name_params(name)),
            Command::GetError { name } => Request::new(api::GET_ERROR, &name_params(name)),
            // Sent verbatim: the operator chose the exact params.
            Command::Rpc { method, params } => Request {
                method: method.clone(),
                params: params.clone(),
            },
        })
    }
}

fn name_params(name: &Option<String>) -> NameParams {
    NameParams { name: name.clone() }
}

impl CreateArgs {
    fn params(&self) -> Result<CreateParams, UsageError> {
        let role = match self.mode {
            Mode::Primary => {
                reject(
                    Mode::Secondary,
                    &[
                        ("--base-bdev", self.base_bdev.is_some()),
                        ("--hidden-bdev", self.hidden_bdev.is_some()),
                        ("--active-bdev", self.active_bdev.is_some()),
                        ("--ingress-name", self.ingress_name.is_some()),
                        ("--cow-granularity", self.cow_granularity.is_some()),
                    ],
                )?;
                CreateRole::Primary {
                    local_bdev: require(&self.local_bdev, "--local-bdev", Mode::Primary)?,
                    remote_bdev: require(&self.remote_bdev, "--remote-bdev", Mode::Primary)?,
                    remote_timeout_ms: self.remote_timeout_ms,
                }
            }
            Mode::Secondary => {
                reject(
                    Mode::Primary,
                    &[
                        ("--local-bdev", self.local_bdev.is_some()),
                        ("--remote-bdev", self.remote_bdev.is_some()),
                        ("--remote-timeout-ms", self.remote_timeout_ms.is_some()),
                    ],
                )?;
                CreateRole::Secondary {
                    base_bdev: require(&self.base_bdev, "--base-bdev", Mode::Secondary)?,
                    hidden_bdev: require(&self.hidden_bdev, "--hidden-bdev", Mode::Secondary)?,
                    active_bdev: require(&self.active_bdev, "--active-bdev", Mode::Secondary)?,
                    ingress_name: self.ingress_name.clone(),
                    cow_granularity: self.cow_granularity,
                }
            }
        };
        Ok(CreateParams {
            name: self.name.clone(),
            role,
        })
    }
}

fn require(value: &Option<String>, option: &'static str, mode: Mode) -> Result<String, UsageError> {
    value.clone().ok_or(UsageError::Missing { option, mode })
}

/// Fails on the first of `options` (all belonging to `mode`) that was given.
fn reject(mode: Mode, options: &[(&'static str, bool)]) -> Result<(), UsageError> {
    match options.iter().find(|(_, given)| *given) {
        Some(&(option, _)) => Err(UsageError::WrongMode { option, mode }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
