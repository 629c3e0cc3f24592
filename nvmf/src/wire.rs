//! Little-endian field access that cannot panic: every read of untrusted bytes goes through
//! these, so a short buffer yields zeros instead of an out-of-bounds panic (callers check
//! lengths first; this is the second line of defence).

pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    match b.get(off..off.saturating_add(2)) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off.saturating_add(4)) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from(le32(b, off)) | (u64::from(le32(b, off.saturating_add(4))) << 32)
}

pub(crate) fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

pub(crate) fn put8(b: &mut [u8], off: usize, v: u8) {
    if let Some(x) = b.get_mut(off) {
        *x = v;
    }
}

pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    put_bytes(b, off, &v.to_le_bytes());
}

pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    put_bytes(b, off, &v.to_le_bytes());
}

pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    put_bytes(b, off, &v.to_le_bytes());
}

pub(crate) fn put_bytes(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(dst) = b.get_mut(off..off.saturating_add(v.len())) {
        dst.copy_from_slice(v);
    }
}

/// An ASCII field padded with spaces (serial, model, firmware revision).
pub(crate) fn put_ascii_padded(b: &mut [u8], off: usize, len: usize, s: &str) {
    if let Some(dst) = b.get_mut(off..off.saturating_add(len)) {
        dst.fill(b' ');
        let n = s.len().min(len);
        dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    }
}

/// A NUL-terminated string field (NQNs).
pub(crate) fn put_cstr(b: &mut [u8], off: usize, len: usize, s: &str) {
    if let Some(dst) = b.get_mut(off..off.saturating_add(len)) {
        dst.fill(0);
        // Keep one NUL at the end so readers always find a terminator.
        let n = s.len().min(len.saturating_sub(1));
        dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    }
}

/// Reads a NUL-terminated (or field-length) string; invalid UTF-8 is replaced, never trusted.
pub(crate) fn get_cstr(b: &[u8], off: usize, len: usize) -> String {
    let field = b.get(off..off.saturating_add(len)).unwrap_or(&[]);
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Reads a space-padded ASCII field.
pub(crate) fn get_ascii(b: &[u8], off: usize, len: usize) -> String {
    get_cstr(b, off, len).trim_end().to_string()
}
