//! Unit tests for the request parser: real descriptor chains built in guest memory with
//! virtio-queue's mock split queue, walked by `DescriptorChain` as the device does.

use super::*;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

type Mem = GuestMemoryMmap<()>;

/// Guest memory: one region, large enough for a request of more than MAX_REQUEST_BYTES.
const MEM_SIZE: u64 = 64 << 20;
const QUEUE_SIZE: u16 = 256;
const BS: u32 = 4096;
const OK: u8 = 0;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

// Buffer addresses, well clear of the mock queue's rings at address 0.
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const DATA2: u64 = 0x40_0000;
const STATUS: u64 = 0x80_0000;
const BIG: u64 = 0x100_0000;

fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn geom(block_size: u32, num_blocks: u64, read_only: bool) -> Geometry {
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    id[..11].copy_from_slice(b"vhost-blk-0");
    Geometry {
        block_size,
        num_blocks,
        read_only,
        id,
    }
}

/// 4096-byte blocks, 1024 of them, writable.
fn g() -> Geometry {
    geom(BS, 1024, false)
}

fn r(addr: u64, len: u32) -> RawDescriptor {
    Descriptor::new(addr, len, 0, 0).into()
}

fn w(addr: u64, len: u32) -> RawDescriptor {
    Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0).into()
}

/// Writes a request header at `at`.
fn put_hdr(m: &Mem, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(at)).unwrap();
}

/// Writes discard / write-zeroes segments at `at`.
fn put_segs(m: &Mem, at: u64, segs: &[(u64, u32, u32)]) {
    let mut b = Vec::new();
    for &(sector, n, flags) in segs {
        b.extend_from_slice(&sector.to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
    }
    m.write_slice(&b, GuestAddress(at)).unwrap();
}

/// Puts `descs` in the descriptor table as one chain (NEXT flags set by the mock), makes
/// it available, pops it from a real `Queue` and parses it.
fn run(m: &Mem, descs: &[RawDescriptor], g: &Geometry) -> Parsed {
    let q = MockSplitQueue::new(m, QUEUE_SIZE);
    let chain = q.build_desc_chain(descs).unwrap();
    parse(m, chain, g)
}

fn immediate(p: &Parsed) -> (&[u8], u8) {
    match &p.action {
        Action::Immediate { data, status } => (data, *status),
        a => panic!("expected an immediate answer, got {a:?}"),
    }
}

/// The chain is answered with `status`, no data, the status byte at `at`.
#[track_caller]
fn assert_fails(p: &Parsed, status: u8, at: Option<u64>) {
    assert_eq!(immediate(p), (&[][..], status), "{p:?}");
    assert_eq!(p.status, at.map(GuestAddress), "{p:?}");
}

#[track_caller]
fn assert_submits(p: &Parsed, req: Request) {
    assert_eq!(p.action, Action::Submit(req), "{p:?}");
}

fn regions(v: &[(u64, u32)]) -> Vec<(GuestAddress, u32)> {
    v.iter().map(|&(a, l)| (GuestAddress(a), l)).collect()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251 + 7) as u8).collect()
}

/// A plain read of `bytes` into DATA.
fn read_chain(m: &Mem, sector: u64, bytes: u32) -> Vec<RawDescriptor> {
    put_hdr(m, HDR, VIRTIO_BLK_T_IN, sector);
    vec![r(HDR, 16), w(DATA, bytes), w(STATUS, 1)]
}

/// A plain write of `bytes` from DATA.
fn write_chain(m: &Mem, sector: u64, bytes: u32) -> Vec<RawDescriptor> {
    put_hdr(m, HDR, VIRTIO_BLK_T_OUT, sector);
    vec![r(HDR, 16), r(DATA, bytes), w(STATUS, 1)]
}

// ---------------------------------------------------------------- well-formed requests

#[test]
fn read_n_blocks() {
    let m = mem();
    // Sector 40 = byte 20480 = block 5; 3 blocks.
    let p = run(&m, &read_chain(&m, 40, 3 * BS), &g());
    assert_submits(&p, Request::Read { lba: 5, nblocks: 3 });
    assert_eq!(p.writable, regions(&[(DATA, 3 * BS)]));
    assert_eq!(p.status, Some(GuestAddress(STATUS)));
}

