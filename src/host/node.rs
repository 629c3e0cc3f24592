//! A replication node inside SPDK: its claimed base bdevs, the engine, the bdevs it
//! registers (top + ingress on a secondary, one on a primary), per-thread channels, and
//! teardown (delete, or a base bdev hot-removed).

use super::dev::SpdkDev;
use super::io::{self, Channel, IoCtx};
use super::{MODULE, exec};
use crate::control::{EBUSY, Host, Replica, RoleRef, RpcError, errno_name};
use futures::future::LocalBoxFuture;
use spdk_sys as s;
use std::cell::UnsafeCell;
use std::ffi::{CString, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Top,
    Ingress,
    Primary,
}

/// What SPDK sees as the bdev; `bdev.ctxt` points back here.
#[repr(C)]
pub struct OurBdev {
    pub bdev: s::spdk_bdev,
    pub kind: Kind,
    pub node: *const Node,
    name: CString,
}

pub struct Node {
    /// Params, engine and claimed legs, as the control plane sees them.
    pub replica: Replica<SpdkDev>,
    /// Boxed: SPDK keeps pointers to the `spdk_bdev` inside.
    #[allow(clippy::vec_box)]
    bdevs: Vec<Box<UnsafeCell<OurBdev>>>,
    live: AtomicUsize,
    /// The ingress bdev was unregistered by a reprotect: a delete must not unregister it
    /// again.
    ingress_retired: AtomicBool,
    on_gone: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl std::ops::Deref for Node {
    type Target = Replica<SpdkDev>;
    fn deref(&self) -> &Replica<SpdkDev> {
        &self.replica
    }
}

impl AsRef<Replica<SpdkDev>> for Node {
    fn as_ref(&self) -> &Replica<SpdkDev> {
        &self.replica
    }
}

// SAFETY: the engine is Sync; `bdevs` is written by SPDK only through the raw pointers it
// was given; the rest is immutable or atomic.
unsafe impl Send for Node {}
unsafe impl Sync for Node {}

static NODES: Mutex<Vec<Arc<Node>>> = Mutex::new(Vec::new());

/// Nodes, most recently created first (the order `*_all` operations use).
pub fn nodes() -> Vec<Arc<Node>> {
    NODES.lock().unwrap().iter().rev().cloned().collect()
}

impl Node {
    pub fn io_device(&self) -> *mut c_void {
        self as *const Node as *mut c_void
    }

