//! Our initiator (`Controller`) against the Linux kernel NVMe/TCP target (nvmet-tcp,
//! configured through configfs in a QEMU guest, null_blk memory-backed namespaces) reached
//! through QEMU's host forwarding: discovery, connect, identify, several I/O queues, writes
//! and reads from one block up to the target's transfer limit (its MAXH2CDATA: nvmet says
//! MDTS 0 but fails longer commands), byte-exact against a model of the namespace, queue
//! depth > 1, flush, write zeroes, header/data digests in every combination, keep alive,
//! shutdown and a fresh association (the data is still there); and a reconnect after nvmet
//! stops serving the subsystems and comes back, with I/O issued during the outage.
//!
//! Two guest boots (boots are the expensive part under TCG).

mod common;
use common::{BoxFut, join_all, pattern};
use guest_harness::HOST_ADDR_FROM_GUEST;
use guest_harness::{Guest, NVMET_GUEST_PORT, free_port, guest_hostnqn};
use nvmf::driver::block_on;
use nvmf::driver::{ConnectOptions, Controller, Error, discover};
use nvmf::host::ReconnectOpts;
use nvmf::nvme::cmd::{Sqe, io};
use nvmf::nvme::log::subtype;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const NQN1: &str = "nqn.2024-01.io.spdk-replication:nvmet-512";
const NQN2: &str = "nqn.2024-01.io.spdk-replication:nvmet-4k";
const NS1_MIB: u64 = 64;
const NS2_MIB: u64 = 32;
const MIB: usize = 1 << 20;

fn skip(test: &str) -> bool {
    match guest_harness::available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("skipped {test}: {why}");
            true
        }
    }
}

/// What the namespace must hold: every write we made, zeroes elsewhere (null_blk starts
/// zeroed), over the first `len` bytes.
struct Model {
    bs: usize,
    data: Vec<u8>,
}

impl Model {
    fn new(bs: usize, len: usize) -> Self {
        Self {
            bs,
            data: vec![0; len],
        }
    }

    fn write(&mut self, c: &Controller, nsid: u32, lba: u64, data: Vec<u8>) {
        let off = lba as usize * self.bs;
        let n = data.len();
        c.blocking()
            .write(nsid, lba, data.clone())
            .unwrap_or_else(|e| panic!("write of {n} bytes at LBA {lba}: {e}"));
        self.data[off..off + n].copy_from_slice(&data);
    }

    fn read_check(&self, c: &Controller, nsid: u32, lba: u64, nblocks: u32, what: &str) {
        let off = lba as usize * self.bs;
        let n = nblocks as usize * self.bs;
        let got = c
            .blocking()
            .read(nsid, lba, nblocks)
            .unwrap_or_else(|e| panic!("{what}: read of {n} bytes at LBA {lba}: {e}"));
        assert_eq!(got.len(), n, "{what}: read length");
        if let Some(i) = (0..n).find(|&i| got[i] != self.data[off + i]) {
            panic!("{what}: {n}-byte read at LBA {lba} differs at byte {i}");
        }
    }

    /// Reads the whole modelled range back in 1 MiB commands.
    fn verify_all(&self, c: &Controller, nsid: u32, what: &str) {
        let per = (MIB / self.bs) as u32;
        let blocks = (self.data.len() / self.bs) as u64;
        let mut lba = 0;
        while lba < blocks {
            let n = per.min((blocks - lba) as u32);
            self.read_check(c, nsid, lba, n, what);
            lba += u64::from(n);
        }
    }
}

fn opts(hdgst: bool, ddgst: bool, io_queues: u16) -> ConnectOptions {
    ConnectOptions {
        hdgst,
        ddgst,
        io_queues,
        queue_size: 64,
        max_transfer: 8 * MIB,
        connect_timeout: Duration::from_secs(20),
        ..ConnectOptions::default()
    }
}

fn connect(addr: SocketAddr, nqn: &str, o: ConnectOptions) -> Controller {
    let t = Instant::now();
    let c = Controller::connect(addr, nqn, &guest_hostnqn(), o)
        .unwrap_or_else(|e| panic!("connect to {nqn}: {e}"));
    eprintln!("connected to {nqn} in {:?}", t.elapsed());
    c
}