#[test]
fn read_data_area_over_several_descriptors_and_status_in_last_one() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 0);
    // 1000 + 3096 + 4096 data bytes, the last descriptor carrying the status byte too.
    let d = [r(HDR, 16), w(DATA, 1000), w(DATA2, 3096), w(BIG, BS + 1)];
    let p = run(&m, &d, &g());
    assert_submits(&p, Request::Read { lba: 0, nblocks: 2 });
    assert_eq!(
        p.writable,
        regions(&[(DATA, 1000), (DATA2, 3096), (BIG, BS)])
    );
    assert_eq!(p.status, Some(GuestAddress(BIG + u64::from(BS))));
}

#[test]
fn read_last_blocks_of_device() {
    let m = mem();
    let p = run(&m, &read_chain(&m, 1022 * 8, 2 * BS), &g());
    assert_submits(
        &p,
        Request::Read {
            lba: 1022,
            nblocks: 2,
        },
    );
}

#[test]
fn read_with_no_data_area_succeeds_immediately() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 8);
    let p = run(&m, &[r(HDR, 16), w(STATUS, 1)], &g());
    assert_fails(&p, OK, Some(STATUS));
    assert!(p.writable.is_empty());
}

#[test]
fn read_on_read_only_device_is_fine() {
    let m = mem();
    let p = run(&m, &read_chain(&m, 0, BS), &geom(BS, 1024, true));
    assert_submits(&p, Request::Read { lba: 0, nblocks: 1 });
}

#[test]
fn header_split_over_two_descriptors() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 16);
    let mut tail = [0u8; 8];
    m.read_slice(&mut tail, GuestAddress(HDR + 8)).unwrap();
    m.write_slice(&tail, GuestAddress(DATA2)).unwrap();
    let d = [r(HDR, 8), r(DATA2, 8), w(DATA, BS), w(STATUS, 1)];
    let p = run(&m, &d, &g());
    assert_submits(&p, Request::Read { lba: 2, nblocks: 1 });
}

#[test]
fn write_payload_spanning_descriptors() {
    let m = mem();
    let data = pattern(2 * BS as usize);
    // The header and the first 1000 payload bytes share a descriptor; the rest is split
    // 3000 + 4192 over two more.
    put_hdr(&m, HDR, VIRTIO_BLK_T_OUT, 3 * 8);
    m.write_slice(&data[..1000], GuestAddress(HDR + 16))
        .unwrap();
    m.write_slice(&data[1000..4000], GuestAddress(DATA))
        .unwrap();
    m.write_slice(&data[4000..], GuestAddress(DATA2)).unwrap();
    let d = [
        r(HDR, 16 + 1000),
        r(DATA, 3000),
        r(DATA2, 4192),
        w(STATUS, 1),
    ];
    let p = run(&m, &d, &g());
    assert_submits(&p, Request::Write { lba: 3, data });
    assert!(p.writable.is_empty());
    assert_eq!(p.status, Some(GuestAddress(STATUS)));
}

#[test]
fn write_with_no_payload_succeeds_immediately() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let p = run(&m, &[r(HDR, 16), w(STATUS, 1)], &g());
    assert_fails(&p, OK, Some(STATUS));
}

#[test]
fn flush() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let p = run(&m, &[r(HDR, 16), w(STATUS, 1)], &g());
    assert_submits(&p, Request::Flush);
    assert!(p.writable.is_empty());
    assert_eq!(p.status, Some(GuestAddress(STATUS)));
    // Flushing a read-only device is harmless.
    let p = run(&m, &[r(HDR, 16), w(STATUS, 1)], &geom(BS, 1024, true));
    assert_submits(&p, Request::Flush);
}

#[test]
fn get_id_is_answered_immediately_nul_padded() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let p = run(&m, &[r(HDR, 16), w(DATA, 20), w(STATUS, 1)], &g());
    let mut want = b"vhost-blk-0".to_vec();
    want.resize(20, 0);
    assert_eq!(immediate(&p), (&want[..], OK));
    assert_eq!(p.writable, regions(&[(DATA, 20)]));
    assert_eq!(p.status, Some(GuestAddress(STATUS)));
    // The answer goes where the device puts it.
    assert_eq!(scatter(&m, &p.writable, &want), Some(20));
    assert_eq!(gather(&m, &p.writable, 0, 20), Some(want));
}