    /// Unregisters every bdev of the node; `done` runs once the node is gone.
    pub fn unregister(self: &Arc<Self>, done: Box<dyn FnOnce() + Send>) {
        self.on_gone.lock().unwrap().push(done);
        let retired = self.ingress_retired.load(Ordering::SeqCst);
        for b in &self.bdevs {
            // SAFETY: registered bdev; SPDK calls `destruct` when it is gone.
            unsafe {
                let ob = &mut *b.get();
                if !(retired && ob.kind == Kind::Ingress) {
                    s::spdk_bdev_unregister(&mut ob.bdev, None, std::ptr::null_mut());
                }
            }
        }
    }
}

/// Opens and claims a base bdev for the parameter `param`.
fn open_leg(param: &str, name: &str) -> Result<SpdkDev, RpcError> {
    let cname = CString::new(name).map_err(|_| RpcError::invalid(param, "bad bdev name"))?;
    let mut desc = std::ptr::null_mut();
    // SAFETY: FFI; `desc` is written on success.
    let rc = unsafe {
        s::spdk_bdev_open_ext(
            cname.as_ptr(),
            true,
            Some(base_event),
            std::ptr::null_mut(),
            &mut desc,
        )
    };
    if rc == -1 {
        // SPDK refuses a writable open of a bdev another module claimed.
        return Err(RpcError::new(
            EBUSY,
            format!("{param}: bdev {name} is already claimed"),
        ));
    }
    if rc != 0 {
        return Err(RpcError::new(
            rc,
            format!("{param}: cannot open bdev {name} ({})", errno_name(rc)),
        ));
    }
    // SAFETY: open descriptor.
    let bdev = unsafe { s::spdk_bdev_desc_get_bdev(desc) };
    // SAFETY: MODULE is registered and lives for the program.
    let rc = unsafe { s::spdk_bdev_module_claim_bdev(bdev, desc, &raw mut MODULE) };
    if rc != 0 {
        // SAFETY: opened above on this thread.
        unsafe { s::spdk_bdev_close(desc) };
        return Err(RpcError::new(
            rc,
            format!("{param}: bdev {name} is already claimed"),
        ));
    }
    Ok(SpdkDev::new(name, desc))
}

fn close_legs(legs: &[SpdkDev]) {
    for leg in legs {
        let desc = leg.take_desc();
        if !desc.is_null() {
            // SAFETY: claimed and opened by us, on this (the app) thread.
            unsafe {
                s::spdk_bdev_module_release_bdev(leg.0.bdev);
                s::spdk_bdev_close(desc);
            }
        }
    }
}

fn name_taken(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: FFI lookup by name.
    !unsafe { s::spdk_bdev_get_by_name(c.as_ptr()) }.is_null()
}

/// Whether any leg in `legs` has a volatile write cache (SPDK's `write_cache`).
fn any_write_cache(legs: &[&SpdkDev]) -> bool {
    // SAFETY: open bdevs.
    legs.iter()
        .any(|l| unsafe { s::spdk_bdev_has_write_cache(l.0.bdev) })
}

/// Registers the bdevs of a replication bdev whose legs are open and claimed. On error
/// everything is released (or, if the first bdev went live, its teardown releases it).
fn register(replica: Replica<SpdkDev>) -> Result<Arc<Node>, RpcError> {
    let p = &replica.params;
    let names: Vec<String> = p.bdev_names().iter().map(|n| n.to_string()).collect();
    let legs = &replica.legs;
    // The top holds the SVM view across all three devices; the ingress writes the base;
    // the primary writes both legs (spec 4: advertise a cache when any leg has one).
    let kinds: Vec<(Kind, &str, bool)> = match replica.role() {
        RoleRef::Secondary(_) => vec![
            (
                Kind::Top,
                &names[0],
                any_write_cache(&[&legs[0], &legs[1], &legs[2]]),
            ),
            (Kind::Ingress, &names[1], any_write_cache(&[&legs[0]])),
        ],
        RoleRef::Primary(_) => vec![(
            Kind::Primary,
            &names[0],
            any_write_cache(&[&legs[0], &legs[1]]),
        )],
    };
    let (block_size, num_blocks) = {
        let l = &legs[0];
        // SAFETY: open bdev.
        unsafe {
            (
                s::spdk_bdev_get_block_size(l.0.bdev),
                s::spdk_bdev_get_num_blocks(l.0.bdev),
            )
        }
    };
    // SAFETY: reading plain fields of open bdevs.
    let align = legs
        .iter()
        .map(|l| unsafe { (*l.0.bdev).required_alignment })
        .max()
        .unwrap_or(0);
    let mut bdevs = Vec::new();
    for (kind, name, _) in &kinds {
        let Ok(name) = CString::new(*name) else {
            close_legs(legs);
            return Err(RpcError::invalid("name", "must not contain NUL"));
        };
        bdevs.push(Box::new(UnsafeCell::new(OurBdev {
            bdev: s::spdk_bdev::default(),
            kind: *kind,
            node: std::ptr::null(),
            name,
        })));
    }
    let node = Arc::new(Node {
        replica,
        bdevs,
        live: AtomicUsize::new(0),
        ingress_retired: AtomicBool::new(false),
        on_gone: Mutex::new(Vec::new()),
    });
    let io_name = CString::new(format!("replication_{}", node.name())).unwrap_or_default();
    // SAFETY: the node outlives the io_device (unregistered in `teardown`).
    unsafe {
        s::spdk_io_device_register(
            node.io_device(),
            Some(io::channel_create),
            Some(io::channel_destroy),
            std::mem::size_of::<Channel>() as u32,
            io_name.as_ptr(),
        )
    };
    for (i, cell) in node.bdevs.iter().enumerate() {
        // SAFETY: not yet registered, so not shared with SPDK.
        let ob = unsafe { &mut *cell.get() };
        ob.node = Arc::as_ptr(&node);
        let b = &mut ob.bdev;
        b.ctxt = cell.get().cast();
        b.name = ob.name.as_ptr() as *mut _;
        b.product_name = c"COLO replication".as_ptr() as *mut _;
        b.blocklen = block_size;
        b.blockcnt = num_blocks;
        b.required_alignment = align;
        b.write_cache = i32::from(kinds[i].2);
        b.fn_table = &io::FN_TABLE;
        b.module = &raw mut MODULE;
        // SAFETY: fully initialised bdev in stable memory.
        let rc = unsafe { s::spdk_bdev_register(b) };
        if rc != 0 {
            tracing::error!(bdev = %ob.name.to_string_lossy(), rc, "bdev registration failed");
            let err = RpcError::new(
                rc,
                format!(
                    "name: cannot register bdev {} ({})",
                    ob.name.to_string_lossy(),
                    errno_name(rc)
                ),
            );
            if i == 0 {
                close_legs(&node.legs);
                // SAFETY: registered above; no channel can exist without a bdev.
                unsafe { s::spdk_io_device_unregister(node.io_device(), None) };
                return Err(err);
            }
            // The first bdev is live: let its teardown release everything.
            NODES.lock().unwrap().push(node.clone());
            // SAFETY: registered bdev.
            unsafe {
                s::spdk_bdev_unregister(
                    &mut (*node.bdevs[0].get()).bdev,
                    None,
                    std::ptr::null_mut(),
                )
            };
            return Err(err);
        }
        node.live.fetch_add(1, Ordering::SeqCst);
    }
    NODES.lock().unwrap().push(node.clone());
    Ok(node)
}

/// fn_table.destruct: the last of a node's bdevs gone means the node goes.
pub unsafe extern "C" fn destruct(ctx: *mut c_void) -> i32 {
    // SAFETY: ctxt of one of our bdevs.
    let node = unsafe { &*(*(ctx as *const OurBdev)).node };
    if node.live.fetch_sub(1, Ordering::SeqCst) == 1 {
        teardown(node);
    }
    0
}

fn teardown(node: &Node) {
    // After a reprotect: the former base and the remote (the overlays went at `done`).
    close_legs(node.current_legs());
    close_legs(&node.legs);
    // SAFETY: registered in `create`.
    unsafe { s::spdk_io_device_unregister(node.io_device(), Some(io_device_gone)) };
}

unsafe extern "C" fn io_device_gone(io_device: *mut c_void) {
    let node = {
        let mut all = NODES.lock().unwrap();
        let i = all.iter().position(|n| n.io_device() == io_device);
        i.map(|i| all.remove(i))
    };
    if let Some(node) = node {
        tracing::info!(name = node.name(), "replication bdev deleted");
        for done in std::mem::take(&mut *node.on_gone.lock().unwrap()) {
            done();
        }
    }
}

/// Events on a claimed base bdev.
unsafe extern "C" fn base_event(
    ty: s::spdk_bdev_event_type,
    bdev: *mut s::spdk_bdev,
    _ctx: *mut c_void,
) {
    if ty != s::SPDK_BDEV_EVENT_REMOVE {
        return;
    }
    let Some(node) = NODES
        .lock()
        .unwrap()
        .iter()
        .find(|n| n.current_legs().iter().any(|l| l.0.bdev == bdev))
        .cloned()
    else {
        return;
    };
    let Some(leg) = node.current_legs().iter().position(|l| l.0.bdev == bdev) else {
        return;
    };
    match node.role() {
        RoleRef::Primary(p) if leg == 1 => {
            tracing::warn!(
                name = node.name(),
                "remote leg removed: replication link broken, continuing locally"
            );
            p.break_link();
            io::drop_remote_leg(node);
        }
        _ => {
            tracing::warn!(
                name = node.name(),
                base = node.current_legs()[leg].name(),
                "base bdev removed: removing the replication bdev"
            );
            let n = node.clone();
            node.unregister(Box::new(move || drop(n)));
        }
    }
}

/// The SPDK host of the control plane: bdevs are SPDK bdevs, tasks run on the calling
/// SPDK thread.
pub struct SpdkHost;

impl Host for SpdkHost {
    type Dev = SpdkDev;
    type Node = Node;

