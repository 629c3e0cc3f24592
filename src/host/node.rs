//! A replication node inside SPDK: its claimed base bdevs, the engine, the bdevs it
//! registers (top + ingress on a secondary, one on a primary), per-thread channels, and
//! teardown (delete, or a base bdev hot-removed).

use super::dev::SpdkDev;
use super::io::{self, Channel, IoCtx};
use super::rpc::{CreateParams, RpcError};
use super::{MODULE, exec};
use crate::engine::{Mode, Primary, PrimaryConfig, ReplicationError, Secondary};
use spdk_sys as s;
use std::cell::UnsafeCell;
use std::ffi::{CString, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[allow(clippy::large_enum_variant)] // one per node, inside an Arc
pub enum Role {
    Primary(Primary<SpdkDev>),
    Secondary(Secondary<SpdkDev>),
}

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
    /// As created, defaults filled in: what status reports and save_config replays.
    pub params: CreateParams,
    pub role: Role,
    /// Claimed base bdevs: base, hidden, active (secondary) or local, remote (primary).
    pub legs: Vec<SpdkDev>,
    /// Boxed: SPDK keeps pointers to the `spdk_bdev` inside.
    #[allow(clippy::vec_box)]
    bdevs: Vec<Box<UnsafeCell<OurBdev>>>,
    live: AtomicUsize,
    on_gone: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
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

pub fn find(name: &str) -> Option<Arc<Node>> {
    NODES
        .lock()
        .unwrap()
        .iter()
        .find(|n| n.params.name == name)
        .cloned()
}

impl Node {
    pub fn name(&self) -> &str {
        &self.params.name
    }

    pub fn mode(&self) -> Mode {
        match self.role {
            Role::Primary(_) => Mode::Primary,
            Role::Secondary(_) => Mode::Secondary,
        }
    }

    pub fn io_device(&self) -> *mut c_void {
        self as *const Node as *mut c_void
    }

    /// Unregisters every bdev of the node; `done` runs once the node is gone.
    pub fn unregister(self: &Arc<Self>, done: Box<dyn FnOnce() + Send>) {
        self.on_gone.lock().unwrap().push(done);
        for b in &self.bdevs {
            // SAFETY: registered bdev; SPDK calls `destruct` when it is gone.
            unsafe { s::spdk_bdev_unregister(&mut (*b.get()).bdev, None, std::ptr::null_mut()) };
        }
    }
}

fn param_err(param: &str, msg: String) -> RpcError {
    RpcError::new(-22, format!("{param}: {msg}"))
}

/// Opens and claims a base bdev for the parameter `param`.
fn open_leg(param: &str, name: &str) -> Result<SpdkDev, RpcError> {
    let cname = CString::new(name).map_err(|_| param_err(param, "bad bdev name".into()))?;
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
            -16,
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

pub fn errno_name(rc: i32) -> &'static str {
    match -rc {
        19 => "no such device",
        17 => "already exists",
        1 => "operation not permitted",
        16 => "busy",
        22 => "invalid argument",
        _ => "error",
    }
}

fn engine_err(e: ReplicationError) -> RpcError {
    RpcError::new(-22, e.to_string())
}

fn name_taken(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: FFI lookup by name.
    !unsafe { s::spdk_bdev_get_by_name(c.as_ptr()) }.is_null()
}

/// `bdev_replication_create`. On any error nothing is left behind.
pub fn create(p: CreateParams) -> Result<String, RpcError> {
    let p = p.validated()?;
    let mut names = vec![p.name.clone()];
    if let Some(i) = &p.ingress_name {
        names.push(i.clone());
    }
    for n in &names {
        if name_taken(n) || find(n).is_some() {
            return Err(RpcError::new(-17, format!("name: bdev {n} already exists")));
        }
    }
    let wanted: Vec<(&str, &str)> = p.leg_params();
    for (i, (pa, a)) in wanted.iter().enumerate() {
        if let Some((pb, _)) = wanted[..i].iter().find(|(_, b)| b == a) {
            return Err(param_err(pa, format!("bdev {a} is already used as {pb}")));
        }
        if names.iter().any(|n| n == a) {
            return Err(param_err(
                pa,
                format!("bdev {a} is the replication bdev itself"),
            ));
        }
    }
    let mut legs = Vec::new();
    for (param, name) in &wanted {
        match open_leg(param, name) {
            Ok(l) => legs.push(l),
            Err(e) => {
                close_legs(&legs);
                return Err(e);
            }
        }
    }
    let role = match p.mode {
        Mode::Secondary => Secondary::new(
            legs[0].clone(),
            legs[1].clone(),
            legs[2].clone(),
            p.cow_granularity.expect("defaulted"),
        )
        .map(Role::Secondary),
        Mode::Primary => Primary::new(
            legs[0].clone(),
            legs[1].clone(),
            PrimaryConfig {
                remote_timeout: Duration::from_millis(p.remote_timeout_ms.expect("defaulted")),
            },
        )
        .map(Role::Primary),
    };
    let role = match role {
        Ok(r) => r,
        Err(e) => {
            close_legs(&legs);
            return Err(engine_err(e));
        }
    };
    let kinds: &[(Kind, &str)] = match p.mode {
        Mode::Secondary => &[(Kind::Top, &names[0]), (Kind::Ingress, &names[1])],
        Mode::Primary => &[(Kind::Primary, &names[0])],
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
    let bdevs = kinds
        .iter()
        .map(|(kind, name)| {
            Box::new(UnsafeCell::new(OurBdev {
                bdev: s::spdk_bdev::default(),
                kind: *kind,
                node: std::ptr::null(),
                name: CString::new(*name).expect("checked"),
            }))
        })
        .collect();
    let node = Arc::new(Node {
        params: p,
        role,
        legs,
        bdevs,
        live: AtomicUsize::new(0),
        on_gone: Mutex::new(Vec::new()),
    });
    let io_name = CString::new(format!("replication_{}", node.name())).expect("checked");
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
        b.write_cache = 0;
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
    tracing::info!(name = node.name(), mode = %node.mode(), "replication bdev created");
    Ok(node.name().to_owned())
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
        .find(|n| n.legs.iter().any(|l| l.0.bdev == bdev))
        .cloned()
    else {
        return;
    };
    let leg = node
        .legs
        .iter()
        .position(|l| l.0.bdev == bdev)
        .expect("found above");
    match &node.role {
        Role::Primary(p) if leg == 1 => {
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
                base = node.legs[leg].name(),
                "base bdev removed: removing the replication bdev"
            );
            let n = node.clone();
            node.unregister(Box::new(move || drop(n)));
        }
    }
}

/// `bdev_replication_delete`: waits for a running merge, then unregisters.
pub fn delete(node: Arc<Node>, done: Box<dyn FnOnce() + Send>) {
    exec::spawn(async move {
        if let Role::Secondary(sec) = &node.role {
            while sec.is_merging() {
                exec::sleep(Duration::from_millis(10)).await;
            }
        }
        node.unregister(done);
    });
}

pub unsafe extern "C" fn get_ctx_size() -> i32 {
    std::mem::size_of::<IoCtx>() as i32
}