#[test]
fn get_id_of_twenty_bytes_has_no_nul_and_short_buffers_get_a_prefix() {
    let m = mem();
    let mut g = g();
    g.id = *b"0123456789abcdefghij";
    put_hdr(&m, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let p = run(&m, &[r(HDR, 16), w(DATA, 20), w(STATUS, 1)], &g);
    assert_eq!(immediate(&p), (&b"0123456789abcdefghij"[..], OK));
    // A larger buffer still gets 20 bytes.
    let p = run(&m, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], &g);
    assert_eq!(immediate(&p), (&b"0123456789abcdefghij"[..], OK));
    // A shorter one gets what fits.
    let p = run(&m, &[r(HDR, 16), w(DATA, 8), w(STATUS, 1)], &g);
    assert_eq!(immediate(&p), (&b"01234567"[..], OK));
    // None at all: just the status.
    let p = run(&m, &[r(HDR, 16), w(STATUS, 1)], &g);
    assert_fails(&p, OK, Some(STATUS));
}

#[test]
fn discard_one_segment() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    put_segs(&m, DATA, &[(16, 24, 0)]);
    let p = run(&m, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &g());
    assert_submits(
        &p,
        Request::Discard {
            ranges: vec![(2, 3)],
        },
    );
    assert_eq!(p.status, Some(GuestAddress(STATUS)));
}

#[test]
fn discard_segment_in_the_header_descriptor() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    put_segs(&m, HDR + 16, &[(0, 8, 0)]);
    let p = run(&m, &[r(HDR, 32), w(STATUS, 1)], &g());
    assert_submits(
        &p,
        Request::Discard {
            ranges: vec![(0, 1)],
        },
    );
}

#[test]
fn discard_with_unmap_flag_is_unsupported() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    put_segs(&m, DATA, &[(16, 8, FLAG_UNMAP)]);
    let p = run(&m, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &g());
    assert_fails(&p, UNSUPP, Some(STATUS));
}

#[test]
fn write_zeroes_one_segment_with_and_without_unmap() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let d = [r(HDR, 16), r(DATA, 16), w(STATUS, 1)];
    put_segs(&m, DATA, &[(1000 * 8, 24 * 8, 0)]);
    let p = run(&m, &d, &g());
    assert_submits(
        &p,
        Request::WriteZeroes {
            ranges: vec![(1000, 24)],
            unmap: false,
        },
    );
    put_segs(&m, DATA, &[(8, 8, FLAG_UNMAP)]);
    let p = run(&m, &d, &g());
    assert_submits(
        &p,
        Request::WriteZeroes {
            ranges: vec![(1, 1)],
            unmap: true,
        },
    );
}

#[test]
fn discard_and_write_zeroes_unknown_flags_are_unsupported() {
    let m = mem();
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        for flags in [2, 0x8000_0000, FLAG_UNMAP | 4] {
            put_hdr(&m, HDR, kind, 0);
            put_segs(&m, DATA, &[(8, 8, flags)]);
            let p = run(&m, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &g());
            assert_fails(&p, UNSUPP, Some(STATUS));
        }
    }
}

#[test]
fn discard_and_write_zeroes_segment_counts() {
    let m = mem();
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        put_hdr(&m, HDR, kind, 0);
        let segs: Vec<_> = (0..MAX_SEGMENTS as u64 + 1)
            .map(|i| (i * 8, 8, 0))
            .collect();
        put_segs(&m, DATA, &segs);
        // The most allowed.
        let len = (MAX_SEGMENTS * SEGMENT_LEN) as u32;
        let p = run(&m, &[r(HDR, 16), r(DATA, len), w(STATUS, 1)], &g());
        let ranges: Vec<_> = (0..MAX_SEGMENTS as u64).map(|i| (i, 1)).collect();
        let want = if kind == VIRTIO_BLK_T_DISCARD {
            Request::Discard { ranges }
        } else {
            Request::WriteZeroes {
                ranges,
                unmap: false,
            }
        };
        assert_submits(&p, want);
        // One more.
        let len = ((MAX_SEGMENTS + 1) * SEGMENT_LEN) as u32;
        let p = run(&m, &[r(HDR, 16), r(DATA, len), w(STATUS, 1)], &g());
        assert_fails(&p, UNSUPP, Some(STATUS));
        // None.
        let p = run(&m, &[r(HDR, 16), w(STATUS, 1)], &g());
        assert_fails(&p, UNSUPP, Some(STATUS));
        // A partial segment.
        let p = run(&m, &[r(HDR, 16), r(DATA, 24), w(STATUS, 1)], &g());
        assert_fails(&p, UNSUPP, Some(STATUS));
    }
}

