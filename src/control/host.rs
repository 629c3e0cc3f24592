//! What a host provides to the control plane, and the `bdev_replication_*` methods over it.
//! The SPDK host implements [`Host`] over SPDK bdevs; the native host over its own; tests
//! over RAM disks. Everything else about an RPC (decoding, checks, order of claims,
//! rollback, stage rules, `*_all`, delete policy, status) is decided here, once.

use super::error::{EEXIST, EINVAL, ENOTSUP, METHOD_NOT_FOUND, RpcError};
use super::params::{
    CreateParams, DeleteParams, NameParams, OptName, ResyncParams, StartParams, StopParams, decode,
};
use super::replica::{Control, Replica, Task};
use super::reprotect::{ReprotectParams, ReprotectSync};
use crate::engine::{BlockDevice, ReplicationError};
use futures::future::LocalBoxFuture;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

/// How often a delete re-checks a running merge.
const DELETE_MERGE_POLL: Duration = Duration::from_millis(10);

pub trait Host {
    type Dev: BlockDevice + Clone;
    /// The host's record of a registered replication bdev.
    type Node: AsRef<Replica<Self::Dev>> + 'static;

    /// Registered replication bdevs, most recently created first.
    fn nodes(&self) -> Vec<Arc<Self::Node>>;
    /// Whether any bdev (ours or not) has this name.
    fn bdev_exists(&self, name: &str) -> bool;
    /// Opens bdev `bdev` for writing and claims it; errors name `param`.
    fn open_claim(&self, param: &'static str, bdev: &str) -> Result<Self::Dev, RpcError>;
    /// Releases claims taken by [`Host::open_claim`] and closes the bdevs.
    fn release(&self, legs: Vec<Self::Dev>);
    /// Registers the bdevs of `replica`. On error the host has released everything.
    fn register(&self, replica: Replica<Self::Dev>) -> Result<Arc<Self::Node>, RpcError>;
    /// Unregisters the node's bdevs and releases its claims; completes when they are gone.
    fn unregister(&self, node: Arc<Self::Node>) -> LocalBoxFuture<'static, ()>;
    /// Runs [`Replica::run_merge`] of `node` as a background task (on the calling
    /// reactor), pausing with the host's timers when it backs off.
    fn spawn_merge(&self, node: Arc<Self::Node>);
    /// Runs [`Replica::run_job`] of `node` (a primary's sync or verify) as a background
    /// task on the calling reactor, with the host's timers for the remote timeout; pauses
    /// as asked between regions (a reactor turn, or ~1 ms to back off).
    fn spawn_sync(&self, node: Arc<Self::Node>);
    /// A secondary reached `done`: drop the claims on its overlays (spec 5.5) so they can
    /// be deleted or reused without touching the top. Idempotent. A host's merge task
    /// calls it too when the merge completes.
    fn release_overlays(&self, node: &Arc<Self::Node>);
    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()>;
    /// Whether this host can switch a registered secondary to a primary in place
    /// (`bdev_replication_reprotect`): its I/O path must route by [`Replica::role`].
    /// Asked before anything changes; the default refuses.
    fn reprotect_supported(&self, name: &str) -> Result<(), RpcError> {
        Err(RpcError::new(
            ENOTSUP,
            format!("{name}: bdev_replication_reprotect is not supported on this host"),
        ))
    }
    /// A reprotect switched `node` to a primary: stop serving its former ingress face
    /// (unregister it; exports of it are hot-removed as at a delete).
    fn retire_ingress(&self, _node: &Arc<Self::Node>) {}
}

/// The methods of spec section 6 this control plane answers.
pub const METHODS: &[&str] = &[
    "bdev_replication_create",
    "bdev_replication_delete",
    "bdev_replication_start",
    "bdev_replication_checkpoint",
    "bdev_replication_stop",
    "bdev_replication_get_error",
    "bdev_replication_get_status",
    "bdev_replication_resync",
    "bdev_replication_verify",
];

/// Methods [`handle`] answers that a host registers only once it supports them (the SPDK
/// host registers [`METHODS`] and checks their count; it does not route by role yet, see
/// [`Host::reprotect_supported`]).
pub const EXTRA_METHODS: &[&str] = &[
    "bdev_replication_reprotect",
    "bdev_replication_get_dirty_map",
];

/// Answers one `bdev_replication_*` call.
pub async fn handle<H: Host>(
    host: &H,
    method: &str,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    match method {
        "bdev_replication_create" => create(host, decode(params)?).map(Value::from),
        "bdev_replication_delete" => delete(host, decode(params)?).await,
        "bdev_replication_start" => {
            let p: StartParams = decode(params)?;
            let op = Control::Start {
                mode: p.mode,
                sync: p.sync,
            };
            run_control(host, p.name, op).await
        }
        "bdev_replication_checkpoint" => {
            let p: OptName = decode(params)?;
            run_control(host, p.name, Control::Checkpoint).await
        }
        "bdev_replication_stop" => {
            let p: StopParams = decode(params)?;
            let op = Control::Stop {
                failover: p.failover,
            };
            run_control(host, p.name, op).await
        }
        "bdev_replication_get_error" => list(host, decode(params)?, Replica::get_error),
        "bdev_replication_get_status" => list(host, decode(params)?, Replica::status),
        "bdev_replication_resync" => {
            let p: ResyncParams = decode(params)?;
            let node = find(host, &p.name).ok_or_else(|| RpcError::no_such_replica(&p.name))?;
            node.as_ref().as_ref().resync(p.full)?;
            host.spawn_sync(node);
            Ok(Value::Bool(true))
        }
        "bdev_replication_verify" => {
            let p: NameParams = decode(params)?;
            let node = find(host, &p.name).ok_or_else(|| RpcError::no_such_replica(&p.name))?;
            node.as_ref().as_ref().verify()?;
            host.spawn_sync(node);
            Ok(Value::Bool(true))
        }
        "bdev_replication_reprotect" => reprotect(host, decode(params)?).await,
        "bdev_replication_get_dirty_map" => {
            let p: NameParams = decode(params)?;
            let node = find(host, &p.name).ok_or_else(|| RpcError::no_such_replica(&p.name))?;
            node.as_ref().as_ref().dirty_map()
        }
        other => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("Method not found: {other}"),
        )),
    }
}

