//! Hostile hosts against the native host's NVMe/TCP driver (connections as io_uring tasks
//! on a reactor, `native::nvmf_tcp`), over real loopback sockets. The protocol verdicts are
//! the sans-I/O target's (`nvmf/tests/bad_input.rs` checks them on `TargetConn`); here they
//! must reach the host through the reactor driver: the TermReq is sent before the close,
//! nothing panics the reactor, memory stays bounded, and a good host on the same reactor
//! keeps reading back exactly what it wrote.

use nvmf::nvme::Cqe;
use nvmf::pdu::{self, Fes, Pdu, R2T};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::Duration;

mod hostile;
use hostile::raw::{io_prefix, named_bad_inputs, read_cmd, wire, write_cmd};
use hostile::*;

#[test]
fn each_named_bad_input_ends_only_its_connection() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::new();
    for (i, (name, bad, hdgst, ddgst, fes, want_fei)) in named_bad_inputs().into_iter().enumerate()
    {
        let mut s = TcpStream::connect(bed.addr()).unwrap();
        let mut b = io_prefix(bed.cntlid, hdgst, ddgst);
        bad(&mut b);
        s.write_all(&b).unwrap();
        let pdus = RawRx::new(hdgst, ddgst).until_closed(&mut s, Duration::from_secs(10));
        // The Connect before the hostile PDU succeeded: it is the hostile PDU that ends it.
        assert!(
            pdus.iter().any(
                |p| matches!(p, Pdu::CapsuleResp(r) if Cqe::parse(&r.cqe).status.is_success())
            ),
            "{name}: {pdus:?}"
        );
        let (got_fes, got_fei) = term_of(&pdus).unwrap_or_else(|| panic!("{name}: no TermReq"));
        assert_eq!(got_fes, fes as u16, "{name}: FES");
        if let Some(f) = want_fei {
            assert_eq!(got_fei, f, "{name}: FEI");
        }
        bed.good_host_works(i as u64 + 10);
    }
    // A capsule before ICReq, on a fresh connection.
    let mut s = TcpStream::connect(bed.addr()).unwrap();
    let mut b = Vec::new();
    read_cmd(&mut b, &wire(false, false), 1, 0, 1);
    s.write_all(&b).unwrap();
    let pdus = RawRx::new(false, false).until_closed(&mut s, Duration::from_secs(10));
    assert_eq!(
        term_of(&pdus).map(|t| t.0),
        Some(Fes::PduSequenceError as u16)
    );
    bed.good_host_works(99);
    let all = bed.good.blocking().read(1, 0, 1024).unwrap();
    assert!(all == bed.image, "the good host's namespace changed");
}