#[test]
fn discard_and_write_zeroes_segment_out_of_range_or_unaligned() {
    let m = mem();
    let bad: [(u64, u32); 5] = [
        (1023 * 8, 16), // one block past the end
        (1024 * 8, 8),  // starts at the end
        (4, 8),         // unaligned start
        (8, 4),         // unaligned length
        (u64::MAX, 8),  // sector * 512 overflows
    ];
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        for (sector, n) in bad {
            put_hdr(&m, HDR, kind, 0);
            // A good segment first: the bad one still fails the request.
            put_segs(&m, DATA, &[(0, 8, 0), (sector, n, 0)]);
            let p = run(&m, &[r(HDR, 16), r(DATA, 32), w(STATUS, 1)], &g());
            assert_fails(&p, IOERR, Some(STATUS));
        }
    }
}

#[test]
fn discard_of_zero_sectors_succeeds_immediately() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    put_segs(&m, DATA, &[(8, 0, 0), (1024 * 8, 0, 0)]);
    let p = run(&m, &[r(HDR, 16), r(DATA, 32), w(STATUS, 1)], &g());
    assert_fails(&p, OK, Some(STATUS));
}

#[test]
fn discard_and_write_zeroes_on_read_only_device() {
    let m = mem();
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        put_hdr(&m, HDR, kind, 0);
        put_segs(&m, DATA, &[(8, 8, 0)]);
        let d = [r(HDR, 16), r(DATA, 16), w(STATUS, 1)];
        let p = run(&m, &d, &geom(BS, 1024, true));
        assert_fails(&p, IOERR, Some(STATUS));
    }
}

#[test]
fn read_through_an_indirect_table() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 8);
    let table = BIG;
    let descs = [
        Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1),
        Descriptor::new(DATA, BS, (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16, 2),
        Descriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, d) in descs.iter().enumerate() {
        m.write_obj(RawDescriptor::from(*d), GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let head = Descriptor::new(table, 48, VRING_DESC_F_INDIRECT as u16, 0);
    let p = run(&m, &[head.into()], &g());
    assert_submits(&p, Request::Read { lba: 1, nblocks: 1 });
    assert_eq!(p.writable, regions(&[(DATA, BS)]));
    assert_eq!(p.status, Some(GuestAddress(STATUS)));
}

// ---------------------------------------------------------------------- hostile chains

#[test]
fn no_writable_descriptor_means_no_status_byte() {
    let m = mem();
    for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH] {
        put_hdr(&m, HDR, kind, 0);
        let p = run(&m, &[r(HDR, 16), r(DATA, BS)], &g());
        assert_fails(&p, IOERR, None);
        assert!(p.writable.is_empty());
    }
}

#[test]
fn header_shorter_than_16_bytes() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
    for len in [1, 8, 15] {
        let p = run(&m, &[r(HDR, len), w(STATUS, 1)], &g());
        assert_fails(&p, IOERR, Some(STATUS));
    }
    // No readable descriptor at all.
    let p = run(&m, &[w(DATA, BS), w(STATUS, 1)], &g());
    assert_fails(&p, IOERR, Some(STATUS));
    assert_eq!(p.writable, regions(&[(DATA, BS)]));
}

#[test]
fn readable_descriptor_after_a_writable_one() {
    let m = mem();
    let d = [r(HDR, 16), w(DATA, BS), r(DATA2, 16), w(STATUS, 1)];
    put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let p = run(&m, &d, &g());
    assert_fails(&p, IOERR, Some(STATUS));
    // Readable last: the status still goes to the last writable byte.
    let d = [r(HDR, 16), w(DATA, BS + 1), r(DATA2, 16)];
    let p = run(&m, &d, &g());
    assert_fails(&p, IOERR, Some(DATA + u64::from(BS)));
    assert_eq!(p.writable, regions(&[(DATA, BS)]));
}

#[test]
fn descriptor_outside_guest_memory() {
    let m = mem();
    // The data area past the end of memory, straddling it, or wrapping the address space.
    for (addr, len) in [
        (MEM_SIZE, BS),
        (MEM_SIZE - 1024, BS),
        (u64::MAX - 100, BS),
        (u64::MAX, 1),
    ] {
        put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 0);
        let p = run(&m, &[r(HDR, 16), w(addr, len), w(STATUS, 1)], &g());
        assert_fails(&p, IOERR, Some(STATUS));
        assert!(p.writable.is_empty());
        // The payload of a write.
        put_hdr(&m, HDR, VIRTIO_BLK_T_OUT, 0);
        let p = run(&m, &[r(HDR, 16), r(addr, len), w(STATUS, 1)], &g());
        assert_fails(&p, IOERR, Some(STATUS));
        // The header.
        let p = run(&m, &[r(addr, len), w(STATUS, 1)], &g());
        assert_fails(&p, IOERR, Some(STATUS));
    }
}