/// Writes of every interesting size (each at its own LBA, then read back), returns the LBA
/// after the last one.
fn sizes(c: &Controller, nsid: u32, m: &mut Model, seed: u64, what: &str) -> u64 {
    let info = c.info();
    let bs = m.bs;
    let icd_blocks = info.in_capsule_data / bs;
    let largest = info.max_transfer / bs;
    let mut list = vec![1, 2, 8, 4096 / bs, icd_blocks, icd_blocks + 1];
    list.extend([128 * 1024 / bs, 128 * 1024 / bs + 1, MIB / bs, largest]);
    let mut lba = 0u64;
    for (i, &blocks) in list.iter().enumerate() {
        let blocks = blocks.max(1);
        let data = pattern(blocks * bs, seed + i as u64);
        m.write(c, nsid, lba, data);
        m.read_check(c, nsid, lba, blocks as u32, what);
        lba += blocks as u64 + 1;
    }
    lba
}

/// 64 writes of 4 KiB in flight at once over every I/O queue, then 64 reads at once.
fn queue_depth(c: &Controller, nsid: u32, m: &mut Model, first_lba: u64, seed: u64) {
    let per = (4096 / m.bs) as u64;
    let writes: Vec<(u64, Vec<u8>)> = (0..64u64)
        .map(|i| {
            let lba = first_lba + i * per * 3;
            (lba, pattern(4096, seed + i))
        })
        .collect();
    let futs: Vec<BoxFut<'_, Result<(), Error>>> = writes
        .iter()
        .map(|(lba, d)| Box::pin(c.write(nsid, *lba, d.clone())) as BoxFut<'_, _>)
        .collect();
    for (i, r) in join_all(futs).into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("queued write {i}: {e}"));
    }
    for (lba, d) in &writes {
        let off = *lba as usize * m.bs;
        m.data[off..off + d.len()].copy_from_slice(d);
    }
    let futs: Vec<BoxFut<'_, Result<Vec<u8>, Error>>> = writes
        .iter()
        .map(|(lba, _)| Box::pin(c.read(nsid, *lba, per as u32)) as BoxFut<'_, _>)
        .collect();
    for (i, r) in join_all(futs).into_iter().enumerate() {
        let got = r.unwrap_or_else(|e| panic!("queued read {i}: {e}"));
        assert!(got == writes[i].1, "queued read {i} differs");
    }
}

/// Boots the guest target: NQN1 (64 MiB, 512-byte blocks) and NQN2 (32 MiB, 4 KiB blocks)
/// on one nvmet-tcp port, forwarded from a free host port. With `ctl`, the guest also polls
/// that host control server for `down` (unlink both subsystems from the port: nvmet ends
/// their controllers and stops listening) and `up` (link them again).
fn spawn_nvmet(ctl: Option<&Control>) -> (Guest, SocketAddr) {
    let port = free_port().unwrap();
    let mut script = format!(
        "nullb_create {NS1_MIB} 512 || exit 90\nD1=$NULLB\n\
         nullb_create {NS2_MIB} 4096 || exit 90\nD2=$NULLB\n\
         nvmet_target {NQN1} $D1 0.0.0.0 {NVMET_GUEST_PORT} 1 || exit 91\n\
         nvmet_target {NQN2} $D2 0.0.0.0 {NVMET_GUEST_PORT} 1 || exit 92\n"
    );
    if let Some(c) = ctl {
        script.push_str(&format!(
            "CP={cp}\nC=/sys/kernel/config/nvmet\n\
             while :; do\n\
               c=$(echo next | nc {HOST_ADDR_FROM_GUEST} $CP)\n\
               case \"$c\" in\n\
                 down) rm $C/ports/1/subsystems/{NQN1} $C/ports/1/subsystems/{NQN2}\n\
                       echo done-down | nc {HOST_ADDR_FROM_GUEST} $CP >/dev/null ;;\n\
                 up) ln -s $C/subsystems/{NQN1} $C/ports/1/subsystems/{NQN1}\n\
                     ln -s $C/subsystems/{NQN2} $C/ports/1/subsystems/{NQN2}\n\
                     echo done-up | nc {HOST_ADDR_FROM_GUEST} $CP >/dev/null ;;\n\
               esac\n\
               sleep 0.2\n\
             done &\n",
            cp = c.port
        ));
    }
    script.push_str("echo TARGETS_READY=1\nidle\n");
    let guest = Guest::builder()
        .script(script)
        .memory_mib(384)
        .hostfwd(port, NVMET_GUEST_PORT)
        .timeout(Duration::from_secs(240))
        .spawn()
        .unwrap();
    guest
        .wait_for_line("TARGETS_READY=1", Duration::from_secs(150))
        .unwrap();
    (guest, format!("127.0.0.1:{port}").parse().unwrap())
}

/// The command waiting for the guest, and the acknowledgements received.
type Pending = (Option<String>, Vec<String>);