pub fn find<H: Host>(host: &H, name: &str) -> Option<Arc<H::Node>> {
    host.nodes()
        .into_iter()
        .find(|n| n.as_ref().as_ref().name() == name)
}

fn targets<H: Host>(host: &H, name: Option<&str>) -> Result<Vec<Arc<H::Node>>, RpcError> {
    match name {
        Some(n) => find(host, n)
            .map(|n| vec![n])
            .ok_or_else(|| RpcError::no_such_replica(n)),
        None => Ok(host.nodes()),
    }
}

/// `bdev_replication_create`. On any error nothing is left behind: no claim, no bdev.
pub fn create<H: Host>(host: &H, p: CreateParams) -> Result<String, RpcError> {
    let p = p.validated()?;
    let names = p.bdev_names();
    for n in &names {
        let ours = host
            .nodes()
            .iter()
            .any(|node| node.as_ref().as_ref().params().bdev_names().contains(n));
        if ours || host.bdev_exists(n) {
            return Err(RpcError::new(
                EEXIST,
                format!("name: bdev {n} already exists"),
            ));
        }
    }
    let wanted = p.leg_params();
    for (i, (pa, a)) in wanted.iter().enumerate() {
        if let Some((pb, _)) = wanted[..i].iter().find(|(_, b)| b == a) {
            return Err(RpcError::invalid(
                pa,
                format!("bdev {a} is already used as {pb}"),
            ));
        }
        if names.contains(a) {
            return Err(RpcError::invalid(
                pa,
                format!("bdev {a} is the replication bdev itself"),
            ));
        }
    }
    let mut legs = Vec::with_capacity(wanted.len());
    for (param, bdev) in &wanted {
        match host.open_claim(param, bdev) {
            Ok(l) => legs.push(l),
            Err(e) => {
                host.release(legs);
                return Err(e);
            }
        }
    }
    let replica = match Replica::new(p.clone(), legs.clone()) {
        Ok(r) => r,
        Err(e) => {
            host.release(legs);
            return Err(RpcError::new(EINVAL, e.to_string()));
        }
    };
    drop(legs);
    let node = host.register(replica)?;
    let r = node.as_ref().as_ref();
    tracing::info!(name = r.name(), mode = %r.mode(), "replication bdev created");
    Ok(r.name().to_owned())
}