#[test]
fn status_descriptor_outside_guest_memory_writes_no_status() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 0);
    for status in [MEM_SIZE, u64::MAX] {
        let p = run(&m, &[r(HDR, 16), w(DATA, BS), w(status, 1)], &g());
        // The status must not land in the data area instead.
        assert_fails(&p, IOERR, None);
        let p = run(&m, &[r(HDR, 16), w(status, 1)], &g());
        assert_fails(&p, IOERR, None);
    }
    // An unreachable writable buffer before a good status byte: the status is still
    // reported where the guest put it.
    let p = run(&m, &[r(HDR, 16), w(MEM_SIZE, BS), w(STATUS, 1)], &g());
    assert_fails(&p, IOERR, Some(STATUS));
}

#[test]
fn sector_not_aligned_to_block_size() {
    let m = mem();
    for sector in [1, 4, 7, 9, 1023 * 8 + 1] {
        let p = run(&m, &read_chain(&m, sector, BS), &g());
        assert_fails(&p, IOERR, Some(STATUS));
        let p = run(&m, &write_chain(&m, sector, BS), &g());
        assert_fails(&p, IOERR, Some(STATUS));
    }
    // With 512-byte blocks any sector is aligned.
    let p = run(&m, &read_chain(&m, 7, 512), &geom(512, 1024, false));
    assert_submits(&p, Request::Read { lba: 7, nblocks: 1 });
}

#[test]
fn range_past_the_end_of_the_device() {
    let m = mem();
    for (sector, bytes) in [(1023 * 8, 2 * BS), (1024 * 8, BS), (1 << 40, BS)] {
        let p = run(&m, &read_chain(&m, sector, bytes), &g());
        assert_fails(&p, IOERR, Some(STATUS));
        let p = run(&m, &write_chain(&m, sector, bytes), &g());
        assert_fails(&p, IOERR, Some(STATUS));
    }
}

#[test]
fn sector_times_512_overflows() {
    let m = mem();
    let huge = u64::MAX / SECTOR_SIZE + 1;
    for sector in [huge, huge + 8, u64::MAX] {
        let p = run(&m, &read_chain(&m, sector, BS), &geom(512, u64::MAX, false));
        assert_fails(&p, IOERR, Some(STATUS));
        let p = run(
            &m,
            &write_chain(&m, sector, BS),
            &geom(512, u64::MAX, false),
        );
        assert_fails(&p, IOERR, Some(STATUS));
    }
}

