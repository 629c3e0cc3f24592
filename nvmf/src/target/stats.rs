//! Target-wide protocol counters: what the transport actually did (R2Ts, data PDUs,
//! digests), so tests against real hosts can check which paths a workload took and
//! operators can see it in monitoring.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    pub hdgst_connections: AtomicU64,
    pub ddgst_connections: AtomicU64,
    pub controllers: AtomicU64,
    pub capsules: AtomicU64,
    pub in_capsule_writes: AtomicU64,
    pub r2ts: AtomicU64,
    pub h2c_data_pdus: AtomicU64,
    pub c2h_data_pdus: AtomicU64,
    pub c2h_success: AtomicU64,
    pub term_reqs: AtomicU64,
    pub keep_alive_timeouts: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> TargetStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TargetStats {
            connections: g(&self.connections),
            hdgst_connections: g(&self.hdgst_connections),
            ddgst_connections: g(&self.ddgst_connections),
            controllers: g(&self.controllers),
            capsules: g(&self.capsules),
            in_capsule_writes: g(&self.in_capsule_writes),
            r2ts: g(&self.r2ts),
            h2c_data_pdus: g(&self.h2c_data_pdus),
            c2h_data_pdus: g(&self.c2h_data_pdus),
            c2h_success: g(&self.c2h_success),
            term_reqs: g(&self.term_reqs),
            keep_alive_timeouts: g(&self.keep_alive_timeouts),
        }
    }
}

/// A snapshot of the target's counters since it was created ([`super::Target::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetStats {
    /// Connections that completed ICReq/ICResp.
    pub connections: u64,
    /// ... of which with header digest / data digest.
    pub hdgst_connections: u64,
    pub ddgst_connections: u64,
    /// Controllers created by an admin-queue Connect (discovery ones included).
    pub controllers: u64,
    /// Command capsules received.
    pub capsules: u64,
    /// Commands whose host data came in the capsule.
    pub in_capsule_writes: u64,
    /// R2Ts sent, and the H2CData PDUs received for them.
    pub r2ts: u64,
    pub h2c_data_pdus: u64,
    /// C2HData PDUs sent, and how many of them carried SUCCESS (no CapsuleResp).
    pub c2h_data_pdus: u64,
    pub c2h_success: u64,
    /// C2HTermReqs sent (fatal transport errors).
    pub term_reqs: u64,
    /// Controllers ended because their keep alive timer expired.
    pub keep_alive_timeouts: u64,
}
