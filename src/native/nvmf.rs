//! NVMe-oF/TCP exports through SPDK's RPC names (`nvmf_create_transport`,
//! `nvmf_create_subsystem`, `nvmf_subsystem_add_ns`, `nvmf_subsystem_add_listener`, ...),
//! served by the project's target (`nvmf`). Each connection is served by one reactor,
//! chosen round robin at accept as SPDK spreads qpairs over poll groups: its socket, its
//! protocol state and its bdev I/O all run there (see `nvmf_tcp`).

use super::node::{BlockOp, ExportError, Exported, submit};
use super::nvmf_tcp::ReactorServer;
use super::reactor::Reactor;
use crate::control::{EEXIST, EINVAL, ENODEV, RpcError};
use crate::engine::IoError;
use nvmf::target::{
    Backend, IoDone, IoOp, NamespaceConfig, NsError, SubsystemConfig, Target, TargetConfig,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

struct NsBackend {
    exported: Exported,
    reactors: Vec<Reactor>,
    block_size: u32,
    num_blocks: u64,
}

fn ns_error(e: ExportError) -> NsError {
    match e {
        ExportError::Io(IoError::OutOfRange) => NsError::OutOfRange,
        ExportError::Io(IoError::NoMem) => NsError::Internal,
        ExportError::Io(IoError::Io) => NsError::Io,
        ExportError::Gone => NsError::NotReady,
    }
}

impl Backend for NsBackend {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    /// Asked at every Identify: a reprotected top's legs change (spec 4: any leg's cache).
    fn volatile_write_cache(&self) -> bool {
        self.exported.write_cache()
    }
    fn submit(&self, op: IoOp, done: IoDone) {
        // One op, or a Deallocate's ranges: no vector for the common single op.
        let (one, more) = match op {
            IoOp::Read { lba, nblocks } => (
                BlockOp::Read {
                    lba,
                    nblocks: nblocks.into(),
                },
                Vec::new(),
            ),
            IoOp::Write { lba, data } => (BlockOp::Write { lba, data }, Vec::new()),
            IoOp::Flush => (BlockOp::Flush, Vec::new()),
            IoOp::WriteZeroes { lba, nblocks } => (
                BlockOp::WriteZeroes {
                    lba,
                    nblocks: nblocks.into(),
                },
                Vec::new(),
            ),
            IoOp::Deallocate { ranges } => {
                let mut it = ranges.into_iter().map(|(lba, n)| BlockOp::Unmap {
                    lba,
                    nblocks: n.into(),
                });
                match it.next() {
                    Some(first) => (first, it.collect()),
                    // Every range was empty: nothing to do.
                    None => return done(Ok(Vec::new())),
                }
            }
        };
        let ops = std::iter::once(one).chain(more);
        submit(&self.exported, &self.reactors, ops, move |r| {
            done(r.map_err(ns_error))
        });
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ListenAddress {
    #[serde(default = "tcp")]
    pub trtype: String,
    #[serde(default)]
    pub adrfam: Option<String>,
    pub traddr: String,
    #[serde(default)]
    pub trsvcid: Option<String>,
}

fn tcp() -> String {
    "TCP".into()
}

impl ListenAddress {
    fn addr(&self) -> Result<SocketAddr, RpcError> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(RpcError::invalid(
                "listen_address.trtype",
                format!("{} is not supported (TCP only)", self.trtype),
            ));
        }
        let port = self.trsvcid.as_deref().unwrap_or("4420");
        let port: u16 = port
            .parse()
            .map_err(|_| RpcError::invalid("listen_address.trsvcid", "not a port"))?;
        (self.traddr.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| RpcError::invalid("listen_address.traddr", "cannot resolve"))
    }

    fn to_json(&self) -> Value {
        json!({"trtype": "TCP", "adrfam": self.adrfam.clone().unwrap_or("IPv4".into()),
               "traddr": self.traddr, "trsvcid": self.trsvcid.clone().unwrap_or("4420".into())})
    }
}

struct NsDef {
    nsid: u32,
    bdev_name: String,
    exported: Exported,
}

pub struct SubsysDef {
    nqn: String,
    serial: String,
    model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    namespaces: Vec<NsDef>,
    listeners: Vec<ListenAddress>,
}

pub struct NvmfState {
    reactors: Vec<Reactor>,
    target: RefCell<Option<Arc<Target>>>,
    /// `nvmf_create_transport` params as given, for save_config.
    transport: RefCell<Option<Value>>,
    subsystems: RefCell<Vec<SubsysDef>>,
    servers: RefCell<BTreeMap<SocketAddr, ReactorServer>>,
}

#[derive(Deserialize)]
pub struct TransportParams {
    pub trtype: String,
    #[serde(default)]
    pub max_queue_depth: Option<u16>,
    #[serde(default)]
    pub max_io_qpairs_per_ctrlr: Option<u16>,
    #[serde(default)]
    pub in_capsule_data_size: Option<u32>,
    #[serde(default)]
    pub max_io_size: Option<u32>,
    #[serde(default)]
    pub c2h_success: Option<bool>,
    /// SPDK's other transport knobs are accepted; they tune SPDK's own buffers.
    #[serde(flatten)]
    pub _rest: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubsystem {
    pub nqn: String,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub model_number: Option<String>,
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub max_namespaces: Option<u32>,
    #[serde(default)]
    pub ana_reporting: Option<bool>,
    #[serde(default)]
    pub min_cntlid: Option<u16>,
    #[serde(default)]
    pub max_cntlid: Option<u16>,
    #[serde(default)]
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
pub struct NsParams {
    pub bdev_name: String,
    #[serde(default)]
    pub nsid: Option<u32>,
    #[serde(flatten)]
    pub _rest: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
pub struct AddNs {
    pub nqn: String,
    pub namespace: NsParams,
    #[serde(default)]
    pub tgt_name: Option<String>,
}

#[derive(Deserialize)]
pub struct Listener {
    pub nqn: String,
    pub listen_address: ListenAddress,
    #[serde(flatten)]
    pub _rest: BTreeMap<String, Value>,
}

fn no_subsystem(nqn: &str) -> RpcError {
    RpcError::new(ENODEV, format!("Unable to find subsystem with NQN {nqn}"))
}

impl NvmfState {
    pub fn new(reactors: Vec<Reactor>) -> Self {
        Self {
            reactors,
            target: RefCell::default(),
            transport: RefCell::default(),
            subsystems: RefCell::default(),
            servers: RefCell::default(),
        }
    }

    pub fn create_transport(&self, raw: Value, p: TransportParams) -> Result<(), RpcError> {
        if !p.trtype.eq_ignore_ascii_case("tcp") {
            return Err(RpcError::invalid(
                "trtype",
                format!("transport {} is not supported (TCP only)", p.trtype),
            ));
        }
        if self.target.borrow().is_some() {
            return Err(RpcError::new(EEXIST, "Transport type 'TCP' already exists"));
        }
        let mut cfg = TargetConfig::default();
        if let Some(q) = p.max_queue_depth {
            cfg.max_queue_size = q.max(2);
        }
        if let Some(q) = p.max_io_qpairs_per_ctrlr {
            cfg.max_io_queues = q.max(1);
        }
        if let Some(c) = p.in_capsule_data_size {
            cfg.in_capsule_data = c;
        }
        if let Some(m) = p.max_io_size {
            if !m.is_power_of_two() || m < 4096 {
                return Err(RpcError::invalid(
                    "max_io_size",
                    "must be a power of two >= 4096",
                ));
            }
            cfg.max_io_size = m;
        }
        if let Some(c) = p.c2h_success {
            cfg.c2h_success = c;
        }
        *self.target.borrow_mut() = Some(Target::new(cfg));
        *self.transport.borrow_mut() = Some(raw);
        Ok(())
    }

    fn target(&self) -> Result<Arc<Target>, RpcError> {
        self.target.borrow().clone().ok_or_else(|| {
            RpcError::new(
                EINVAL,
                "no NVMe-oF transport (call nvmf_create_transport first)",
            )
        })
    }

    pub fn create_subsystem(&self, p: CreateSubsystem) -> Result<(), RpcError> {
        if self.subsystems.borrow().iter().any(|s| s.nqn == p.nqn) {
            return Err(RpcError::new(
                EEXIST,
                format!("Unable to create subsystem {}: already exists", p.nqn),
            ));
        }
        let def = SubsysDef {
            nqn: p.nqn.clone(),
            serial: p
                .serial_number
                .unwrap_or_else(|| "00000000000000000000".into()),
            model: p
                .model_number
                .unwrap_or_else(|| "SPDK bdev Controller".into()),
            allow_any_host: p.allow_any_host,
            hosts: Vec::new(),
            namespaces: Vec::new(),
            listeners: Vec::new(),
        };
        if def.serial.len() > 20 {
            return Err(RpcError::invalid(
                "serial_number",
                "longer than 20 characters",
            ));
        }
        if def.model.len() > 40 {
            return Err(RpcError::invalid(
                "model_number",
                "longer than 40 characters",
            ));
        }
        self.apply_def(&def, false)?;
        self.subsystems.borrow_mut().push(def);
        Ok(())
    }

    /// (Re)installs `def` in the target. Replacing a subsystem ends its controllers, so
    /// hosts connected to it reconnect; namespaces are normally added before hosts come.
    fn apply_def(&self, def: &SubsysDef, replace: bool) -> Result<(), RpcError> {
        let t = self.target()?;
        let mut c = SubsystemConfig::new(&def.nqn);
        c.serial = def.serial.clone();
        c.model = def.model.clone();
        c.allow_any_host = def.allow_any_host;
        c.hosts = def.hosts.clone();
        for ns in &def.namespaces {
            c = c.namespace(NamespaceConfig::new(
                ns.nsid,
                Arc::new(NsBackend {
                    block_size: ns.exported.block_size(),
                    num_blocks: ns.exported.num_blocks(),
                    exported: ns.exported.clone(),
                    reactors: self.reactors.clone(),
                }),
            ));
        }
        if replace {
            t.remove_subsystem(&def.nqn);
        }
        t.add_subsystem(c)
            .map_err(|e| RpcError::invalid("nqn", e.to_string()))
    }

    fn with_def<T>(
        &self,
        nqn: &str,
        f: impl FnOnce(&mut SubsysDef) -> Result<T, RpcError>,
    ) -> Result<T, RpcError> {
        let mut subs = self.subsystems.borrow_mut();
        let def = subs
            .iter_mut()
            .find(|s| s.nqn == nqn)
            .ok_or_else(|| no_subsystem(nqn))?;
        f(def)
    }

    pub fn add_ns(&self, p: AddNs, exported: Exported) -> Result<u32, RpcError> {
        self.with_def(&p.nqn, |def| {
            let nsid = match p.namespace.nsid {
                Some(0) | None => (1..)
                    .find(|i| !def.namespaces.iter().any(|n| n.nsid == *i))
                    .unwrap_or(1),
                Some(n) => n,
            };
            if def.namespaces.iter().any(|n| n.nsid == nsid) {
                return Err(RpcError::invalid(
                    "namespace.nsid",
                    format!("namespace {nsid} already exists"),
                ));
            }
            def.namespaces.push(NsDef {
                nsid,
                bdev_name: p.namespace.bdev_name.clone(),
                exported,
            });
            if let Err(e) = self.apply_def(def, true) {
                def.namespaces.retain(|n| n.nsid != nsid);
                let _ = self.apply_def(def, true);
                return Err(e);
            }
            Ok(nsid)
        })
    }

    pub fn remove_ns(&self, nqn: &str, nsid: u32) -> Result<(), RpcError> {
        self.with_def(nqn, |def| {
            let before = def.namespaces.len();
            def.namespaces.retain(|n| n.nsid != nsid);
            if def.namespaces.len() == before {
                return Err(RpcError::invalid("nsid", format!("no namespace {nsid}")));
            }
            self.apply_def(def, true)
        })
    }

    /// A bdev went away: its namespaces leave every subsystem (SPDK's hot remove).
    pub fn bdev_removed(&self, bdev: &str) {
        let mut subs = self.subsystems.borrow_mut();
        for def in subs.iter_mut() {
            if def.namespaces.iter().any(|n| n.bdev_name == bdev) {
                def.namespaces.retain(|n| n.bdev_name != bdev);
                let _ = self.apply_def(def, true);
            }
        }
    }

    pub fn set_hosts(&self, nqn: &str, f: impl FnOnce(&mut SubsysDef)) -> Result<(), RpcError> {
        self.with_def(nqn, |def| {
            f(def);
            self.apply_def(def, true)
        })
    }

    pub fn add_listener(&self, p: Listener) -> Result<(), RpcError> {
        let addr = p.listen_address.addr()?;
        let t = self.target()?;
        self.with_def(&p.nqn, |def| {
            if def.listeners.contains(&p.listen_address) {
                return Err(RpcError::new(EEXIST, "Listener already exists"));
            }
            let mut servers = self.servers.borrow_mut();
            if let std::collections::btree_map::Entry::Vacant(v) = servers.entry(addr) {
                let s = ReactorServer::start(t, addr, self.reactors.clone()).map_err(|e| {
                    RpcError::invalid("listen_address", format!("Unable to listen on {addr}: {e}"))
                })?;
                v.insert(s);
            }
            def.listeners.push(p.listen_address.clone());
            Ok(())
        })
    }

    pub fn remove_listener(&self, p: Listener) -> Result<(), RpcError> {
        let addr = p.listen_address.addr()?;
        self.with_def(&p.nqn, |def| {
            let before = def.listeners.len();
            def.listeners.retain(|l| l != &p.listen_address);
            if def.listeners.len() == before {
                return Err(RpcError::invalid("listen_address", "no such listener"));
            }
            Ok(())
        })?;
        let used = self
            .subsystems
            .borrow()
            .iter()
            .any(|d| d.listeners.iter().any(|l| l.addr().ok() == Some(addr)));
        if !used && let Some(s) = self.servers.borrow_mut().remove(&addr) {
            s.shutdown();
        }
        Ok(())
    }

    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), RpcError> {
        let def = {
            let mut subs = self.subsystems.borrow_mut();
            let i = subs
                .iter()
                .position(|s| s.nqn == nqn)
                .ok_or_else(|| no_subsystem(nqn))?;
            subs.remove(i)
        };
        if let Ok(t) = self.target() {
            t.remove_subsystem(nqn);
        }
        for l in def.listeners {
            let _ = self.remove_unused_server(&l);
        }
        Ok(())
    }

    fn remove_unused_server(&self, l: &ListenAddress) -> Result<(), RpcError> {
        let addr = l.addr()?;
        let used = self
            .subsystems
            .borrow()
            .iter()
            .any(|d| d.listeners.iter().any(|x| x.addr().ok() == Some(addr)));
        if !used && let Some(s) = self.servers.borrow_mut().remove(&addr) {
            s.shutdown();
        }
        Ok(())
    }

    /// `nvmf_get_subsystems`, SPDK's shape.
    pub fn get_subsystems(&self) -> Value {
        let mut out = vec![json!({
            "nqn": "nqn.2014-08.org.nvmexpress.discovery",
            "subtype": "Discovery",
            "listen_addresses": [],
            "allow_any_host": true,
            "hosts": [],
        })];
        for d in self.subsystems.borrow().iter() {
            out.push(json!({
                "nqn": d.nqn,
                "subtype": "NVMe",
                "listen_addresses": d.listeners.iter().map(ListenAddress::to_json).collect::<Vec<_>>(),
                "allow_any_host": d.allow_any_host,
                "hosts": d.hosts.iter().map(|h| json!({"nqn": h})).collect::<Vec<_>>(),
                "serial_number": d.serial,
                "model_number": d.model,
                "max_namespaces": 32,
                "min_cntlid": 1,
                "max_cntlid": 65519,
                "namespaces": d.namespaces.iter().map(|n| json!({
                    "nsid": n.nsid, "bdev_name": n.bdev_name, "name": n.bdev_name,
                })).collect::<Vec<_>>(),
            }));
        }
        Value::Array(out)
    }

    /// The `nvmf` subsystem's save_config entries.
    pub fn config(&self) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(t) = self.transport.borrow().as_ref() {
            out.push(json!({"method": "nvmf_create_transport", "params": t}));
        }
        for d in self.subsystems.borrow().iter() {
            out.push(json!({"method": "nvmf_create_subsystem", "params": {
                "nqn": d.nqn, "serial_number": d.serial, "model_number": d.model,
                "allow_any_host": d.allow_any_host}}));
            for h in &d.hosts {
                out.push(json!({"method": "nvmf_subsystem_add_host",
                                "params": {"nqn": d.nqn, "host": h}}));
            }
            for n in &d.namespaces {
                out.push(json!({"method": "nvmf_subsystem_add_ns", "params": {
                    "nqn": d.nqn, "namespace": {"nsid": n.nsid, "bdev_name": n.bdev_name}}}));
            }
            for l in &d.listeners {
                out.push(json!({"method": "nvmf_subsystem_add_listener", "params": {
                    "nqn": d.nqn, "listen_address": l.to_json()}}));
            }
        }
        out
    }

    /// Closes every listener and connection (process exit).
    pub fn shutdown(&self) {
        for (_, s) in std::mem::take(&mut *self.servers.borrow_mut()) {
            s.shutdown();
        }
    }
}