/// A host that sends a valid session one byte at a time is served correctly, and does not
/// hold up the good host on the same reactor while it dribbles.
#[test]
fn slowloris_host_is_served_without_holding_the_reactor() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::new();
    let w = wire(true, true);
    let data = pattern(6 * BS, 77); // in-capsule (3072 < 4096)
    let big = pattern(24 * BS, 78); // R2T, two H2CData (MAXH2CDATA 8192)
    let mut b = io_prefix(bed.cntlid, true, true);
    write_cmd(&mut b, &w, 5, 100, 6, Some(&data));
    read_cmd(&mut b, &w, 6, 100, 6);
    let mut s = TcpStream::connect(bed.addr()).unwrap();
    s.set_nodelay(true).unwrap();
    let mut rx = RawRx::new(true, true);
    for (i, byte) in b.iter().enumerate() {
        s.write_all(std::slice::from_ref(byte)).unwrap();
        if i % 64 == 0 {
            // The good host, between the dribbles.
            bed.good_host_works(1000 + i as u64);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut read_back = vec![0xEEu8; data.len()];
    let mut resps = Vec::new();
    while resps.len() < 3 {
        match rx.next(&mut s, Duration::from_secs(10)) {
            Some(Pdu::IcResp(_)) => {}
            Some(Pdu::CapsuleResp(r)) => resps.push(Cqe::parse(&r.cqe)),
            Some(Pdu::C2HData(d)) => {
                assert_eq!(d.cccid, 6);
                let o = d.datao as usize;
                read_back[o..o + d.data.len()].copy_from_slice(&d.data);
                if d.success {
                    resps.push(Cqe::parse(&[0u8; 16]));
                }
            }
            Some(p) => panic!("unexpected {p:?}"),
            None => panic!("ended: {:?}", rx.ended),
        }
    }
    assert!(resps.iter().all(|c| c.status.is_success()), "{resps:?}");
    assert!(read_back == data, "slowloris read back other bytes");
    // Then a write taking the R2T path, dribbled too, and checked through the good host.
    let mut b = Vec::new();
    write_cmd(&mut b, &w, 7, 200, 24, None);
    for byte in &b {
        s.write_all(std::slice::from_ref(byte)).unwrap();
    }
    let mut sent = 0usize;
    while sent < big.len() {
        let r = next_r2t(&mut rx, &mut s);
        let (o, l) = (r.r2to as usize, r.r2tl as usize);
        let mut at = o;
        while at < o + l {
            let n = (o + l - at).min(8192);
            let mut h = Vec::new();
            let last = at + n == o + l;
            pdu::encode_h2c_data(&mut h, 7, r.ttag, at as u32, &big[at..at + n], last, &w);
            for chunk in h.chunks(97) {
                s.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            at += n;
        }
        sent = o + l;
    }
    match rx.next(&mut s, Duration::from_secs(10)) {
        Some(Pdu::CapsuleResp(r)) => assert!(Cqe::parse(&r.cqe).status.is_success()),
        other => panic!("expected the write's response, got {other:?}"),
    }
    assert!(bed.good.blocking().read(1, 200, 24).unwrap() == big);
    assert!(bed.good.blocking().read(1, 100, 6).unwrap() == data);
}

fn next_r2t(rx: &mut RawRx, s: &mut TcpStream) -> R2T {
    match rx.next(s, Duration::from_secs(10)) {
        Some(Pdu::R2T(r)) => r,
        Some(p) => panic!("expected an R2T, got {p:?}"),
        None => panic!("ended: {:?}", rx.ended),
    }
}

/// A host that sends read after read and never reads its completions goes beyond its
/// queue depth (it has seen no completion): the target ends that connection (queue
/// overflow) or, if its output backs up first, stops taking its input (TCP backpressure
/// holds the host). Either way it never takes all the commands, memory stays bounded, and
/// the good host keeps working.
#[test]
fn host_that_does_not_read_and_overruns_its_queue_is_stopped() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::new();
    const WAVE: u16 = 16;
    const WAVES: u16 = 200; // 3200 reads of 16 KiB: 50 MiB of responses
    let w = wire(false, false);
    let mut s = TcpStream::connect(bed.addr()).unwrap();
    s.write_all(&io_prefix(bed.cntlid, false, false)).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Settle the allocator with a first good-host round trip before measuring.
    bed.good_host_works(1);
    let before = rss();
    let mut out = Vec::new();
    for cid in 0..WAVE * WAVES {
        read_cmd(&mut out, &w, 100 + cid, u64::from(cid % 16) * 32, 32);
    }
    let per_wave = out.len() / usize::from(WAVES);
    let mut written = 0usize;
    let mut stopped = false;
    while written < out.len() && !stopped {
        let end = (written + per_wave).min(out.len());
        while written < end && !stopped {
            match s.write(&out[written..end]) {
                Ok(n) => written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock
                            | ErrorKind::TimedOut
                            | ErrorKind::ConnectionReset
                            | ErrorKind::BrokenPipe
                    ) =>
                {
                    stopped = true
                }
                Err(e) => panic!("hostile host's write failed: {e}"),
            }
        }
        // Pauses between waves let the target complete each before the next arrives.
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        stopped,
        "the target took all {} commands without the host reading",
        out.len() / 72
    );
    let grown = rss().saturating_sub(before);
    bed.good_host_works(2);
    assert!(
        grown < 24 << 20,
        "memory grew by {} MiB for a host that does not read",
        grown >> 20
    );
}

