//! Parsing one descriptor chain into a block request, validated against the device's
//! geometry. Everything here reads guest-controlled data, so every length and offset is
//! checked and every failure is a status for the guest, never a panic.

use crate::{Request, Status};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// virtio-blk addresses in 512-byte sectors whatever the block size.
pub const SECTOR_SIZE: u64 = 512;
/// Largest data transfer accepted in one request (bounds what a guest can make us
/// allocate; Linux sends at most a few MiB).
pub const MAX_REQUEST_BYTES: usize = 32 << 20;
/// Most discard / write-zeroes segments accepted in one request (we advertise one).
pub const MAX_SEGMENTS: usize = 256;

const HEADER_LEN: usize = 16;
const SEGMENT_LEN: usize = 16;
/// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
const FLAG_UNMAP: u32 = 1;

/// What requests are checked against.
#[derive(Debug, Clone)]
pub(crate) struct Geometry {
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    /// GET_ID's answer (NUL-padded, as QEMU and SPDK do when shorter).
    pub id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

/// What to do with a parsed chain.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Submit(Request),
    /// Answered without the backend: `data` goes to the data area, then `status`.
    Immediate {
        data: Vec<u8>,
        status: u8,
    },
}

/// A parsed chain: the action and where its answer goes in guest memory.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub action: Action,
    /// The device-writable data area (the status byte excluded).
    pub writable: Vec<(GuestAddress, u32)>,
    /// The status byte; `None` when the chain has no writable byte at all.
    pub status: Option<GuestAddress>,
}

impl Parsed {
    fn fail(status: Status, writable: Vec<(GuestAddress, u32)>, at: Option<GuestAddress>) -> Self {
        Parsed {
            action: Action::Immediate {
                data: Vec::new(),
                status: status.byte(),
            },
            writable,
            status: at,
        }
    }
}

/// Copies `len` bytes starting `skip` bytes into `regions`; `None` if they are short or
/// unreadable.
pub(crate) fn gather<M: GuestMemory>(
    mem: &M,
    regions: &[(GuestAddress, u32)],
    mut skip: usize,
    len: usize,
) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut at = 0;
    for &(addr, rlen) in regions {
        let rlen = rlen as usize;
        if skip >= rlen {
            skip -= rlen;
            continue;
        }
        let n = (rlen - skip).min(len - at);
        let dst = out.get_mut(at..at + n)?;
        mem.read_slice(dst, addr.checked_add(skip as u64)?).ok()?;
        at += n;
        skip = 0;
        if at == len {
            break;
        }
    }
    (at == len).then_some(out)
}

