//! The vhost-user device: features and config space, draining the available ring on the
//! vring worker thread, and completing requests from whichever thread the backend
//! finishes them on.

use crate::request::{Action, Geometry, Parsed, parse, scatter};
use crate::{BlockBackend, Status};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

pub(crate) type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;
pub(crate) type Vring = VringRwLock<Mem>;

/// Queue size offered to the frontend (QEMU picks its own, up to this).
pub(crate) const MAX_QUEUE_SIZE: usize = 1024;
/// SPDK's seg_max (its iovec limit less header and status).
const SEG_MAX: u32 = 126;
/// Largest discard / write-zeroes segment, in sectors (SPDK's figure).
const MAX_DISCARD_SECTORS: u32 = 32768 * 8;
/// How long a stopping queue waits for requests still at the backend.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-queue bookkeeping shared with in-flight completions: a completion only touches the
/// ring if the queue has not been stopped or reset since its request was taken.
#[derive(Default)]
struct QueueCtl {
    state: Mutex<QState>,
    idle: Condvar,
}

#[derive(Default)]
struct QState {
    generation: u64,
    inflight: usize,
}

pub(crate) struct BlkDevice<B: BlockBackend> {
    backend: Arc<B>,
    geom: Geometry,
    num_queues: usize,
    write_cache: bool,
    mem: Mem,
    queues: Vec<Arc<QueueCtl>>,
    /// Set when the controller stops or its bdev goes: new requests fail with IOERR.
    failed: Arc<AtomicBool>,
}

impl<B: BlockBackend> BlkDevice<B> {
    pub(crate) fn new(
        backend: Arc<B>,
        num_queues: usize,
        id: &str,
        mem: Mem,
        failed: Arc<AtomicBool>,
    ) -> Self {
        let mut idb = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        for (d, s) in idb.iter_mut().zip(id.bytes()) {
            *d = s;
        }
        let geom = Geometry {
            block_size: backend.block_size(),
            num_blocks: backend.num_blocks(),
            read_only: backend.read_only(),
            id: idb,
        };
        Self {
            write_cache: backend.write_cache(),
            backend,
            geom,
            num_queues,
            mem,
            queues: (0..num_queues).map(|_| Arc::default()).collect(),
            failed,
        }
    }

    /// The virtio-blk config space (virtio 1.2 5.2.4), little endian.
    fn config_space(&self) -> Vec<u8> {
        let g = &self.geom;
        let sectors = g.num_blocks.saturating_mul(u64::from(g.block_size)) / crate::SECTOR_SIZE;
        let bs_sectors = (g.block_size / crate::SECTOR_SIZE as u32).max(1);
        let mut c = Vec::with_capacity(60);
        c.extend_from_slice(&sectors.to_le_bytes()); // capacity
        c.extend_from_slice(&0u32.to_le_bytes()); // size_max
        c.extend_from_slice(&SEG_MAX.to_le_bytes()); // seg_max
        c.extend_from_slice(&[0; 4]); // geometry
        c.extend_from_slice(&g.block_size.to_le_bytes()); // blk_size
        c.extend_from_slice(&[0, 0]); // physical_block_exp, alignment_offset
        c.extend_from_slice(&1u16.to_le_bytes()); // min_io_size (blocks)
        c.extend_from_slice(&0u32.to_le_bytes()); // opt_io_size
        c.extend_from_slice(&[u8::from(self.write_cache), 0]); // writeback, unused
        c.extend_from_slice(&(self.num_queues as u16).to_le_bytes()); // num_queues
        c.extend_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        c.extend_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        c.extend_from_slice(&bs_sectors.to_le_bytes()); // discard_sector_alignment
        c.extend_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        c.extend_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        c.extend_from_slice(&[0, 0, 0, 0]); // write_zeroes_may_unmap, unused1
        c
    }