/// A line server the guest polls with busybox `nc` (its static `wget` crashes resolving):
/// `next` is answered with the pending command (if any), `done-<command>` acknowledges it.
struct Control {
    port: u16,
    state: Arc<(Mutex<Pending>, Condvar)>,
}

impl Control {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let state: Arc<(Mutex<Pending>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.contains(&b'\n') {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req);
                let line = req.trim().to_string();
                let body = {
                    let mut g = st.0.lock().unwrap();
                    let body = if line == "next" {
                        g.0.take().unwrap_or_default()
                    } else {
                        g.1.push(line);
                        String::new()
                    };
                    st.1.notify_all();
                    body
                };
                let _ = writeln!(s, "{body}");
            }
        });
        Self { port, state }
    }

    /// Hands `cmd` to the guest and waits until it says it is done.
    fn run(&self, cmd: &str, guest: &Guest) {
        let done = format!("done-{cmd}");
        let (m, cv) = &*self.state;
        let mut g = m.lock().unwrap();
        g.0 = Some(cmd.to_string());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !g.1.contains(&done) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the guest did not run {cmd:?}\n{}\n{}",
                guest.output(),
                guest.console()
            );
            g = cv.wait_timeout(g, left).unwrap().0;
        }
        g.1.retain(|d| *d != done);
    }
}

#[test]
fn our_initiator_reconnects_when_nvmet_comes_back() {
    if skip("our_initiator_reconnects_when_nvmet_comes_back") {
        return;
    }
    let ctl = Control::start();
    let (guest, addr) = spawn_nvmet(Some(&ctl));
    let o = ConnectOptions {
        kato: Duration::from_secs(3),
        reconnect: ReconnectOpts {
            ctrlr_loss_timeout: Some(Duration::from_secs(60)),
            reconnect_delay: Duration::from_millis(500),
            fast_io_fail_timeout: None,
        },
        ..opts(false, false, 2)
    };
    let c = connect(addr, NQN1, o);
    let mut m = Model::new(512, 2 * MIB);
    m.write(&c, 1, 0, pattern(256 * 1024, 1));
    let t = Instant::now();
    ctl.run("down", &guest);
    // nvmet ends the controller: we notice (socket closed or keep alive) and reconnect.
    while c.is_connected() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never noticed the loss"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("loss noticed after {:?}: {:?}", t.elapsed(), c.link_state());
    // I/O issued while the target is away waits, and completes once it is back.
    let data = pattern(128 * 1024, 2);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| c.blocking().write(1, 1024, data.clone()));
        std::thread::sleep(Duration::from_secs(2));
        assert!(!h.is_finished(), "write finished while the target was down");
        ctl.run("up", &guest);
        h.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("write across the outage: {e}\n{}", guest.console()));
    });
    m.data[1024 * 512..1024 * 512 + data.len()].copy_from_slice(&data);
    assert!(c.reconnects() >= 1);
    assert!(c.is_connected());
    assert_eq!(c.info().io_queues, 2);
    m.verify_all(&c, 1, "after the reconnect");
    c.disconnect();
    drop(guest);
}

