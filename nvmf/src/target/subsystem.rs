//! The target's shared state: configuration, subsystems (with their namespaces and allowed
//! hosts), listeners for the discovery log, and the controllers created by Connect.

use super::backend::Backend;
use super::stats::{Counters, TargetStats};
use crate::nvme::fabrics::DISCOVERY_NQN;
use crate::nvme::log::{DiscoveryEntry, subtype};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Transport and controller limits shared by every connection.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Largest data in one H2CData PDU (ICResp MAXH2CDATA); a multiple of 4, ≥ 4096.
    pub maxh2cdata: u32,
    /// In-capsule data accepted on I/O queues (IOCCSZ = (64 + this) / 16).
    pub in_capsule_data: u32,
    /// In-capsule data accepted on the admin queue and for Fabrics commands.
    pub admin_in_capsule_data: u32,
    /// Largest transfer of one command (advertised as MDTS); a power of two ≥ 4096.
    pub max_io_size: u32,
    /// Largest queue size a host may connect with (CAP.MQES + 1).
    pub max_queue_size: u16,
    /// I/O queues a controller may have.
    pub max_io_queues: u16,
    /// Largest data in one C2HData PDU we send.
    pub c2h_chunk: u32,
    /// Use C2HData SUCCESS (no CapsuleResp) when the host disabled SQ flow control.
    pub c2h_success: bool,
    /// Keep alive granularity in 100 ms units (Identify KAS).
    pub kas: u16,
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            maxh2cdata: 128 * 1024,
            in_capsule_data: 8192,
            admin_in_capsule_data: 8192,
            max_io_size: 1024 * 1024,
            max_queue_size: 128,
            max_io_queues: 16,
            c2h_chunk: 128 * 1024,
            c2h_success: true,
            kas: 10,
        }
    }
}

/// A namespace of a subsystem.
#[derive(Clone)]
pub struct NamespaceConfig {
    pub nsid: u32,
    pub backend: Arc<dyn Backend>,
    /// Zero means "derive one from the subsystem NQN and NSID" (unique per subsystem, which
    /// Linux requires: the same NGUID under two subsystems hides the namespace).
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
}

impl NamespaceConfig {
    pub fn new(nsid: u32, backend: Arc<dyn Backend>) -> Self {
        Self {
            nsid,
            backend,
            nguid: [0; 16],
            uuid: [0; 16],
        }
    }
}

#[derive(Clone)]
pub struct SubsystemConfig {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub namespaces: Vec<NamespaceConfig>,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
}

impl SubsystemConfig {
    pub fn new(nqn: &str) -> Self {
        Self {
            nqn: nqn.to_string(),
            serial: "NVMF0001".to_string(),
            model: "spdk-replication nvmf".to_string(),
            namespaces: Vec::new(),
            allow_any_host: true,
            hosts: Vec::new(),
        }
    }

    pub fn namespace(mut self, ns: NamespaceConfig) -> Self {
        self.namespaces.push(ns);
        self
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("subsystem {0} already exists")]
    Exists(String),
    #[error("invalid NQN {0:?}")]
    BadNqn(String),
    #[error("invalid namespace {0}")]
    BadNamespace(u32),
}

pub(crate) struct Namespace {
    pub backend: Arc<dyn Backend>,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
}

pub(crate) struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub discovery: bool,
    pub namespaces: BTreeMap<u32, Namespace>,
    pub allow_any_host: bool,
    pub hosts: HashSet<String>,
}

impl Subsystem {
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.contains(hostnqn)
    }
    pub fn vwc(&self) -> bool {
        self.namespaces
            .values()
            .any(|n| n.backend.volatile_write_cache())
    }
    pub fn nn(&self) -> u32 {
        self.namespaces.keys().next_back().copied().unwrap_or(0)
    }
}

/// FNV-1a, to derive stable per-subsystem namespace identifiers.
fn fnv(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn derive_id(nqn: &str, nsid: u32, salt: u64) -> [u8; 16] {
    let a = fnv(nqn.as_bytes(), salt ^ u64::from(nsid));
    let b = fnv(&a.to_le_bytes(), salt.wrapping_add(u64::from(nsid)));
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&a.to_be_bytes());
    id[8..].copy_from_slice(&b.to_be_bytes());
    id
}

/// Mutable controller state, guarded by the handle's mutex.
pub(crate) struct CtrlState {
    pub cc: u32,
    pub csts: u32,
    pub kato_ms: u32,
    pub last_keepalive: Instant,
    pub num_io_queues: u16,
    pub io_qids: HashSet<u16>,
    pub aec: u32,
    pub vwc_enabled: bool,
}

/// A controller, shared by its admin connection and its I/O connections.
pub(crate) struct CtrlHandle {
    pub cntlid: u16,
    pub subsys: Arc<Subsystem>,
    pub hostnqn: String,
    /// Cleared when the admin connection ends or the keep alive timer expires; I/O
    /// connections then end too.
    pub alive: AtomicBool,
    /// Bumped by a controller reset (CC.EN 1→0), which deletes the I/O queues.
    pub generation: AtomicU64,
    pub state: Mutex<CtrlState>,
}

