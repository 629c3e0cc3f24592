//! The native host's I/O buffer: shared memory with DMA semantics (devices fill it and read
//! it through `&self`), either page-aligned (for O_DIRECT files) or adopted from a transport's
//! `Vec<u8>` without a copy.

use crate::engine::IoBuf;
use std::alloc::Layout;
use std::cell::UnsafeCell;
use std::sync::Arc;

/// O_DIRECT needs the logical block size; a page covers every device here.
pub const ALIGN: usize = 4096;

struct Aligned {
    ptr: *mut u8,
    layout: Layout,
    /// Given back to this thread's pool on drop.
    pooled: bool,
}

impl Drop for Aligned {
    fn drop(&mut self) {
        if self.pooled && pool_put(self.ptr, self.layout) {
            return;
        }
        // SAFETY: allocated in `NativeBuf::alloc*` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Buffers of [`NativeBuf::alloc_uninit`] a thread keeps for reuse: copy-before-write,
/// merge and sync allocate one cluster-sized buffer per copy, and the allocator (with the
/// zeroing `alloc` does) was most of a copy's fixed cost. Bounded per thread.
const POOL_BUFS: usize = 64;
const POOL_MAX_LEN: usize = 1 << 20;

struct Pool(Vec<(*mut u8, Layout)>);

impl Drop for Pool {
    fn drop(&mut self) {
        for &(ptr, layout) in &self.0 {
            // SAFETY: each entry was allocated with its layout and is owned by the pool.
            unsafe { std::alloc::dealloc(ptr, layout) }
        }
    }
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = const { std::cell::RefCell::new(Pool(Vec::new())) };
}

/// Keeps `ptr` for reuse on this thread; false when the pool is full (or going away).
fn pool_put(ptr: *mut u8, layout: Layout) -> bool {
    if layout.size() > POOL_MAX_LEN {
        return false;
    }
    POOL.try_with(|p| match p.try_borrow_mut() {
        Ok(mut p) if p.0.len() < POOL_BUFS => {
            p.0.push((ptr, layout));
            true
        }
        _ => false,
    })
    .unwrap_or(false)
}

fn pool_take(layout: Layout) -> Option<*mut u8> {
    POOL.try_with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        let i = p.0.iter().rposition(|&(_, l)| l == layout)?;
        Some(p.0.swap_remove(i).0)
    })
    .ok()
    .flatten()
}

enum Mem {
    Aligned(Aligned),
    Vec(UnsafeCell<Vec<u8>>),
}

// SAFETY: the memory is plain bytes; as with DMA, the engine never lets two requests write
// one region at once, and a request's buffer is only touched by the device doing its I/O.
unsafe impl Send for Mem {}
unsafe impl Sync for Mem {}

impl Mem {
    fn base(&self) -> *mut u8 {
        match self {
            Mem::Aligned(a) => a.ptr,
            // SAFETY: the Vec is never resized once adopted; only its bytes are written.
            Mem::Vec(v) => unsafe { (*v.get()).as_mut_ptr() },
        }
    }
}

#[derive(Clone)]
pub struct NativeBuf {
    mem: Arc<Mem>,
    off: usize,
    len: usize,
}

impl NativeBuf {
    /// Zeroed, page-aligned memory; `None` when the allocator refuses.
    pub fn alloc(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1), ALIGN).ok()?;
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        Some(Self::aligned(ptr, layout, len, false))
    }

    /// Page-aligned memory whose contents are unspecified (often a buffer this thread used
    /// before), for callers that fill it before reading it: the engine's copies, as with
    /// SPDK's DMA buffers. `None` when the allocator refuses.
    pub fn alloc_uninit(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1), ALIGN).ok()?;
        let ptr = match pool_take(layout) {
            Some(p) => p,
            // SAFETY: non-zero size.
            None => unsafe { std::alloc::alloc(layout) },
        };
        if ptr.is_null() {
            return None;
        }
        Some(Self::aligned(ptr, layout, len, true))
    }

    fn aligned(ptr: *mut u8, layout: Layout, len: usize, pooled: bool) -> Self {
        Self {
            mem: Arc::new(Mem::Aligned(Aligned {
                ptr,
                layout,
                pooled,
            })),
            off: 0,
            len,
        }
    }

    /// Adopts a transport's buffer (a write's data, or a read's destination) without copying.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        Self {
            mem: Arc::new(Mem::Vec(UnsafeCell::new(v))),
            off: 0,
            len,
        }
    }

    /// The bytes back as a `Vec`: without a copy when this is the whole of an adopted
    /// `Vec` and no other handle remains, else copied.
    pub fn into_vec(self) -> Vec<u8> {
        if self.off == 0 {
            let len = self.len;
            match Arc::try_unwrap(self.mem) {
                Ok(Mem::Vec(v)) if v.get_mut_len() == len => return v.into_inner(),
                Ok(m) => return Self::copy_out(&m, 0, len),
                Err(mem) => return Self::copy_out(&mem, 0, len),
            }
        }
        Self::copy_out(&self.mem, self.off, self.len)
    }

    fn copy_out(m: &Mem, off: usize, len: usize) -> Vec<u8> {
        // SAFETY: in bounds by construction; see `Mem`'s Sync note.
        unsafe { std::slice::from_raw_parts(m.base().add(off), len).to_vec() }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: `off` is within the allocation.
        unsafe { self.mem.base().add(self.off) }
    }

    /// The bytes, for a device reading them (a write).
    ///
    /// # Safety
    /// No other request may be writing this region meanwhile (the engine's rule).
    pub unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: bounds by construction; exclusivity by the caller.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// Copies `src` into the buffer at `at` (a device completing a read).
    pub fn copy_in(&self, at: usize, src: &[u8]) {
        let n = src.len().min(self.len.saturating_sub(at));
        // SAFETY: bounds checked above; see `Mem`'s Sync note.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_ptr().add(at), n) }
    }

    pub fn is_aligned(&self) -> bool {
        (self.as_ptr() as usize).is_multiple_of(ALIGN)
    }
}

