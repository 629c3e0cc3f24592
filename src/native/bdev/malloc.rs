//! `bdev_malloc_create`: a RAM disk. Like SPDK's malloc bdev it has no write cache and
//! copies with plain memcpy (the engine never lets two requests write one region at once).

use super::check_range;
use crate::engine::{IoBuf, IoError};
use crate::native::buf::NativeBuf;

pub struct Malloc {
    mem: NativeBuf,
    block_size: u32,
    num_blocks: u64,
}

impl Malloc {
    /// `None` when the memory cannot be had (the RPC reports ENOMEM).
    pub fn new(block_size: u32, num_blocks: u64) -> Option<Self> {
        let len = usize::try_from(u64::from(block_size).checked_mul(num_blocks)?).ok()?;
        Some(Self {
            mem: NativeBuf::alloc(len)?,
            block_size,
            num_blocks,
        })
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn region(&self, lba: u64, len: usize) -> Result<NativeBuf, IoError> {
        let bs = u64::from(self.block_size);
        if !(len as u64).is_multiple_of(bs) {
            return Err(IoError::OutOfRange);
        }
        check_range(lba, len as u64 / bs, self.num_blocks)?;
        Ok(self.mem.slice((lba * bs) as usize, len))
    }

    pub fn read(&self, lba: u64, buf: &NativeBuf) -> Result<(), IoError> {
        let src = self.region(lba, buf.len())?;
        // SAFETY: engine rule: nothing writes this region during the read.
        buf.copy_in(0, unsafe { src.bytes() });
        Ok(())
    }

    pub fn write(&self, lba: u64, buf: &NativeBuf) -> Result<(), IoError> {
        let dst = self.region(lba, buf.len())?;
        // SAFETY: the request's own buffer, which nothing writes while it is in flight.
        dst.copy_in(0, unsafe { buf.bytes() });
        Ok(())
    }

    pub fn zero(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        let len = usize::try_from(nblocks.saturating_mul(u64::from(self.block_size)))
            .map_err(|_| IoError::OutOfRange)?;
        self.region(lba, len)?.fill_zero();
        Ok(())
    }
}