#[test]
fn lba_plus_blocks_overflows() {
    let m = mem();
    // Only reachable with tiny blocks: lba = sector * 512 close to u64::MAX.
    let g = geom(1, u64::MAX, false);
    let sector = u64::MAX / SECTOR_SIZE;
    let p = run(&m, &read_chain(&m, sector, BS), &g);
    assert_fails(&p, IOERR, Some(STATUS));
    put_hdr(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    put_segs(&m, DATA, &[(sector, 8, 0)]);
    let p = run(&m, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &g);
    assert_fails(&p, IOERR, Some(STATUS));
    // And the largest range that fits is accepted.
    let p = run(&m, &read_chain(&m, sector, 511), &g);
    assert_submits(
        &p,
        Request::Read {
            lba: sector * SECTOR_SIZE,
            nblocks: 511,
        },
    );
}

#[test]
fn zero_block_size_is_rejected_not_divided_by() {
    let m = mem();
    let g = geom(0, 1024, false);
    let p = run(&m, &read_chain(&m, 0, BS), &g);
    assert_fails(&p, IOERR, Some(STATUS));
}

#[test]
fn write_on_read_only_device() {
    let m = mem();
    let p = run(&m, &write_chain(&m, 0, BS), &geom(BS, 1024, true));
    assert_fails(&p, IOERR, Some(STATUS));
    // Even an empty one.
    put_hdr(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let p = run(&m, &[r(HDR, 16), w(STATUS, 1)], &geom(BS, 1024, true));
    assert_fails(&p, IOERR, Some(STATUS));
}

#[test]
fn unknown_request_type_is_unsupported() {
    let m = mem();
    // SCSI, GET_LIFETIME, SECURE_ERASE, zone ops, the legacy barrier bit, garbage.
    for kind in [
        2,
        3,
        5,
        10,
        14,
        15,
        16,
        26,
        0x8000_0000,
        0x8000_0001,
        u32::MAX,
    ] {
        put_hdr(&m, HDR, kind, 0);
        let p = run(&m, &[r(HDR, 16), w(DATA, BS), w(STATUS, 1)], &g());
        assert_fails(&p, UNSUPP, Some(STATUS));
        assert_eq!(p.writable, regions(&[(DATA, BS)]));
    }
}

#[test]
fn payload_not_a_multiple_of_the_block_size() {
    let m = mem();
    for bytes in [1, 100, 512, BS - 1, BS + 512] {
        let p = run(&m, &read_chain(&m, 0, bytes), &g());
        assert_fails(&p, IOERR, Some(STATUS));
        let p = run(&m, &write_chain(&m, 0, bytes), &g());
        assert_fails(&p, IOERR, Some(STATUS));
    }
}

#[test]
fn request_larger_than_max_request_bytes() {
    let m = mem();
    let g = geom(BS, 1 << 20, false);
    let max = MAX_REQUEST_BYTES as u32;
    // Exactly the limit is fine.
    put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let p = run(&m, &[r(HDR, 16), w(BIG, max), w(STATUS, 1)], &g);
    assert_submits(
        &p,
        Request::Read {
            lba: 0,
            nblocks: u64::from(max / BS),
        },
    );
    // One block more, in one descriptor or two.
    let p = run(&m, &[r(HDR, 16), w(BIG, max + BS), w(STATUS, 1)], &g);
    assert_fails(&p, IOERR, Some(STATUS));
    let p = run(
        &m,
        &[r(HDR, 16), w(BIG, max), w(DATA, BS), w(STATUS, 1)],
        &g,
    );
    assert_fails(&p, IOERR, Some(STATUS));
    // Writes likewise.
    put_hdr(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let p = run(&m, &[r(HDR, 16), r(BIG, max), w(STATUS, 1)], &g);
    match &p.action {
        Action::Submit(Request::Write { lba: 0, data }) => assert_eq!(data.len(), max as usize),
        a => panic!("{a:?}"),
    }
    let p = run(&m, &[r(HDR, 16), r(BIG, max + BS), w(STATUS, 1)], &g);
    assert_fails(&p, IOERR, Some(STATUS));
    let p = run(&m, &[r(HDR, 16 + BS), r(BIG, max), w(STATUS, 1)], &g);
    assert_fails(&p, IOERR, Some(STATUS));
}

#[test]
fn zero_length_descriptors_are_skipped() {
    let m = mem();
    put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 8);
    // Empty descriptors anywhere, even with addresses outside memory and after the
    // writable ones, change nothing.
    let d = [
        r(u64::MAX, 0),
        r(HDR, 16),
        r(0xdead_beef_0000, 0),
        w(DATA, BS),
        w(MEM_SIZE, 0),
        r(DATA2, 0),
        w(STATUS, 1),
        w(u64::MAX, 0),
    ];
    let p = run(&m, &d, &g());
    assert_submits(&p, Request::Read { lba: 1, nblocks: 1 });
    assert_eq!(p.writable, regions(&[(DATA, BS)]));
    assert_eq!(p.status, Some(GuestAddress(STATUS)));
}

#[test]
fn only_zero_length_descriptors() {
    let m = mem();
    let p = run(&m, &[r(HDR, 0), w(STATUS, 0)], &g());
    assert_fails(&p, IOERR, None);
    // An empty header descriptor: no header.
    let p = run(&m, &[r(HDR, 0), w(DATA, BS), w(STATUS, 1)], &g());
    assert_fails(&p, IOERR, Some(STATUS));
}

#[test]
fn zero_length_status_descriptor_takes_the_data_areas_last_byte() {
    let m = mem();
    // The last non-empty writable byte is the status: the data area is one byte short
    // of a block.
    put_hdr(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let p = run(&m, &[r(HDR, 16), w(DATA, BS), w(STATUS, 0)], &g());
    assert_fails(&p, IOERR, Some(DATA + u64::from(BS) - 1));
    assert_eq!(p.writable, regions(&[(DATA, BS - 1)]));
}

// ------------------------------------------------------------------- gather / scatter

#[test]
fn gather_skips_and_crosses_regions() {
    let m = mem();
    let data = pattern(300);
    m.write_slice(&data[..100], GuestAddress(DATA)).unwrap();
    m.write_slice(&data[100..], GuestAddress(DATA2)).unwrap();
    let rs = regions(&[(DATA, 100), (DATA2, 200)]);
    assert_eq!(gather(&m, &rs, 0, 300).as_deref(), Some(&data[..]));
    assert_eq!(gather(&m, &rs, 50, 100).as_deref(), Some(&data[50..150]));
    assert_eq!(gather(&m, &rs, 100, 200).as_deref(), Some(&data[100..]));
    assert_eq!(gather(&m, &rs, 300, 0).as_deref(), Some(&[][..]));
    assert_eq!(gather(&m, &rs, 0, 301), None);
    assert_eq!(gather(&m, &rs, 250, 51), None);
    assert_eq!(gather(&m, &rs, 1000, 1), None);
    assert_eq!(gather(&m, &regions(&[(MEM_SIZE, 16)]), 0, 16), None);
    assert_eq!(gather(&m, &regions(&[(u64::MAX, 16)]), 8, 8), None);
}

#[test]
fn scatter_fills_regions_in_order() {
    let m = mem();
    let data = pattern(250);
    let rs = regions(&[(DATA, 100), (DATA2, 200)]);
    assert_eq!(scatter(&m, &rs, &data), Some(250));
    assert_eq!(gather(&m, &rs, 0, 250).as_deref(), Some(&data[..]));
    // More data than room: what fits is written, and the count says so.
    assert_eq!(scatter(&m, &rs, &pattern(400)), Some(300));
    assert_eq!(scatter(&m, &rs, &[]), Some(0));
    assert_eq!(scatter(&m, &regions(&[(MEM_SIZE - 8, 16)]), &data), None);
}

// ------------------------------------------------------------------------------ fuzz

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

#[test]
fn random_chains_never_panic() {
    // Smaller memory keeps wild lengths mostly out of range while in-range ones still
    // reach the deep paths.
    const FUZZ_MEM: u64 = 8 << 20;
    let m: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), FUZZ_MEM as usize)]).unwrap();
    let q = MockSplitQueue::new(&m, QUEUE_SIZE);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let kinds = [
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        2,
        u32::MAX,
    ];
    let geoms = [
        geom(512, 1 << 16, false),
        geom(4096, 1024, false),
        geom(4096, 1024, true),
        geom(1, u64::MAX, false),
        geom(0, 0, false),
        geom(520, 77, false),
    ];
    let mut outcomes = [0usize; 4];
    for _ in 0..20_000 {
        // Requests at the bottom of the buffer area, random bytes elsewhere.
        let base = 0x10_0000 + rng.below(16) * 0x1_0000;
        let mut junk = [0u8; 64];
        for b in junk.iter_mut() {
            *b = rng.next() as u8;
        }
        m.write_slice(&junk, GuestAddress(base)).unwrap();
        let sector = match rng.below(4) {
            0 => rng.below(64) * 8,
            1 => rng.below(1 << 17),
            2 => u64::MAX - rng.below(1 << 20),
            _ => rng.next(),
        };
        put_hdr(&m, base, rng.pick(&kinds), sector);
        if rng.below(2) == 0 {
            let segs: Vec<_> = (0..4)
                .map(|_| {
                    let (x, y) = (rng.next(), rng.next() as u32);
                    (
                        rng.pick(&[0, 8, 1024 * 8, u64::MAX, x]),
                        rng.pick(&[0, 1, 8, 4096, u32::MAX, y]),
                        rng.pick(&[0, 1, 2, u32::MAX]),
                    )
                })
                .collect();
            put_segs(&m, base + 16, &segs);
        }
        let mut descs: Vec<RawDescriptor> = Vec::new();
        let in_mem_addr = |rng: &mut Rng| 0x20_0000 + rng.below(FUZZ_MEM - 0x40_0000);
        if rng.below(2) == 0 {
            // Well-formed shape: header (perhaps with segments), a few data descriptors
            // of plausible sizes all one way, the status byte; then perhaps one mutation.
            let hdr_len = rng.pick(&[16, 16, 16, 32, 48, 80]);
            descs.push(r(base, hdr_len));
            let data_write = rng.below(2) == 0;
            for _ in 0..rng.below(4) {
                let len = rng.pick(&[512, 4096, 8192, 1000, 3096, 20, 1]);
                let a = in_mem_addr(&mut rng);
                descs.push(if data_write { w(a, len) } else { r(a, len) });
            }
            descs.push(w(in_mem_addr(&mut rng), rng.pick(&[1, 1, 1, 513, 4097])));
            if rng.below(3) == 0 {
                let i = rng.below(descs.len() as u64) as usize;
                let d = Descriptor::from(descs[i]);
                let (x, j) = (rng.next(), rng.below(descs.len() as u64) as usize);
                let mutated = match rng.below(4) {
                    0 => {
                        let addr = rng.pick(&[FUZZ_MEM - 1, u64::MAX, x]);
                        Descriptor::new(addr, d.len(), d.flags(), 0)
                    }
                    1 => {
                        let len = rng.pick(&[0, 1, 15, u32::MAX]);
                        Descriptor::new(d.addr().0, len, d.flags(), 0)
                    }
                    2 => Descriptor::new(
                        d.addr().0,
                        d.len(),
                        d.flags() ^ VRING_DESC_F_WRITE as u16,
                        0,
                    ),
                    _ => {
                        descs.swap(i, j);
                        Descriptor::from(descs[i])
                    }
                };
                descs[i] = mutated.into();
            }
        } else {
            // Anything.
            for i in 0..1 + rng.below(10) {
                let addr = match rng.below(8) {
                    0 => u64::MAX - rng.below(4096),
                    1 => FUZZ_MEM - rng.below(8192),
                    2 => rng.next(),
                    3 if i == 0 => base,
                    _ => 0x10_0000 + rng.below(FUZZ_MEM - 0x20_0000),
                };
                let len = match rng.below(8) {
                    0 => 0,
                    1 => 1,
                    2 => 16,
                    3 => rng.pick(&[15, 17, 32, 48, 511, 512, 4095, 4096, 4097, 20, 21]),
                    4 => u32::MAX - rng.below(16) as u32,
                    5 => rng.next() as u32,
                    _ => rng.below(3 * 4096 + 2) as u32,
                };
                let mut flags = 0u16;
                if rng.below(2) == 0 {
                    flags |= VRING_DESC_F_WRITE as u16;
                }
                if rng.below(64) == 0 {
                    flags |= VRING_DESC_F_INDIRECT as u16;
                }
                descs.push(Descriptor::new(addr, len, flags, 0).into());
            }
        }
        // Reset the mock's available ring so each chain is the only one.
        m.write_obj(0u16, q.avail_addr().unchecked_add(2)).unwrap();
        let chain = q.build_desc_chain(&descs).unwrap();
        let g = geoms[rng.below(geoms.len() as u64) as usize].clone();
        let p = parse(&m, chain, &g);

        // Whatever came out must be safe to act on.
        let in_mem =
            |a: GuestAddress, l: u32| m.check_range(a, l as usize, Permissions::Write) && l > 0;
        assert!(p.writable.iter().all(|&(a, l)| in_mem(a, l)), "{p:?}");
        if let Some(s) = p.status {
            assert!(in_mem(s, 1), "{p:?}");
        }
        let room: u64 = p.writable.iter().map(|r| u64::from(r.1)).sum();
        match &p.action {
            Action::Immediate { data, status } => {
                assert!([OK, IOERR, UNSUPP].contains(status), "{p:?}");
                assert!(data.len() as u64 <= room, "{p:?}");
                outcomes[usize::from(*status)] += 1;
            }
            Action::Submit(req) => {
                assert!(p.status.is_some());
                let bs = u64::from(g.block_size);
                let in_dev =
                    |lba: u64, n: u64| n > 0 && lba.checked_add(n).unwrap() <= g.num_blocks;
                match req {
                    Request::Read { lba, nblocks } => {
                        assert!(in_dev(*lba, *nblocks), "{p:?}");
                        assert_eq!(nblocks * bs, room, "{p:?}");
                    }
                    Request::Write { lba, data } => {
                        assert!(!g.read_only);
                        assert!(data.len() <= MAX_REQUEST_BYTES);
                        assert_eq!(data.len() as u64 % bs, 0);
                        assert!(in_dev(*lba, data.len() as u64 / bs), "{p:?}");
                    }
                    Request::Flush => {}
                    Request::Discard { ranges } | Request::WriteZeroes { ranges, .. } => {
                        assert!(!g.read_only);
                        assert!(!ranges.is_empty() && ranges.len() <= MAX_SEGMENTS);
                        assert!(ranges.iter().all(|&(l, n)| in_dev(l, n)), "{p:?}");
                    }
                }
                outcomes[3] += 1;
            }
        }
    }
    // The generator reaches every kind of outcome.
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
}