/// A host that fills its queue with large reads and then stops reading is held by TCP,
/// part way through the target's gathered sends, without holding the reactor: the good
/// host keeps working meanwhile, and when the host reads again every byte arrives intact
/// and the connection goes on.
#[test]
fn host_that_stops_reading_at_full_queue_depth_resumes_intact() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::new();
    const NLB: u32 = 256; // 128 KiB reads: 32 of them fill far more than the socket holds
    let lba_of = |cid: u16| u64::from(cid % 2) * u64::from(NLB);
    let w = wire(false, false);
    let mut s = TcpStream::connect(bed.addr()).unwrap();
    let mut out = io_prefix(bed.cntlid, false, false);
    for cid in 100..132u16 {
        read_cmd(&mut out, &w, cid, lba_of(cid), NLB);
    }
    s.write_all(&out).unwrap();
    // The host reads nothing for a while; the good host must not notice.
    for i in 0..20 {
        bed.good_host_works(100 + i);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rx = RawRx::new(false, false);
    let read_all = |rx: &mut RawRx, s: &mut TcpStream, want: usize| {
        let mut done = 0usize;
        let mut bytes = 0usize;
        while done < want {
            match rx.next(s, Duration::from_secs(10)) {
                Some(Pdu::IcResp(_)) => {}
                Some(Pdu::CapsuleResp(r)) => {
                    let c = Cqe::parse(&r.cqe);
                    assert!(c.status.is_success(), "{c:?}");
                    done += 1;
                }
                Some(Pdu::C2HData(d)) => {
                    let off = lba_of(d.cccid) as usize * BS + d.datao as usize;
                    assert!(
                        d.data[..] == bed.image[off..off + d.data.len()],
                        "cid {} offset {}: other bytes",
                        d.cccid,
                        d.datao
                    );
                    bytes += d.data.len();
                    done += usize::from(d.success);
                }
                Some(p) => panic!("unexpected {p:?}"),
                None => panic!("ended after {done}/{want}: {:?}", rx.ended),
            }
        }
        bytes
    };
    // The Connect, then the 32 reads.
    assert_eq!(read_all(&mut rx, &mut s, 33), 32 * NLB as usize * BS);
    // The connection goes on.
    let mut more = Vec::new();
    read_cmd(&mut more, &w, 200, lba_of(200), 8);
    s.write_all(&more).unwrap();
    assert_eq!(read_all(&mut rx, &mut s, 1), 8 * BS);
}

/// Random and mutated streams after a valid prefix, each on its own connection: the reactor
/// survives every one (the good host checks after each batch) and each connection either
/// ends or is left idle, never with an invalid PDU from the target.
#[test]
fn mutated_streams_never_take_the_reactor_down() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let w = wire(false, false);
    for case in 0..200u64 {
        let mut b = io_prefix(bed.cntlid, false, false);
        let body_at = b.len();
        // A few valid PDUs, then mutations of them.
        for k in 0..(1 + rand() % 4) as u16 {
            match rand() % 3 {
                0 => read_cmd(&mut b, &w, 10 + k, rand() % 1024, 1 + (rand() % 16) as u32),
                1 => write_cmd(&mut b, &w, 10 + k, rand() % 500, 2, Some(&[7u8; 1024])),
                _ => {
                    write_cmd(&mut b, &w, 10 + k, rand() % 500, 4, None);
                    pdu::encode_h2c_data(&mut b, 10 + k, 1, 0, &[9u8; 2048], true, &w);
                }
            }
        }
        let body = b.len() - body_at;
        for _ in 0..(1 + rand() % 6) {
            let i = body_at + (rand() as usize % body);
            b[i] = match rand() % 3 {
                0 => b[i] ^ (1 << (rand() % 8)),
                1 => 0xFF,
                _ => rand() as u8,
            };
        }
        if rand() % 4 == 0 {
            b.truncate(body_at + rand() as usize % body);
        }
        let mut s = TcpStream::connect(bed.addr()).unwrap();
        s.write_all(&b).unwrap();
        let mut rx = RawRx::new(false, false);
        // Read what it says until it closes or goes quiet; decoding checks every PDU.
        while rx.next(&mut s, Duration::from_millis(50)).is_some() {}
        drop(s);
        if case % 25 == 24 {
            bed.good_host_works(case);
        }
    }
    bed.good_host_works(12345);
}