#[test]
fn our_initiator_against_linux_nvmet() {
    if skip("our_initiator_against_linux_nvmet") {
        return;
    }
    let (guest, addr) = spawn_nvmet(None);
    let t0 = Instant::now();

    // Discovery: both subsystems, on the guest-side listener (nvmet also lists itself, as
    // the current discovery subsystem).
    let (_, entries) = discover(addr, &guest_hostnqn(), opts(false, false, 1))
        .unwrap_or_else(|e| panic!("discover: {e}\n{}", guest.console()));
    let mut nqns: Vec<&str> = entries
        .iter()
        .filter(|e| e.subtype == subtype::NVME)
        .map(|e| e.subnqn.as_str())
        .collect();
    nqns.sort_unstable();
    assert_eq!(nqns, [NQN2, NQN1], "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|e| e.trsvcid == NVMET_GUEST_PORT.to_string())
    );

    // 512-byte namespace, no digests, four I/O queues.
    let c = connect(addr, NQN1, opts(false, false, 4));
    let info = c.info();
    eprintln!(
        "nvmet: model {:?} maxh2cdata {} in-capsule {} mdts {} max_transfer {} queues {}x{}",
        info.data.model,
        info.maxh2cdata,
        info.in_capsule_data,
        info.data.mdts,
        info.max_transfer,
        info.io_queues,
        info.queue_size
    );
    assert!(info.data.model.starts_with("Linux"), "{info:?}");
    assert_eq!(info.data.subnqn, NQN1);
    assert_eq!(info.data.cntlid, info.cntlid);
    assert_eq!(info.io_queues, 4);
    assert_eq!(info.queue_size, 64);
    assert!(info.maxh2cdata >= 4096 && info.maxh2cdata.is_multiple_of(4));
    assert!(info.in_capsule_data >= 4096, "{info:?}");
    // nvmet says MDTS 0 (no limit) but fails any command longer than its MAXH2CDATA:
    // that is the transfer limit our host must report (so callers split larger I/O).
    assert_eq!(info.data.mdts, 0, "{info:?}");
    assert_eq!(info.max_transfer, info.maxh2cdata, "{info:?}");
    let too_big = (info.max_transfer / 512 + 16) as u32;
    assert!(matches!(
        c.blocking().write(1, 0, vec![0u8; too_big as usize * 512]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        c.blocking().read(1, 0, too_big),
        Err(Error::InvalidArgument(_))
    ));
    // What nvmet does with one anyway (a raw command): an NVMe status, queue still fine.
    let mut sqe = Sqe::new(io::WRITE);
    sqe.nsid = 1;
    sqe.cdw12 = too_big - 1;
    let r = block_on(c.execute(false, sqe, vec![0u8; too_big as usize * 512].into(), 0));
    assert!(matches!(r, Err(Error::Status(_))), "{r:?}");
    assert_eq!(info.namespaces.len(), 1, "{info:?}");
    let ns = &info.namespaces[0];
    assert_eq!(
        (ns.nsid, ns.block_size, ns.num_blocks),
        (1, 512, NS1_MIB * 2048)
    );
    let mut m1 = Model::new(512, 16 * MIB);
    let next = sizes(&c, 1, &mut m1, 100, "nvmet-512 plain");
    queue_depth(&c, 1, &mut m1, next, 1000);
    // Write zeroes over part of a pattern, and flush.
    let wz = (14 * MIB / 512) as u64;
    m1.write(&c, 1, wz, pattern(64 * 1024, 7));
    c.blocking().write_zeroes(1, wz + 16, 64).unwrap();
    m1.data[(wz as usize + 16) * 512..(wz as usize + 80) * 512].fill(0);
    m1.read_check(&c, 1, wz, 128, "write zeroes");
    c.blocking().flush(1).unwrap();
    // Reads beyond the end fail with an NVMe status, and the queue keeps working.
    assert!(c.blocking().read(1, ns.num_blocks - 1, 2).is_err());
    m1.read_check(&c, 1, 0, 8, "after a failed read");
    m1.verify_all(&c, 1, "nvmet-512 whole range");
    c.disconnect();

    // 4 KiB namespace, header + data digests, two I/O queues.
    let c = connect(addr, NQN2, opts(true, true, 2));
    let info = c.info();
    assert_eq!(info.io_queues, 2);
    let ns = &info.namespaces[0];
    assert_eq!((ns.block_size, ns.num_blocks), (4096, NS2_MIB * 256));
    let mut m2 = Model::new(4096, 16 * MIB);
    let next = sizes(&c, 1, &mut m2, 200, "nvmet-4k digests");
    queue_depth(&c, 1, &mut m2, next, 2000);
    c.blocking().flush(1).unwrap();
    m2.verify_all(&c, 1, "nvmet-4k whole range");
    c.disconnect();

    // Back on the first subsystem with one digest at a time: what the first association
    // wrote is on the target, and more I/O of every size works.
    for (hdgst, ddgst, seed) in [(true, false, 300), (false, true, 400)] {
        let what = format!("nvmet-512 hdgst {hdgst} ddgst {ddgst}");
        let c = connect(addr, NQN1, opts(hdgst, ddgst, 1));
        m1.verify_all(&c, 1, &what);
        let next = sizes(&c, 1, &mut m1, seed, &what);
        assert!(next < 14 * MIB as u64 / 512);
        c.disconnect();
    }
    // The last association's writes, through a fresh one with a 3 s keep alive timeout,
    // idle for more than twice that: our keep alives hold nvmet's timer off.
    let c = connect(
        addr,
        NQN1,
        ConnectOptions {
            kato: Duration::from_secs(3),
            ..opts(false, false, 2)
        },
    );
    m1.verify_all(&c, 1, "nvmet-512 final");
    std::thread::sleep(Duration::from_secs(7));
    m1.read_check(&c, 1, 0, 256, "after idling past KATO");
    assert_eq!(c.reconnects(), 0, "the association was lost while idle");
    assert!(c.is_connected());
    c.disconnect();
    eprintln!("I/O against nvmet took {:?}", t0.elapsed());
    let console = guest.console();
    assert!(
        !console.contains("keep-alive") && !console.contains("ctrl fatal"),
        "the kernel target complained:\n{console}"
    );
    drop(guest);
}