    /// Takes every available chain of queue `qi` and starts it; loops until the guest
    /// adds nothing more while notifications were off.
    fn drain(&self, qi: usize, vring: &Vring) -> std::io::Result<()> {
        let ctl = self
            .queues
            .get(qi)
            .ok_or_else(|| std::io::Error::other("no such queue"))?;
        loop {
            vring
                .disable_notification()
                .map_err(std::io::Error::other)?;
            let mem = self.mem.memory();
            let mut taken = Vec::new();
            {
                let mut guard = vring.get_mut();
                while let Some(chain) = guard.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                    let head = chain.head_index();
                    taken.push((head, parse(&*mem, chain, &self.geom)));
                }
            }
            // The ring lock is released: completions may run inline below.
            for (head, parsed) in taken {
                self.start(ctl, vring, head, parsed);
            }
            if !vring.enable_notification().map_err(std::io::Error::other)? {
                return Ok(());
            }
        }
    }

    fn start(&self, ctl: &Arc<QueueCtl>, vring: &Vring, head: u16, p: Parsed) {
        let generation = {
            let mut st = ctl.state.lock().unwrap_or_else(|e| e.into_inner());
            st.inflight += 1;
            st.generation
        };
        let c = Completion {
            ctl: ctl.clone(),
            generation,
            vring: vring.clone(),
            mem: self.mem.clone(),
            head,
            writable: p.writable,
            status: p.status,
        };
        match p.action {
            Action::Immediate { data, status } => c.finish(&data, status),
            Action::Submit(_) if self.failed.load(Ordering::Acquire) => {
                c.finish(&[], Status::IoErr.byte())
            }
            Action::Submit(req) => self.backend.submit(
                req,
                Box::new(move |r| match r {
                    Ok(data) => c.finish(&data, VIRTIO_BLK_S_OK as u8),
                    Err(s) => c.finish(&[], s.byte()),
                }),
            ),
        }
    }
}

/// Everything a completion needs, owned, so it can run on any thread.
struct Completion {
    ctl: Arc<QueueCtl>,
    generation: u64,
    vring: Vring,
    mem: Mem,
    head: u16,
    writable: Vec<(vm_memory::GuestAddress, u32)>,
    status: Option<vm_memory::GuestAddress>,
}

impl Completion {
    fn finish(self, data: &[u8], mut status: u8) {
        let mut st = self.ctl.state.lock().unwrap_or_else(|e| e.into_inner());
        st.inflight = st.inflight.saturating_sub(1);
        if st.inflight == 0 {
            self.ctl.idle.notify_all();
        }
        if st.generation != self.generation {
            // The queue was stopped or reset: the guest no longer expects this chain.
            return;
        }
        let mem = self.mem.memory();
        let want: usize = self.writable.iter().map(|r| r.1 as usize).sum();
        let mut used = 0;
        if !data.is_empty() {
            match scatter(&*mem, &self.writable, data) {
                // A read must fill the data area exactly.
                Some(n) if n == data.len() && (status != VIRTIO_BLK_S_OK as u8 || n <= want) => {
                    used = n
                }
                _ => status = Status::IoErr.byte(),
            }
        }
        if let Some(at) = self.status
            && mem.write_obj(status, at).is_ok()
        {
            used += 1;
        }
        // Held across add_used so a stop cannot slip in between check and publish.
        if let Err(e) = self.vring.add_used(self.head, used as u32) {
            tracing::warn!("vhost-blk: add_used failed: {e}");
            return;
        }
        drop(st);
        match self.vring.needs_notification() {
            Ok(false) => {}
            _ => {
                if let Err(e) = self.vring.signal_used_queue() {
                    tracing::debug!("vhost-blk: signalling the guest failed: {e}");
                }
            }
        }
    }
}

impl<B: BlockBackend> VhostUserBackend for BlkDevice<B> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_TOPOLOGY)
            | (1 << VIRTIO_BLK_F_DISCARD)
            | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        if self.write_cache {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if self.geom.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.num_queues > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.config_space();
        let start = (offset as usize).min(c.len());
        let end = start.saturating_add(size as usize).min(c.len());
        c.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn update_memory(&self, _mem: Mem) -> std::io::Result<()> {
        // The handler updates the atomic handle we share with it (see Controller).
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread per queue, as SPDK spreads queues over reactors.
        (0..self.num_queues).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn reset_device(&self) {
        for q in &self.queues {
            bump(q, false);
        }
    }

    fn stop_vring(&self, queue_index: u32) -> std::io::Result<()> {
        if let Some(q) = self.queues.get(queue_index as usize) {
            bump(q, true);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        if evset != EventSet::IN {
            return Err(std::io::Error::other("unexpected event set"));
        }
        let qi = usize::from(device_event);
        match vrings.get(qi) {
            Some(v) => self.drain(qi, v),
            None => Ok(()),
        }
    }
}

/// Ends a queue's current generation; with `drain`, first waits (bounded) for requests
/// still at the backend, so GET_VRING_BASE reports a ring with nothing in flight.
fn bump(q: &QueueCtl, drain: bool) {
    let mut st = q.state.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while drain && st.inflight > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(
                "vhost-blk: {} requests still in flight at queue stop",
                st.inflight
            );
            break;
        }
        st = match q.idle.wait_timeout(st, left) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        };
    }
    st.generation += 1;
}