trait VecLen {
    fn get_mut_len(&self) -> usize;
}

impl VecLen for UnsafeCell<Vec<u8>> {
    fn get_mut_len(&self) -> usize {
        // SAFETY: read of the length only; the Vec is never resized.
        unsafe { (*self.get()).len() }
    }
}

impl IoBuf for NativeBuf {
    fn len(&self) -> usize {
        self.len
    }

    fn slice(&self, offset: usize, len: usize) -> Self {
        let offset = offset.min(self.len);
        Self {
            mem: self.mem.clone(),
            off: self.off + offset,
            len: len.min(self.len - offset),
        }
    }

    fn fill_zero(&self) {
        // SAFETY: bounds by construction; see `Mem`'s Sync note.
        unsafe { std::ptr::write_bytes(self.as_ptr(), 0, self.len) }
    }

    fn bytes_equal(&self, other: &Self) -> bool {
        // SAFETY: bounds by construction; no device writes either buffer meanwhile.
        unsafe {
            self.len == other.len
                && std::slice::from_raw_parts(self.as_ptr(), self.len)
                    == std::slice::from_raw_parts(other.as_ptr(), other.len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopted_vec_round_trips_without_copy() {
        let v = vec![7u8; 8192];
        let p = v.as_ptr();
        let b = NativeBuf::from_vec(v);
        b.slice(4096, 4096).fill_zero();
        let v = b.into_vec();
        assert_eq!(v.as_ptr(), p);
        assert!(v[..4096].iter().all(|&x| x == 7));
        assert!(v[4096..].iter().all(|&x| x == 0));
    }

    #[test]
    fn aligned_slices_share_memory() {
        let b = NativeBuf::alloc(3 * ALIGN).unwrap();
        assert!(b.is_aligned());
        b.slice(ALIGN, ALIGN).copy_in(0, &[9u8; ALIGN]);
        let v = b.clone().into_vec();
        assert!(v[ALIGN..2 * ALIGN].iter().all(|&x| x == 9));
        assert!(v[..ALIGN].iter().all(|&x| x == 0));
    }

    #[test]
    fn uninit_buffers_are_reused_per_thread_and_bounded() {
        let b = NativeBuf::alloc_uninit(16 * 1024).unwrap();
        assert!(b.is_aligned());
        let p = b.as_ptr();
        drop(b.slice(0, 4096)); // a slice alone does not give the memory back
        drop(b);
        let again = NativeBuf::alloc_uninit(16 * 1024).unwrap();
        assert_eq!(
            again.as_ptr(),
            p,
            "the dropped buffer serves the next allocation"
        );
        // Another size does not take it; zeroed allocations never use the pool.
        assert_ne!(NativeBuf::alloc_uninit(8 * 1024).unwrap().as_ptr(), p);
        drop(again);
        let z = NativeBuf::alloc(16 * 1024).unwrap();
        assert!(z.into_vec().iter().all(|&x| x == 0));
        // The pool keeps at most POOL_BUFS buffers.
        let many: Vec<_> = (0..POOL_BUFS + 8)
            .map(|_| NativeBuf::alloc_uninit(4096).unwrap())
            .collect();
        drop(many);
        assert!(POOL.with(|p| p.borrow().0.len()) <= POOL_BUFS);
    }
}