    fn nodes(&self) -> Vec<Arc<Node>> {
        nodes()
    }
    fn bdev_exists(&self, name: &str) -> bool {
        name_taken(name)
    }
    fn open_claim(&self, param: &'static str, bdev: &str) -> Result<SpdkDev, RpcError> {
        open_leg(param, bdev)
    }
    fn release(&self, legs: Vec<SpdkDev>) {
        close_legs(&legs);
    }
    fn register(&self, replica: Replica<SpdkDev>) -> Result<Arc<Node>, RpcError> {
        register(replica)
    }
    fn unregister(&self, node: Arc<Node>) -> LocalBoxFuture<'static, ()> {
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        let n = node.clone();
        node.unregister(Box::new(move || {
            drop(n);
            let _ = tx.send(());
        }));
        Box::pin(async move {
            let _ = rx.await;
        })
    }
    fn spawn_merge(&self, node: Arc<Node>) {
        exec::spawn(async move {
            node.run_merge(&exec::SpdkRuntime).await;
            if node.stage() == crate::engine::Stage::Done {
                io::release_overlays(node.clone());
            }
        });
    }
    fn spawn_sync(&self, node: Arc<Node>) {
        exec::spawn(async move {
            node.run_job(&exec::SpdkRuntime).await;
        });
    }
    fn release_overlays(&self, node: &Arc<Node>) {
        io::release_overlays(node.clone());
    }
    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(exec::sleep(d))
    }
    /// The I/O path routes by [`Replica::role`]; channels are switched by `retire_ingress`.
    fn reprotect_supported(&self, _name: &str) -> Result<(), RpcError> {
        Ok(())
    }
    /// The reprotected node's channels take the primary's shape, and its ingress bdev is
    /// unregistered (SPDK hot-removes it from the subsystems and controllers using it).
    fn retire_ingress(&self, node: &Arc<Node>) {
        io::promote_channels(node.clone());
        if node.ingress_retired.swap(true, Ordering::SeqCst) {
            return;
        }
        // The top now writes the former base and the remote: advertise a cache when either
        // has one (spec 4), for exports and consumers that look from now on.
        let legs = node.replica.current_legs();
        let write_cache = any_write_cache(&legs.iter().collect::<Vec<_>>());
        for b in &node.bdevs {
            // SAFETY: our registered bdevs; `destruct` runs when the ingress is gone.
            unsafe {
                let ob = &mut *b.get();
                if ob.kind == Kind::Top {
                    ob.bdev.write_cache = i32::from(write_cache);
                }
                if ob.kind == Kind::Ingress {
                    tracing::info!(
                        ingress = %ob.name.to_string_lossy(),
                        "reprotect: ingress bdev unregistered"
                    );
                    s::spdk_bdev_unregister(&mut ob.bdev, None, std::ptr::null_mut());
                }
            }
        }
    }
}

pub unsafe extern "C" fn get_ctx_size() -> i32 {
    std::mem::size_of::<IoCtx>() as i32
}