impl CtrlHandle {
    pub fn lock(&self) -> MutexGuard<'_, CtrlState> {
        // A poisoned lock only means another connection's thread panicked; the state is
        // plain data, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

pub(crate) struct TargetState {
    pub subsystems: BTreeMap<String, Arc<Subsystem>>,
    pub controllers: HashMap<u16, Arc<CtrlHandle>>,
    pub next_cntlid: u16,
    pub genctr: u64,
    pub listeners: Vec<SocketAddr>,
}

/// The target: configuration plus shared state. Connections hold an `Arc<Target>`.
pub struct Target {
    pub(crate) cfg: TargetConfig,
    pub(crate) state: Mutex<TargetState>,
    pub(crate) counters: Counters,
}

impl Target {
    pub fn new(cfg: TargetConfig) -> Arc<Self> {
        let mut subsystems = BTreeMap::new();
        subsystems.insert(
            DISCOVERY_NQN.to_string(),
            Arc::new(Subsystem {
                nqn: DISCOVERY_NQN.to_string(),
                serial: "DISCOVERY".to_string(),
                model: "spdk-replication discovery".to_string(),
                discovery: true,
                namespaces: BTreeMap::new(),
                allow_any_host: true,
                hosts: HashSet::new(),
            }),
        );
        Arc::new(Self {
            cfg,
            state: Mutex::new(TargetState {
                subsystems,
                controllers: HashMap::new(),
                next_cntlid: 1,
                genctr: 0,
                listeners: Vec::new(),
            }),
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &TargetConfig {
        &self.cfg
    }

    /// Protocol counters since the target was created.
    pub fn stats(&self) -> TargetStats {
        self.counters.snapshot()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, TargetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_subsystem(&self, c: SubsystemConfig) -> Result<(), ConfigError> {
        if c.nqn.is_empty() || c.nqn.len() > 223 || c.nqn == DISCOVERY_NQN {
            return Err(ConfigError::BadNqn(c.nqn));
        }
        let mut namespaces = BTreeMap::new();
        for ns in c.namespaces {
            if ns.nsid == 0 || ns.nsid >= 0xFFFF_FFFE || namespaces.contains_key(&ns.nsid) {
                return Err(ConfigError::BadNamespace(ns.nsid));
            }
            let bs = ns.backend.block_size();
            if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
                return Err(ConfigError::BadNamespace(ns.nsid));
            }
            let nguid = if ns.nguid == [0; 16] {
                derive_id(&c.nqn, ns.nsid, 1)
            } else {
                ns.nguid
            };
            let mut uuid = if ns.uuid == [0; 16] {
                derive_id(&c.nqn, ns.nsid, 2)
            } else {
                ns.uuid
            };
            // Make derived UUIDs well-formed version 4 / RFC 4122 variant.
            if ns.uuid == [0; 16] {
                uuid[6] = (uuid[6] & 0x0F) | 0x40;
                uuid[8] = (uuid[8] & 0x3F) | 0x80;
            }
            namespaces.insert(
                ns.nsid,
                Namespace {
                    backend: ns.backend,
                    nguid,
                    uuid,
                },
            );
        }
        let sub = Subsystem {
            nqn: c.nqn.clone(),
            serial: c.serial,
            model: c.model,
            discovery: false,
            namespaces,
            allow_any_host: c.allow_any_host,
            hosts: c.hosts.into_iter().collect(),
        };
        let mut st = self.lock();
        if st.subsystems.contains_key(&c.nqn) {
            return Err(ConfigError::Exists(c.nqn));
        }
        st.subsystems.insert(c.nqn, Arc::new(sub));
        st.genctr += 1;
        Ok(())
    }

    /// Removes a subsystem; its controllers end (their connections close on the next tick).
    pub fn remove_subsystem(&self, nqn: &str) -> bool {
        let mut st = self.lock();
        if nqn == DISCOVERY_NQN || st.subsystems.remove(nqn).is_none() {
            return false;
        }
        st.controllers.retain(|_, c| {
            let keep = c.subsys.nqn != nqn;
            if !keep {
                c.alive.store(false, Ordering::Release);
            }
            keep
        });
        st.genctr += 1;
        true
    }

    /// Records a listening address, for the discovery log.
    pub fn add_listener(&self, addr: SocketAddr) {
        let mut st = self.lock();
        if !st.listeners.contains(&addr) {
            st.listeners.push(addr);
            st.genctr += 1;
        }
    }

    pub fn remove_listener(&self, addr: SocketAddr) {
        let mut st = self.lock();
        let before = st.listeners.len();
        st.listeners.retain(|a| *a != addr);
        if st.listeners.len() != before {
            st.genctr += 1;
        }
    }

    /// Number of live controllers (for tests and monitoring).
    pub fn controller_count(&self) -> usize {
        self.lock().controllers.len()
    }

    /// The discovery log for `hostnqn`: every subsystem it may use, at every listener.
    pub(crate) fn discovery_entries(&self, hostnqn: &str) -> (u64, Vec<DiscoveryEntry>) {
        let st = self.lock();
        let mut out = Vec::new();
        for sub in st.subsystems.values() {
            if sub.discovery || !sub.host_allowed(hostnqn) {
                continue;
            }
            for (i, l) in st.listeners.iter().enumerate() {
                out.push(DiscoveryEntry {
                    subtype: subtype::NVME,
                    portid: u16::try_from(i + 1).unwrap_or(u16::MAX),
                    cntlid: 0xFFFF,
                    asqsz: 32,
                    trsvcid: l.port().to_string(),
                    subnqn: sub.nqn.clone(),
                    traddr: l.ip().to_string(),
                    adrfam: if l.is_ipv4() { 1 } else { 2 },
                });
            }
        }
        (st.genctr, out)
    }
}
