//! The secondary's ingress (the primary's writes): copy-before-write into hidden, then
//! the base (spec 5.2); reads and flushes of the base.

use super::{IngressWritePlan, Secondary, flush_all};
use crate::engine::alloc_map::AllocState;
use crate::engine::device::{BlockDevice, IoError, WriteOp};
use std::sync::atomic::Ordering::Relaxed;

impl<D: BlockDevice> Secondary<D> {
    // -------------------------------------------------------------- ingress (driver) --

    pub async fn ingress_read(&self, lba: u64, buf: D::Buf) -> Result<(), IoError> {
        self.check_buf(lba, &buf)?;
        self.base.read(lba, buf).await
    }

    pub async fn ingress_write(&self, lba: u64, buf: D::Buf) -> Result<(), IoError> {
        self.check_buf(lba, &buf)?;
        self.ingress_modify(lba, WriteOp::Data(buf)).await
    }

    pub async fn ingress_write_zeroes(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        self.check_blocks(lba, nblocks)?;
        self.ingress_modify(lba, WriteOp::Zeroes(nblocks)).await
    }

    pub async fn ingress_unmap(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        self.check_blocks(lba, nblocks)?;
        self.ingress_modify(lba, WriteOp::Unmap(nblocks)).await
    }

    pub async fn ingress_flush(&self) -> Result<(), IoError> {
        self.flush_base().await
    }

    pub(crate) async fn flush_base(&self) -> Result<(), IoError> {
        if self.base.supports_flush() {
            self.count_base_flush();
        }
        flush_all(&[&self.base]).await
    }

    /// For hosts that flush the base on their own fast path.
    pub fn count_base_flush(&self) {
        self.counters.base_flushes.fetch_add(1, Relaxed);
    }

    async fn ingress_modify(&self, lba: u64, op: WriteOp<D::Buf>) -> Result<(), IoError> {
        let _io = self.gate.enter().await;
        let n = op.nblocks(self.geo.block_size);
        match self.plan_ingress_write(lba, n) {
            IngressWritePlan::Refused => {
                self.count_ingress_refused();
                return Err(IoError::Io);
            }
            IngressWritePlan::Direct => {}
            IngressWritePlan::Cow => {
                let clusters = self.geo.clusters_of(lba, n);
                if clusters.end - clusters.start == 1 {
                    // The usual case (a write within one cluster): no join to allocate.
                    self.copy_before_write(clusters.start).await?;
                } else {
                    // Clusters copy concurrently; each copy holds only its own cluster
                    // lock, so no ordering between writers can deadlock. Every copy runs
                    // to its end even when a sibling failed: its device I/O uses its
                    // buffer until then.
                    let copies = clusters.map(|c| self.copy_before_write(c));
                    let results = futures::future::join_all(copies).await;
                    results.into_iter().collect::<Result<Vec<()>, IoError>>()?;
                }
            }
        }
        op.issue(&self.base, lba).await
    }

    /// Copies cluster `c` from base to hidden unless that already happened in this
    /// checkpoint interval. Concurrent callers wait for the one copying, then find the
    /// cluster allocated (or, if the copy failed, still armed, and copy again).
    pub async fn copy_before_write(&self, c: u64) -> Result<(), IoError> {
        if self.hidden_map.get(c) == AllocState::Data {
            return Ok(());
        }
        let _c = self.clusters.lock(c).await;
        if self.hidden_map.get(c) == AllocState::Data {
            return Ok(());
        }
        let (start, len) = self.geo.cluster_extent(c);
        let bytes = self.geo.bytes(len);
        let buf = self.base.alloc_buf(bytes as usize)?;
        let copied = async {
            self.base.read(start, buf.clone()).await?;
            self.hidden.write(start, buf).await
        }
        .await;
        match copied {
            Ok(()) => {
                self.hidden_map.set_range(c, 1, AllocState::Data);
                self.counters.cow_copies.fetch_add(1, Relaxed);
                self.counters.cow_bytes.fetch_add(bytes, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.counters.cow_failures.fetch_add(1, Relaxed);
                tracing::warn!(cluster = c, error = %e, "copy-before-write failed; cluster stays armed");
                Err(e)
            }
        }
    }
}
