#![allow(dead_code)]

use futures::executor::block_on;
use spdk_replication::engine::testing::{MemBuf, OpKind, TestDisk, test_disk};
use spdk_replication::engine::{IoError, Secondary};

pub const MIB: u64 = 1 << 20;
/// The spec's fixture: 64 MiB disks.
pub const DISK: u64 = 64 * MIB;
pub const BS: u32 = 512;
pub const BLOCKS: u64 = DISK / BS as u64;
pub const HALF: u64 = DISK / 2;
/// Read buffers start out filled with this, never with expected data.
pub const SENTINEL: u8 = 0xEE;

pub struct Node {
    pub sec: Secondary<TestDisk>,
    pub base: TestDisk,
    pub hidden: TestDisk,
    pub active: TestDisk,
}

pub fn node_with(disk_bytes: u64, cow_granularity: u64) -> Node {
    let n = disk_bytes / u64::from(BS);
    let (base, hidden, active) = (test_disk(BS, n), test_disk(BS, n), test_disk(BS, n));
    let sec = Secondary::new(
        base.clone(),
        hidden.clone(),
        active.clone(),
        cow_granularity,
    )
    .expect("valid geometry");
    Node {
        sec,
        base,
        hidden,
        active,
    }
}

pub fn node() -> Node {
    node_with(DISK, 64 * 1024)
}

pub fn lba(bytes: u64) -> u64 {
    bytes / u64::from(BS)
}

pub fn pattern(len: u64, byte: u8) -> MemBuf {
    MemBuf::filled(len as usize, byte)
}

impl Node {
    pub fn top_read(&self, off: u64, len: u64) -> Result<Vec<u8>, IoError> {
        let buf = MemBuf::filled(len as usize, SENTINEL);
        block_on(self.sec.top_read(lba(off), buf.clone()))?;
        Ok(buf.to_vec())
    }
    pub fn top_write(&self, off: u64, len: u64, byte: u8) -> Result<(), IoError> {
        block_on(self.sec.top_write(lba(off), pattern(len, byte)))
    }
    pub fn ingress_write(&self, off: u64, len: u64, byte: u8) -> Result<(), IoError> {
        block_on(self.sec.ingress_write(lba(off), pattern(len, byte)))
    }
    pub fn ingress_read(&self, off: u64, len: u64) -> Result<Vec<u8>, IoError> {
        let buf = MemBuf::filled(len as usize, SENTINEL);
        block_on(self.sec.ingress_read(lba(off), buf.clone()))?;
        Ok(buf.to_vec())
    }
    pub fn base_bytes(&self, off: u64, len: u64) -> Vec<u8> {
        self.base.inner().contents(off..off + len)
    }
    /// COW copies are the writes that reach hidden.
    pub fn hidden_writes(&self) -> usize {
        self.hidden.count(OpKind::Write)
    }
}

/// Asserts that `data` (starting at disk offset `at`) is made of the given runs exactly.
pub fn assert_runs(data: &[u8], runs: &[(u64, u8)]) {
    let total: u64 = runs.iter().map(|r| r.0).sum();
    assert_eq!(data.len() as u64, total, "length");
    let mut pos = 0usize;
    for &(len, byte) in runs {
        let part = &data[pos..pos + len as usize];
        if let Some(i) = part.iter().position(|&b| b != byte) {
            panic!(
                "byte {} is {:#04x}, expected {:#04x} (run of {len} at {pos})",
                pos + i,
                part[i],
                byte
            );
        }
        pos += len as usize;
    }
}