/// `bdev_replication_delete`: refused in `failover_failed` without `force`; waits for a
/// running merge (never leaves a half-merged base), then unregisters.
pub async fn delete<H: Host>(host: &H, p: DeleteParams) -> Result<Value, RpcError> {
    let node = find(host, &p.name).ok_or_else(|| RpcError::no_such_replica(&p.name))?;
    let r = node.as_ref().as_ref();
    r.check_delete(p.force)?;
    while r.is_merging() || r.is_reprotecting() {
        host.sleep(DELETE_MERGE_POLL).await;
    }
    // The merge may have failed meanwhile.
    r.check_delete(p.force)?;
    host.unregister(node).await;
    Ok(Value::Bool(true))
}

/// start / checkpoint / stop on one bdev, or on all of them, most recently created first,
/// stopping at the first error (COLO's `*_all` semantics).
async fn run_control<H: Host>(
    host: &H,
    name: Option<String>,
    op: Control,
) -> Result<Value, RpcError> {
    for node in targets(host, name.as_deref())? {
        let r = node.as_ref().as_ref();
        let task = r.control(op).await?;
        if task == Task::Merge {
            host.spawn_merge(node.clone());
        } else if task == Task::Job {
            host.spawn_sync(node.clone());
        } else if r.secondary().is_some() && r.stage() == crate::engine::Stage::Done {
            host.release_overlays(&node);
        }
    }
    Ok(Value::Bool(true))
}

/// `bdev_replication_reprotect`. On any error nothing changed: the remote leg's claim is
/// rolled back, the bdev keeps its role.
pub async fn reprotect<H: Host>(host: &H, p: ReprotectParams) -> Result<Value, RpcError> {
    let node = find(host, &p.name).ok_or_else(|| RpcError::no_such_replica(&p.name))?;
    let r = node.as_ref().as_ref();
    r.check_reprotect()?;
    host.reprotect_supported(r.name())?;
    let params = r.reprotect_params(&p)?;
    let peer = r.peer_extents(&p)?;
    if r.params.bdev_names().contains(&p.remote_bdev.as_str()) {
        return Err(RpcError::invalid(
            "remote_bdev",
            format!("bdev {} is the replication bdev itself", p.remote_bdev),
        ));
    }
    if r.reprotecting
        .compare_exchange(false, true, SeqCst, SeqCst)
        .is_err()
    {
        return Err(RpcError::from_engine(
            r.name(),
            ReplicationError::Busy("a reprotect is already running".into()),
        ));
    }
    // Cleared on every way out: a delete waits while it is set.
    struct Reprotecting<'a>(&'a AtomicBool);
    impl Drop for Reprotecting<'_> {
        fn drop(&mut self) {
            self.0.store(false, SeqCst);
        }
    }
    let _busy = Reprotecting(&r.reprotecting);
    let remote = host.open_claim("remote_bdev", &p.remote_bdev)?;
    if !find(host, &p.name).is_some_and(|n| Arc::ptr_eq(&n, &node)) {
        // Deleted since the lookup (a delete that began before this reprotect).
        host.release(vec![remote]);
        return Err(RpcError::no_such_replica(&p.name));
    }
    // At `done` the overlays are released already (idempotent).
    host.release_overlays(&node);
    let sync = p.sync.unwrap_or(ReprotectSync::Full);
    let task = match r.reprotect(remote.clone(), params, sync, &peer).await {
        Ok(t) => t,
        Err(e) => {
            host.release(vec![remote]);
            return Err(e);
        }
    };
    host.retire_ingress(&node);
    if task == Task::Job {
        host.spawn_sync(node.clone());
    }
    Ok(Value::Bool(true))
}

fn list<H: Host>(
    host: &H,
    p: OptName,
    f: fn(&Replica<H::Dev>) -> Value,
) -> Result<Value, RpcError> {
    let nodes = targets(host, p.name.as_deref())?;
    Ok(Value::Array(
        nodes.iter().map(|n| f(n.as_ref().as_ref())).collect(),
    ))
}