/// Writes `data` across `regions` in order; returns how many bytes were written.
pub(crate) fn scatter<M: GuestMemory>(
    mem: &M,
    regions: &[(GuestAddress, u32)],
    data: &[u8],
) -> Option<usize> {
    let mut at = 0;
    for &(addr, rlen) in regions {
        if at == data.len() {
            break;
        }
        let n = (rlen as usize).min(data.len() - at);
        mem.write_slice(data.get(at..at + n)?, addr).ok()?;
        at += n;
    }
    Some(at)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

impl Geometry {
    /// A range in 512-byte sectors as (lba, nblocks), if aligned and inside the device.
    fn blocks(&self, sector: u64, bytes: u64) -> Option<(u64, u64)> {
        let bs = u64::from(self.block_size);
        let off = sector.checked_mul(SECTOR_SIZE)?;
        if bs == 0 || !off.is_multiple_of(bs) || !bytes.is_multiple_of(bs) {
            return None;
        }
        let (lba, n) = (off / bs, bytes / bs);
        (lba.checked_add(n)? <= self.num_blocks).then_some((lba, n))
    }
}

/// Parses one chain. `descs` is the chain as virtio-queue walks it (indirect tables
/// followed, length bounded).
pub(crate) fn parse<M: GuestMemory>(
    mem: &M,
    descs: impl Iterator<Item = Descriptor>,
    g: &Geometry,
) -> Parsed {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut malformed = false;
    // Whether the chain's last non-empty writable descriptor is in guest memory: if not,
    // its last byte (the status) cannot be written, and no other byte may stand in for it.
    let mut last_writable_ok = true;
    for d in descs {
        if d.len() == 0 {
            continue;
        }
        let access = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let ok = mem.check_range(d.addr(), d.len() as usize, access);
        if d.is_write_only() {
            last_writable_ok = ok;
        }
        if !ok {
            malformed = true;
            continue;
        }
        if d.is_write_only() {
            writable.push((d.addr(), d.len()));
        } else if writable.is_empty() {
            readable.push((d.addr(), d.len()));
        } else {
            // The spec puts every device-readable descriptor first.
            malformed = true;
        }
    }
    // The status byte is the chain's last writable byte.
    let status = match writable.last_mut() {
        Some(_) if !last_writable_ok => None,
        Some((addr, len)) => {
            let at = addr.checked_add(u64::from(*len - 1));
            *len -= 1;
            if *len == 0 {
                writable.pop();
            }
            at
        }
        None => None,
    };
    if malformed || status.is_none() {
        return Parsed::fail(Status::IoErr, writable, status);
    }
    let Some(hdr) = gather(mem, &readable, 0, HEADER_LEN) else {
        return Parsed::fail(Status::IoErr, writable, status);
    };
    let (kind, sector) = (u32_at(&hdr, 0), u64_at(&hdr, 8));
    let read_total: usize = readable.iter().map(|r| r.1 as usize).sum();
    let write_total: usize = writable.iter().map(|r| r.1 as usize).sum();
    let payload = read_total.saturating_sub(HEADER_LEN);
    let fail = |s, w| Parsed::fail(s, w, status);
    let req = match kind {
        VIRTIO_BLK_T_IN => {
            if write_total > MAX_REQUEST_BYTES {
                return fail(Status::IoErr, writable);
            }
            match g.blocks(sector, write_total as u64) {
                Some((_, 0)) => None,
                Some((lba, nblocks)) => Some(Request::Read { lba, nblocks }),
                None => return fail(Status::IoErr, writable),
            }
        }
        VIRTIO_BLK_T_OUT => {
            if g.read_only || payload > MAX_REQUEST_BYTES {
                return fail(Status::IoErr, writable);
            }
            match g.blocks(sector, payload as u64) {
                Some((_, 0)) => None,
                Some((lba, _)) => match gather(mem, &readable, HEADER_LEN, payload) {
                    Some(data) => Some(Request::Write { lba, data }),
                    None => return fail(Status::IoErr, writable),
                },
                None => return fail(Status::IoErr, writable),
            }
        }
        VIRTIO_BLK_T_FLUSH => Some(Request::Flush),
        VIRTIO_BLK_T_GET_ID => {
            let n = write_total.min(g.id.len());
            return Parsed {
                action: Action::Immediate {
                    data: g.id.get(..n).map(<[u8]>::to_vec).unwrap_or_default(),
                    status: VIRTIO_BLK_S_OK as u8,
                },
                writable,
                status,
            };
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if g.read_only {
                return fail(Status::IoErr, writable);
            }
            let nseg = payload / SEGMENT_LEN;
            if !payload.is_multiple_of(SEGMENT_LEN) || nseg == 0 || nseg > MAX_SEGMENTS {
                return fail(Status::Unsupp, writable);
            }
            let Some(segs) = gather(mem, &readable, HEADER_LEN, payload) else {
                return fail(Status::IoErr, writable);
            };
            let zeroes = kind == VIRTIO_BLK_T_WRITE_ZEROES;
            let mut ranges = Vec::with_capacity(nseg);
            let mut unmap = false;
            for i in 0..nseg {
                let at = i * SEGMENT_LEN;
                let (sec, n, flags) = (
                    u64_at(&segs, at),
                    u32_at(&segs, at + 8),
                    u32_at(&segs, at + 12),
                );
                // Discard takes no flags; write-zeroes only the unmap hint.
                if flags & !(if zeroes { FLAG_UNMAP } else { 0 }) != 0 {
                    return fail(Status::Unsupp, writable);
                }
                unmap |= flags & FLAG_UNMAP != 0;
                match g.blocks(sec, u64::from(n) * SECTOR_SIZE) {
                    Some((_, 0)) => {}
                    Some(r) => ranges.push(r),
                    None => return fail(Status::IoErr, writable),
                }
            }
            match (ranges.is_empty(), zeroes) {
                (true, _) => None,
                (false, true) => Some(Request::WriteZeroes { ranges, unmap }),
                (false, false) => Some(Request::Discard { ranges }),
            }
        }
        _ => return fail(Status::Unsupp, writable),
    };
    Parsed {
        action: match req {
            Some(r) => Action::Submit(r),
            // Zero-length transfers succeed without touching the device.
            None => Action::Immediate {
                data: Vec::new(),
                status: VIRTIO_BLK_S_OK as u8,
            },
        },
        writable,
        status,
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
