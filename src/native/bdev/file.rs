//! `bdev_uring_create` / `bdev_aio_create`: a file or block device through the calling
//! reactor's io_uring, O_DIRECT when the filesystem allows it (tmpfs does not). A file has a
//! volatile cache in front of its medium, so flush is an fdatasync.

use super::check_range;
use crate::engine::{IoBuf, IoError};
use crate::native::buf::NativeBuf;
use crate::native::reactor::uring;
use io_uring::{opcode, types};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct FileBdev {
    file: Arc<File>,
    path: PathBuf,
    direct: bool,
    block_size: u32,
    num_blocks: u64,
}

impl FileBdev {
    /// Opens `path`; its size (rounded down to blocks) is the bdev's.
    pub fn open(path: &Path, block_size: u32) -> std::io::Result<Self> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        let (file, direct) = match o.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (o.open(path)?, false),
            Err(e) => return Err(e),
        };
        let size = block_device_size(&file)?;
        Ok(Self {
            file: Arc::new(file),
            path: path.to_owned(),
            direct,
            block_size,
            num_blocks: size / u64::from(block_size),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }

    fn offset(&self, lba: u64, len: usize) -> Result<u64, IoError> {
        let bs = u64::from(self.block_size);
        if !(len as u64).is_multiple_of(bs) {
            return Err(IoError::OutOfRange);
        }
        check_range(lba, len as u64 / bs, self.num_blocks)?;
        Ok(lba * bs)
    }

    /// O_DIRECT needs aligned memory: a transport's buffer may not be.
    fn io_buf(&self, buf: &NativeBuf) -> Result<(NativeBuf, bool), IoError> {
        if !self.direct || buf.is_aligned() {
            return Ok((buf.clone(), false));
        }
        Ok((NativeBuf::alloc(buf.len()).ok_or(IoError::NoMem)?, true))
    }

    pub async fn read(&self, lba: u64, buf: NativeBuf) -> Result<(), IoError> {
        let off = self.offset(lba, buf.len())?;
        let (io, bounce) = self.io_buf(&buf)?;
        self.transfer(off, &io, false).await?;
        if bounce {
            // SAFETY: our private bounce buffer.
            buf.copy_in(0, unsafe { io.bytes() });
        }
        Ok(())
    }

    pub async fn write(&self, lba: u64, buf: NativeBuf) -> Result<(), IoError> {
        let off = self.offset(lba, buf.len())?;
        let (io, bounce) = self.io_buf(&buf)?;
        if bounce {
            // SAFETY: the request's buffer, not written while in flight.
            io.copy_in(0, unsafe { buf.bytes() });
        }
        self.transfer(off, &io, true).await
    }

    /// Reads or writes all of `io` at byte offset `off`, resubmitting after short transfers.
    async fn transfer(&self, off: u64, io: &NativeBuf, write: bool) -> Result<(), IoError> {
        let mut done = 0usize;
        while done < io.len() {
            let part = io.slice(done, io.len() - done);
            let (ptr, len, at) = (part.as_ptr(), part.len() as u32, off + done as u64);
            let e = if write {
                opcode::Write::new(self.fd(), ptr, len).offset(at).build()
            } else {
                opcode::Read::new(self.fd(), ptr, len).offset(at).build()
            };
            let n = uring(e, Some(Box::new(part))).await;
            if n <= 0 {
                // An errno, or end of file (a file shrunk under us).
                return Err(IoError::Io);
            }
            done += n as usize;
        }
        Ok(())
    }

    async fn fallocate(&self, lba: u64, nblocks: u64, mode: i32) -> Result<(), IoError> {
        let len = usize::try_from(nblocks.saturating_mul(u64::from(self.block_size)))
            .map_err(|_| IoError::OutOfRange)?;
        let off = self.offset(lba, len)?;
        let e = opcode::Fallocate::new(self.fd(), len as u64)
            .offset(off)
            .mode(mode)
            .build();
        match uring(e, None).await {
            0 => Ok(()),
            _ => Err(IoError::Io),
        }
    }

    /// Zeroes through FALLOC_FL_ZERO_RANGE, else by writing zeroes (block devices).
    pub async fn write_zeroes(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        if self.fallocate(lba, nblocks, mode).await.is_ok() {
            return Ok(());
        }
        self.write_zero_blocks(lba, nblocks).await
    }

    /// Deallocates (reads return zeroes afterwards, as SPDK's uring bdev promises for files).
    pub async fn unmap(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        if self.fallocate(lba, nblocks, mode).await.is_ok() {
            return Ok(());
        }
        self.write_zero_blocks(lba, nblocks).await
    }

    async fn write_zero_blocks(&self, lba: u64, nblocks: u64) -> Result<(), IoError> {
        const CHUNK_BLOCKS: u64 = 256;
        let mut at = 0;
        while at < nblocks {
            let n = (nblocks - at).min(CHUNK_BLOCKS);
            let b = NativeBuf::alloc((n * u64::from(self.block_size)) as usize)
                .ok_or(IoError::NoMem)?;
            self.write(lba + at, b).await?;
            at += n;
        }
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), IoError> {
        let e = opcode::Fsync::new(self.fd())
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        match uring(e, None).await {
            0 => Ok(()),
            _ => Err(IoError::Io),
        }
    }
}

/// A regular file's length, or a block device's size (BLKGETSIZE64).
fn block_device_size(f: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let m = f.metadata()?;
    if !m.file_type().is_block_device() {
        return Ok(m.len());
    }
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: the ioctl writes one u64 into `size`.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}
