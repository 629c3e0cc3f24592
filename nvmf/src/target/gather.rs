//! Output for drivers that send read data from its own buffer (a gather send), as SPDK's
//! target writes C2HData from the bdev's buffer: the connection's encoded bytes with the
//! read buffers spliced in where their C2HData PDUs carry them. It saves a copy of every
//! byte read into the PDU buffer.

use std::ops::Range;

/// A spliced read buffer range: the bytes of `bufs[buf][range]` come right before
/// `bytes[at]`.
#[derive(Debug, Clone)]
struct Splice {
    at: usize,
    buf: usize,
    range: Range<usize>,
}

/// Bytes to send: `bytes`, with read buffers spliced in.
#[derive(Debug, Default)]
pub struct TxBatch {
    bytes: Vec<u8>,
    splices: Vec<Splice>,
    bufs: Vec<Vec<u8>>,
}

impl TxBatch {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.splices.is_empty()
    }

    /// Bytes in the batch, spliced ones included.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.splices.iter().map(|s| s.range.len()).sum::<usize>()
    }

    /// The pieces after the first `skip` bytes, in order, at most `max` of them, as
    /// iovecs for `sendmsg` (they point into the batch: keep it unchanged until sent).
    pub fn iovecs(&self, mut skip: usize, max: usize, out: &mut Vec<libc::iovec>) {
        out.clear();
        let mut from = 0;
        let mut piece = |s: &[u8], out: &mut Vec<libc::iovec>| {
            if skip >= s.len() {
                skip -= s.len();
                return;
            }
            let s = s.get(skip..).unwrap_or(&[]);
            skip = 0;
            if out.len() < max && !s.is_empty() {
                out.push(libc::iovec {
                    // The kernel only reads through it (a send).
                    iov_base: s.as_ptr().cast_mut().cast(),
                    iov_len: s.len(),
                });
            }
        };
        for sp in &self.splices {
            piece(self.bytes.get(from..sp.at).unwrap_or(&[]), out);
            let data = self.bufs.get(sp.buf).and_then(|b| b.get(sp.range.clone()));
            piece(data.unwrap_or(&[]), out);
            from = sp.at;
        }
        piece(self.bytes.get(from..).unwrap_or(&[]), out);
    }

    /// Empties the batch (keeping the byte vector's capacity); the read buffers go to
    /// `recycle`.
    pub fn clear(&mut self, mut recycle: impl FnMut(Vec<u8>)) {
        self.bytes.clear();
        self.splices.clear();
        for b in self.bufs.drain(..) {
            recycle(b);
        }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Encodes a PDU that carries `bufs[buf][range]` with `encode`, which writes all of
    /// it but the data and returns the offset where the data belongs.
    pub(crate) fn encode_spliced(
        &mut self,
        buf: usize,
        range: Range<usize>,
        encode: impl FnOnce(&mut Vec<u8>, &[u8]) -> usize,
    ) {
        let data = self.bufs.get(buf).and_then(|b| b.get(range.clone()));
        let at = encode(&mut self.bytes, data.unwrap_or(&[]));
        self.splices.push(Splice { at, buf, range });
    }

    pub(crate) fn add_buf(&mut self, b: Vec<u8>) -> usize {
        self.bufs.push(b);
        self.bufs.len() - 1
    }

    /// Swaps contents with `other`.
    pub(crate) fn swap(&mut self, other: &mut TxBatch) {
        std::mem::swap(self, other);
    }

    /// The whole batch as one byte vector (for drivers that send from one buffer).
    pub(crate) fn flatten(&mut self) -> Vec<u8> {
        if self.splices.is_empty() {
            self.bufs.clear();
            return std::mem::take(&mut self.bytes);
        }
        let mut out = Vec::with_capacity(self.len());
        let mut from = 0;
        for sp in &self.splices {
            out.extend_from_slice(self.bytes.get(from..sp.at).unwrap_or(&[]));
            if let Some(d) = self.bufs.get(sp.buf).and_then(|b| b.get(sp.range.clone())) {
                out.extend_from_slice(d);
            }
            from = sp.at;
        }
        out.extend_from_slice(self.bytes.get(from..).unwrap_or(&[]));
        self.clear(drop);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> TxBatch {
        let mut b = TxBatch::default();
        b.bytes_mut().extend_from_slice(b"hdr1");
        let i = b.add_buf(b"0123456789".to_vec());
        // A header before the data's place, a digest after it.
        b.encode_spliced(i, 2..8, |out, d| {
            assert_eq!(d, b"234567");
            let at = out.len();
            out.extend_from_slice(b"dg");
            at
        });
        b.bytes_mut().extend_from_slice(b"|hdr2");
        b.encode_spliced(i, 8..10, |out, _| out.len());
        b
    }

    fn gathered(b: &TxBatch, skip: usize, max: usize) -> Vec<u8> {
        let mut iov = Vec::new();
        b.iovecs(skip, max, &mut iov);
        iov.iter()
            // SAFETY: the iovecs point into `b`, alive and unchanged here.
            .flat_map(|v| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) })
            .copied()
            .collect()
    }

    #[test]
    fn pieces_come_in_stream_order_from_any_offset() {
        let mut b = batch();
        let flat = b"hdr1234567dg|hdr289".to_vec();
        assert_eq!(b.len(), flat.len());
        for skip in 0..=flat.len() {
            assert_eq!(gathered(&b, skip, 64), flat[skip..], "skip {skip}");
        }
        // At most `max` pieces, the first ones.
        assert_eq!(gathered(&b, 0, 2), b"hdr1234567");
        assert_eq!(b.flatten(), flat);
        assert!(b.is_empty());
    }

    #[test]
    fn clear_hands_the_buffers_back() {
        let mut b = batch();
        let mut back = Vec::new();
        b.clear(|v| back.push(v));
        assert_eq!(back, vec![b"0123456789".to_vec()]);
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
    }
}
