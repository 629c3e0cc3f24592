//! The Linux kernel NVMe/TCP initiator (Debian's cloud kernel, driven by Debian's nvme-cli in
//! a QEMU guest) against our `TargetServer` on the host, reached at 10.0.2.2 through QEMU user
//! networking: discovery (with a subsystem this host may not see), connect, id-ctrl, list,
//! O_DIRECT writes larger than the in-capsule size (R2T + several H2CData) and reads split
//! over several C2HData PDUs, flush, discard, header + data digests with two I/O queues,
//! controller resets (nvme reset, sysfs) with I/O afterwards, `connect-all` from our
//! discovery log (SQ flow control disabled: C2HData SUCCESS) with parallel I/O, the target
//! restarting under a connected host, the host frozen past its keep alive timeout, and a host
//! that powers off still connected.
//!
//! Every byte is checked twice: md5 in the guest against what the host wrote (reads), and
//! the RAM namespaces in the host against exactly what the guest wrote (writes), with the
//! rest of each namespace still holding its pre-filled pattern.
//!
//! One guest boot runs everything (boots are the expensive part under TCG).

mod common;
use common::md5::md5_hex;
use common::pattern;
use guest_harness::{Guest, HOST_ADDR_FROM_GUEST};
use nvmf::driver::TargetServer;
use nvmf::target::{
    Backend, IoDone, IoOp, NamespaceConfig, RamBackend, SubsystemConfig, Target, TargetConfig,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const NQN: &str = "nqn.2024-01.io.spdk-replication:linux-initiator";
/// A subsystem that admits another host only: hidden from our guest's discovery log, and
/// its Connect is refused.
const RESTRICTED_NQN: &str = "nqn.2024-01.io.spdk-replication:restricted";
const SERIAL: &str = "SREPL-LINUX-0001";
const MODEL: &str = "spdk-replication linux-initiator";
const MIB: usize = 1 << 20;
/// Both namespaces are 8 MiB: NS1 with 512-byte blocks, NS2 with 4 KiB blocks.
const NS_BYTES: usize = 8 * MIB;

fn skip(test: &str) -> bool {
    match guest_harness::available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("skipped {test}: {why}");
            true
        }
    }
}

/// A RAM namespace that also counts the flushes and deallocations it served.
struct Counted {
    ram: RamBackend,
    flushes: AtomicU64,
    deallocs: AtomicU64,
}

impl Counted {
    fn new(block_size: u32) -> Self {
        Self {
            ram: RamBackend::new(block_size, (NS_BYTES / block_size as usize) as u64)
                .with_write_cache(true),
            flushes: AtomicU64::new(0),
            deallocs: AtomicU64::new(0),
        }
    }

    fn run(&self, op: IoOp) -> Vec<u8> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.ram.submit(
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap().unwrap()
    }

    fn write_all(&self, data: &[u8]) {
        self.run(IoOp::Write {
            lba: 0,
            data: data.to_vec(),
        });
    }

    fn read_all(&self) -> Vec<u8> {
        let bs = self.ram.block_size();
        self.run(IoOp::Read {
            lba: 0,
            nblocks: (NS_BYTES / bs as usize) as u32,
        })
    }
}

impl Backend for Counted {
    fn block_size(&self) -> u32 {
        self.ram.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.ram.num_blocks()
    }
    fn volatile_write_cache(&self) -> bool {
        true
    }
    fn submit(&self, op: IoOp, done: IoDone) {
        match &op {
            IoOp::Flush => self.flushes.fetch_add(1, Ordering::Relaxed),
            IoOp::Deallocate { .. } => self.deallocs.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        self.ram.submit(op, done);
    }
}

/// What busybox `seq -w FIRST LAST | head -c LEN` prints, for 6-digit FIRST..LAST.
fn seq_bytes(first: u32, len: usize) -> Vec<u8> {
    let mut s = Vec::with_capacity(len + 8);
    let mut i = first;
    while s.len() < len {
        s.extend_from_slice(format!("{i:06}\n").as_bytes());
        i += 1;
    }
    s.truncate(len);
    s
}

/// One O_DIRECT write by the guest: `len` bytes of a `seq` pattern at byte `off` of a
/// namespace (one dd block, so one NVMe command of `len` bytes when `len` ≤ MDTS).
struct GuestWrite {
    tag: &'static str,
    ns: u32,
    off: usize,
    len: usize,
    first: u32,
    fsync: bool,
}

impl GuestWrite {
    fn expected(&self) -> Vec<u8> {
        seq_bytes(self.first, self.len)
    }

    /// Script lines: generate, write, read back, print `RB_<tag>=<md5 of what was read>`.
    fn script(&self) -> String {
        assert_eq!(self.off % self.len, 0, "{}: dd seeks in blocks", self.tag);
        let last = self.first + (self.len / 7) as u32 + 2;
        assert!(last <= 999_999);
        let conv = if self.fsync { " conv=fsync" } else { "" };
        format!(
            "seq -w {first} {last} | head -c {len} > /tmp/{tag}\n\
             dd if=/tmp/{tag} of=$NS{ns} bs={len} count=1 seek={seek} oflag=direct{conv} 2>/tmp/dd.err \
             || {{ cat /tmp/dd.err; echo FAILED=write-{tag}; exit 1; }}\n\
             echo RB_{tag}=$(rd $NS{ns} {len} {seek} 1)\n\
             echo GEN_{tag}=$(md5sum < /tmp/{tag} | cut -d' ' -f1)\n",
            first = self.first,
            len = self.len,
            tag = self.tag,
            ns = self.ns,
            seek = self.off / self.len,
        )
    }
}

/// One O_DIRECT read by the guest: `count` dd blocks of `bs` bytes from block `skip`;
/// prints `<tag>=<md5>`.
struct GuestRead {
    tag: &'static str,
    ns: u32,
    bs: usize,
    skip: usize,
    count: usize,
}

impl GuestRead {
    fn script(&self) -> String {
        format!(
            "echo {tag}=$(rd $NS{ns} {bs} {skip} {count})\n",
            tag = self.tag,
            ns = self.ns,
            bs = self.bs,
            skip = self.skip,
            count = self.count
        )
    }
    fn range(&self) -> std::ops::Range<usize> {
        self.skip * self.bs..(self.skip + self.count) * self.bs
    }
}

fn w(tag: &'static str, ns: u32, off: usize, len: usize, first: u32) -> GuestWrite {
    GuestWrite {
        tag,
        ns,
        off,
        len,
        first,
        fsync: false,
    }
}

fn wf(tag: &'static str, ns: u32, off: usize, len: usize, first: u32) -> GuestWrite {
    GuestWrite {
        fsync: true,
        ..w(tag, ns, off, len, first)
    }
}

fn r(tag: &'static str, ns: u32, bs: usize, skip: usize, count: usize) -> GuestRead {
    GuestRead {
        tag,
        ns,
        bs,
        skip,
        count,
    }
}

/// Writes issued all at once (queue depth > 1 on the kernel's queues), then their
/// read-backs all at once.
fn parallel_writes(ws: &[GuestWrite]) -> String {
    let mut s = String::new();
    for x in ws {
        let last = x.first + (x.len / 7) as u32 + 2;
        s.push_str(&format!(
            "seq -w {} {last} | head -c {} > /tmp/{}\n\
             echo GEN_{}=$(md5sum < /tmp/{} | cut -d' ' -f1)\n",
            x.first, x.len, x.tag, x.tag, x.tag
        ));
    }
    for x in ws {
        assert_eq!(x.off % x.len, 0);
        s.push_str(&format!(
            "( dd if=/tmp/{t} of=$NS{ns} bs={len} count=1 seek={seek} oflag=direct 2>/dev/null \
             || echo FAILED=write-{t} ) &\n",
            t = x.tag,
            ns = x.ns,
            len = x.len,
            seek = x.off / x.len
        ));
    }
    s.push_str("wait\n");
    for x in ws {
        s.push_str(&format!(
            "( echo RB_{t}=$(rd $NS{ns} {len} {seek} 1) ) &\n",
            t = x.tag,
            ns = x.ns,
            len = x.len,
            seek = x.off / x.len
        ));
    }
    s.push_str("wait\n");
    s
}

fn parallel_reads(rs: &[GuestRead]) -> String {
    let mut s = String::new();
    for x in rs {
        s.push_str(&format!(
            "( echo {}=$(rd $NS{} {} {} {}) ) &\n",
            x.tag, x.ns, x.bs, x.skip, x.count
        ));
    }
    s.push_str("wait\n");
    s
}

/// Serves `target` again on 127.0.0.1:`port` (the old listener's port may linger briefly),
/// advertising the guest-reachable address only.
fn restart(target: &Arc<Target>, port: u16) -> TargetServer {
    let start = std::time::Instant::now();
    let srv = loop {
        match TargetServer::start(target.clone(), ("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("rebind port {port}: {e}"),
        }
    };
    target.remove_listener(srv.local_addr());
    srv
}

const PRELUDE: &str = r#"
A=10.0.2.2
H="--hostnqn=$HARNESS_HOSTNQN --hostid=$HARNESS_HOSTID"
# rd DEV BS SKIP COUNT: md5 of an O_DIRECT read
rd() { dd if="$1" bs="$2" skip="$3" count="$4" iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1; }
# find_devs: NS1, NS2 (block devices) and CTRL (/dev/nvmeX) of $NQN, waiting up to 20 s
find_devs() {
    _n=200
    while :; do
        NS1= NS2= CTRL=
        for _s in /sys/class/nvme-subsystem/* /sys/class/nvme/*; do
            [ "$(cat "$_s/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
            case "${_s%/*}" in */nvme) CTRL=/dev/${_s##*/} ;; esac
            for _b in "$_s"/nvme*n1; do [ -b "/dev/${_b##*/}" ] && NS1=/dev/${_b##*/}; done
            for _b in "$_s"/nvme*n2; do [ -b "/dev/${_b##*/}" ] && NS2=/dev/${_b##*/}; done
        done
        [ -n "$NS1" ] && [ -n "$NS2" ] && [ -n "$CTRL" ] && return 0
        [ $_n -le 0 ] && { echo "find_devs: no namespaces for $NQN" >&2; return 1; }
        sleep 0.1
        _n=$((_n - 1))
    done
}
# wait_live: the controller is live again (after a reset), up to 30 s
wait_live() {
    _n=300
    until [ "$(cat /sys/class/nvme/${CTRL#/dev/}/state 2>/dev/null)" = live ]; do
        [ $_n -le 0 ] && return 1
        sleep 0.1
        _n=$((_n - 1))
    done
}
id_ctrl() {
    nvme id-ctrl "$CTRL" > /tmp/idc || return 1
    awk -F' *: ' -v p="$1" '/^(mn|sn|subnqn|cntlid|mdts|maxcmd|ioccsz|nn|vwc|oncs|kas) /{
        v=$2; gsub(/ +$/,"",v); sub(/ +$/,"",$1); print p "_" toupper($1) "=" v }' /tmp/idc
}
"#;

#[test]
fn linux_initiator_against_our_target() {
    if skip("linux_initiator_against_our_target") {
        return;
    }
    let target = Target::new(TargetConfig::default());
    let ns1 = Arc::new(Counted::new(512));
    let ns2 = Arc::new(Counted::new(4096));
    let fill1 = pattern(NS_BYTES, 0x5EED_0001);
    let fill2 = pattern(NS_BYTES, 0x5EED_0002);
    ns1.write_all(&fill1);
    ns2.write_all(&fill2);
    let mut sub = SubsystemConfig::new(NQN)
        .namespace(NamespaceConfig::new(1, ns1.clone()))
        .namespace(NamespaceConfig::new(2, ns2.clone()));
    sub.serial = SERIAL.into();
    sub.model = MODEL.into();
    target.add_subsystem(sub).unwrap();
    let mut restricted = SubsystemConfig::new(RESTRICTED_NQN).namespace(NamespaceConfig::new(
        1,
        Arc::new(RamBackend::new(512, 2048)),
    ));
    restricted.allow_any_host = false;
    restricted.hosts = vec!["nqn.2014-08.org.nvmexpress:uuid:someone-else".into()];
    target.add_subsystem(restricted).unwrap();

    let srv = TargetServer::start(target.clone(), "127.0.0.1:0").unwrap();
    let port = srv.local_addr().port();
    // Advertise the address the guest reaches us at, not the loopback one we bind: then
    // `nvme connect-all` can use the discovery log.
    let advertised: SocketAddr = format!("{HOST_ADDR_FROM_GUEST}:{port}").parse().unwrap();
    target.remove_listener(srv.local_addr());
    target.add_listener(advertised);

    let icd = target.config().in_capsule_data as usize;
    let maxh2c = target.config().maxh2cdata as usize;
    let chunk = target.config().c2h_chunk as usize;
    assert!(12288 > icd && 260 * 1024 > maxh2c && MIB > 4 * chunk);
    const K: usize = 1024;

    // Phase 1, `nvme connect`, no digests: in-capsule sizes (512 B .. 8 KiB), just above
    // (one H2CData), above MAXH2CDATA (several), 1 MiB with fsync (Flush).
    let r1 = [
        r("R1", 1, MIB, 0, 2),
        r("R2", 1, 512, 7, 9),
        r("R3", 2, MIB, 0, 1),
        r("R4", 2, 12 * K, 5, 1),
    ];
    let w1 = [
        w("W1", 1, 4 * MIB + 3 * 512, 512, 100_000),
        w("W2", 1, 4 * MIB + 8 * 8192, 8192, 110_000),
        w("W3", 1, 12 * K * 350, 12 * K, 120_000),
        wf("W4", 1, 5 * MIB, MIB, 130_000),
        w("W5", 2, MIB, 4096, 300_000),
        w("W6", 2, 260 * K * 8, 260 * K, 310_000),
        wf("W7", 2, 3 * MIB, MIB, 350_000),
    ];
    // Phase 2, `nvme connect -g -G -W 1`: header + data digests, two I/O queues (a write
    // queue beside the default one); `nvme reset`; I/O; a reset through sysfs; I/O.
    let r2 = [r("R5", 1, MIB, 1, 1), r("R6", 2, 4096, 100, 3)];
    let w2 = [
        w("W8", 1, 6 * MIB, MIB, 500_000),
        wf("W9", 2, 260 * K * 20, 260 * K, 600_000),
        w("W10", 1, 4096 * 10, 4096, 650_000),
    ];
    let w3 = [
        wf("W11", 1, 7 * MIB, 512 * K, 700_000),
        w("W12", 2, 12 * K * 600, 12 * K, 800_000),
    ];
    let r3 = [r("R7", 2, MIB, 0, 1)];
    let r4 = [r("R8", 1, 128 * K, 5, 1)];
    // nvme-cli write-zeroes and dsm (deallocate) on NS1, in blocks of 512 bytes.
    let wz = (3 * MIB + 512 * K, 8 * K);
    let dsm = (3 * MIB + 640 * K, 4 * K);
    let w19 = w("W19", 1, 256 * K * 12, 256 * K, 270_000);
    let w20 = w("W20", 2, 128 * K * 50, 128 * K, 280_000);
    let r6 = [r("R14", 2, 256 * K, 30, 1)];
    let w21 = w("W21", 1, 64 * K * 60, 64 * K, 290_000);
    // A 64 KiB discard in NS1 (Dataset Management, deallocate): reads as zeroes after.
    let discard = (7 * MIB + 512 * K, 64 * K);
    // Phase 3, `nvme connect-all -Q 256` (from the discovery log; TREQ lets it disable SQ
    // flow control, so reads complete with C2HData SUCCESS; queue size clamped to CAP.MQES):
    // reads and writes issued in parallel (queue depth > 1).
    let r5 = [
        r("R9", 1, 256 * K, 1, 1),
        r("R10", 1, 512 * K, 3, 1),
        r("R11", 2, 64 * K, 3, 1),
        r("R12", 2, 200 * K, 1, 1),
        r("R13", 1, 4096, 9, 1),
    ];
    let w5 = [
        w("W13", 1, 256 * K * 10, 256 * K, 210_000),
        w("W14", 2, 256 * K * 18, 256 * K, 220_000),
        w("W15", 2, 8 * K * 300, 8 * K, 230_000),
        w("W16", 1, 132 * K * 32, 132 * K, 240_000),
        w("W17", 2, 4 * K * 1500, 4 * K, 250_000),
        w("W18", 1, 512 * 3000, 512, 260_000),
    ];

    // The namespace image is rebuilt from the write list in list order: no write (or zeroed
    // range) may overlap another. (Overlapping a read would only make the test fail.)
    {
        let writes = w1.iter().chain(&w2).chain(&w3).chain(&w5);
        let mut changed: Vec<(u32, std::ops::Range<usize>, &str)> = writes
            .chain([&w19, &w20, &w21])
            .map(|x| (x.ns, x.off..x.off + x.len, x.tag))
            .collect();
        for (z, tag) in [(discard, "discard"), (wz, "write-zeroes"), (dsm, "dsm")] {
            changed.push((1, z.0..z.0 + z.1, tag));
        }
        for (i, a) in changed.iter().enumerate() {
            for b in &changed[i + 1..] {
                let overlap = a.0 == b.0 && a.1.start < b.1.end && b.1.start < a.1.end;
                assert!(!overlap, "{} overlaps {}", a.2, b.2);
            }
        }
    }

    let mut s = format!("NQN='{NQN}'\nRNQN='{RESTRICTED_NQN}'\nP={port}\n{PRELUDE}");
    s.push_str(
        "nvme discover -t tcp -a $A -s $P $H > /tmp/disc 2>&1 || { cat /tmp/disc; echo FAILED=discover; exit 1; }\n\
         cat /tmp/disc\n\
         awk '/^subnqn:/{print \"DISC_SUBNQN=\" $2} /^traddr:/{print \"DISC_TRADDR=\" $2}\n\
              /^trsvcid:/{print \"DISC_TRSVCID=\" $2} /^treq:/{sub(/^treq: +/, \"\"); print \"DISC_TREQ=\" $0}' /tmp/disc\n\
         if nvme connect -t tcp -a $A -s $P -n \"$RNQN\" $H > /tmp/rc 2>&1; then echo RESTRICTED=connected; else echo RESTRICTED=refused; fi\n\
         nvme connect -t tcp -a $A -s $P -n \"$NQN\" $H || { echo FAILED=connect; exit 1; }\n\
         find_devs || { echo FAILED=devices; exit 1; }\n\
         echo LBS1=$(cat /sys/block/${NS1#/dev/}/queue/logical_block_size)\n\
         echo LBS2=$(cat /sys/block/${NS2#/dev/}/queue/logical_block_size)\n\
         echo SIZE1=$(cat /sys/block/${NS1#/dev/}/size)\n\
         echo SIZE2=$(cat /sys/block/${NS2#/dev/}/size)\n\
         nvme list > /tmp/list 2>&1 || { cat /tmp/list; echo FAILED=list; exit 1; }\n\
         cat /tmp/list\n",
    );
    s.push_str(&format!("echo LIST_ROWS=$(grep -c '{SERIAL}' /tmp/list)\n"));
    s.push_str("id_ctrl P1 || { echo FAILED=id-ctrl; exit 1; }\n");
    // Admin and I/O passthrough from nvme-cli: log pages, features, Write Zeroes, DSM.
    s.push_str(&format!(
        "for c in 'smart-log $CTRL' 'error-log $CTRL' 'fw-log $CTRL' 'changed-ns-list-log $CTRL' \
             'get-feature $CTRL -f 7' 'get-feature $CTRL -f 0x0f' 'get-feature $CTRL -f 6' \
             'get-feature $CTRL -f 0x0b' 'id-ns $NS1' 'ns-descs $NS2' 'list-ns $CTRL' \
             'get-property $CTRL -o 0x1c' 'flush $NS2' \
             'write-zeroes $NS1 -s {wz_lba} -c {wz_nlb0}' 'dsm $NS1 -d -s {dsm_lba} -b {dsm_n}'; do\n\
           eval nvme $c > /tmp/o 2>&1; rc=$?\n\
           [ $rc = 0 ] || {{ echo \"nvme $c:\"; cat /tmp/o; }}\n\
           echo \"ADMIN_RC=$rc $c\"\n\
         done\n\
         echo KATO_FEATURE=$(nvme get-feature $CTRL -f 0x0f | sed 's/.*value://')\n",
        wz_lba = wz.0 / 512,
        wz_nlb0 = wz.1 / 512 - 1,
        dsm_lba = dsm.0 / 512,
        dsm_n = dsm.1 / 512,
    ));
    r1.iter().for_each(|x| s.push_str(&x.script()));
    w1.iter().for_each(|x| s.push_str(&x.script()));
    s.push_str(
        "nvme disconnect -n \"$NQN\" || { echo FAILED=disconnect1; exit 1; }\n\
         nvme connect -t tcp -a $A -s $P -n \"$NQN\" $H -g -G -W 1 || { echo FAILED=connect-digests; exit 1; }\n\
         find_devs || { echo FAILED=devices2; exit 1; }\n\
         id_ctrl P2 || { echo FAILED=id-ctrl2; exit 1; }\n\
         echo QUEUES2=$(ls -d /sys/block/${NS1#/dev/}/mq/* | wc -l)\n",
    );
    r2.iter().for_each(|x| s.push_str(&x.script()));
    w2.iter().for_each(|x| s.push_str(&x.script()));
    s.push_str(
        "nvme reset $CTRL || { echo FAILED=reset; exit 1; }\n\
         wait_live || { echo FAILED=not-live-after-reset; exit 1; }\n\
         find_devs || { echo FAILED=devices3; exit 1; }\n\
         id_ctrl P3 || { echo FAILED=id-ctrl3; exit 1; }\n",
    );
    w3.iter().for_each(|x| s.push_str(&x.script()));
    r3.iter().for_each(|x| s.push_str(&x.script()));
    s.push_str(
        "echo 1 > /sys/class/nvme/${CTRL#/dev/}/reset_controller || { echo FAILED=sysfs-reset; exit 1; }\n\
         sleep 0.5\n\
         wait_live || { echo FAILED=not-live-after-sysfs-reset; exit 1; }\n\
         find_devs || { echo FAILED=devices4; exit 1; }\n\
         id_ctrl P4 || { echo FAILED=id-ctrl4; exit 1; }\n",
    );
    r4.iter().for_each(|x| s.push_str(&x.script()));
    s.push_str(&format!(
        "blkdiscard -o {} -l {} $NS1 || {{ echo FAILED=discard; exit 1; }}\n\
         echo DISCARDED=$(rd $NS1 {} {} 1)\n",
        discard.0,
        discard.1,
        discard.1,
        discard.0 / discard.1
    ));
    s.push_str(
        "nvme disconnect -n \"$NQN\" || { echo FAILED=disconnect2; exit 1; }\n\
         nvme connect-all -t tcp -a $A -s $P $H -Q 256 || { echo FAILED=connect-all; exit 1; }\n\
         find_devs || { echo FAILED=devices5; exit 1; }\n\
         echo SQSIZE5=$(cat /sys/class/nvme/${CTRL#/dev/}/sqsize)\n",
    );
    s.push_str(&parallel_reads(&r5));
    s.push_str(&parallel_writes(&w5));
    s.push_str(
        "nvme disconnect -n \"$NQN\" > /tmp/dc || { echo FAILED=disconnect3; exit 1; }\n\
         cat /tmp/dc\n\
         nvme connect -t tcp -a $A -s $P -n \"$NQN\" $H --reconnect-delay=1 --ctrl-loss-tmo=60 \
             || { echo FAILED=connect4; exit 1; }\n\
         find_devs || { echo FAILED=devices6; exit 1; }\n",
    );
    // Phase 4: the target restarts under a connected kernel host, which reconnects; a write
    // issued while it is away completes after the reconnect. Then the guest powers off
    // still connected: the target must drop that controller by itself.
    s.push_str(&w19.script());
    let st = "/sys/class/nvme/${CTRL#/dev/}/state";
    s.push_str(&format!(
        "echo RESTART_ME=1\n\
         _n=300; while [ \"$(cat {st})\" = live ]; do sleep 0.1; _n=$((_n - 1)); \
             [ $_n -le 0 ] && {{ echo FAILED=never-lost; exit 1; }}; done\n\
         echo LOST_STATE=$(cat {st})\n\
         seq -w {first} {last} | head -c {len} > /tmp/W20\n\
         echo GEN_W20=$(md5sum < /tmp/W20 | cut -d' ' -f1)\n\
         ( dd if=/tmp/W20 of=$NS2 bs={len} count=1 seek={seek} oflag=direct 2>/dev/null; echo W20_RC=$? ) &\n\
         _n=600; until [ \"$(cat {st})\" = live ]; do sleep 0.1; _n=$((_n - 1)); \
             [ $_n -le 0 ] && {{ echo FAILED=not-live-after-restart; exit 1; }}; done\n\
         wait\n\
         echo RB_W20=$(rd $NS2 {len} {seek} 1)\n",
        first = w20.first,
        last = w20.first + (w20.len / 7) as u32 + 2,
        len = w20.len,
        seek = w20.off / w20.len,
    ));
    s.push_str(&r6[0].script());
    // Phase 5: the host freezes the whole guest (SIGSTOP to QEMU) past its keep alive
    // timeout: the target ends that controller by itself; once thawed, the kernel finds
    // its association gone, reconnects, and I/O works.
    s.push_str(&format!(
        "echo FREEZE_ME=1\n\
         _n=600; while [ \"$(cat {st})\" = live ]; do sleep 0.1; _n=$((_n - 1)); \
             [ $_n -le 0 ] && {{ echo FAILED=never-lost-when-frozen; exit 1; }}; done\n\
         echo THAWED_STATE=$(cat {st})\n\
         _n=600; until [ \"$(cat {st})\" = live ]; do sleep 0.1; _n=$((_n - 1)); \
             [ $_n -le 0 ] && {{ echo FAILED=not-live-after-thaw; exit 1; }}; done\n"
    ));
    s.push_str(&w21.script());
    s.push_str("echo ALL_DONE=1\n");

    let guest = Guest::builder()
        .script(s)
        .append("nvme_core.admin_timeout=20")
        .append("nvme_core.io_timeout=20")
        .timeout(Duration::from_secs(170))
        .spawn()
        .unwrap();
    guest
        .wait_for_line("RESTART_ME=1", Duration::from_secs(150))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let before = target.controller_count();
    srv.shutdown();
    std::thread::sleep(Duration::from_millis(1500));
    let srv = restart(&target, port);
    guest
        .wait_for_line("FREEZE_ME=1", Duration::from_secs(100))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let kato_before = target.stats().keep_alive_timeouts;
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &guest.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} QEMU");
    };
    signal("-STOP");
    let frozen = std::time::Instant::now();
    while target.controller_count() > 0 && frozen.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ended_after = frozen.elapsed();
    let kato_after = target.stats().keep_alive_timeouts;
    signal("-CONT");
    eprintln!("frozen guest's controller ended after {ended_after:?}");
    assert_eq!(
        target.controller_count(),
        0,
        "frozen host kept its controller"
    );
    assert_eq!(
        kato_after,
        kato_before + 1,
        "ended by its keep alive timeout"
    );
    // Linux's default KATO is 5 s (and our timer may not fire before a full KATO passed).
    assert!(ended_after >= Duration::from_secs(3), "{ended_after:?}");
    let out = guest.wait().unwrap();
    let why = out.describe();
    eprintln!("guest ran {:?}\n{}", out.elapsed, out.output);
    out.check_success().unwrap();
    assert_eq!(out.value("ALL_DONE"), Some("1"), "{why}");
    assert!(out.values("FAILED").is_empty(), "{why}");

    // Discovery: exactly our subsystem, at the advertised address; the restricted one is
    // neither listed nor connectable for this host.
    assert_eq!(out.values("DISC_SUBNQN"), [NQN], "{why}");
    assert_eq!(out.values("DISC_TRADDR"), [HOST_ADDR_FROM_GUEST], "{why}");
    assert_eq!(out.values("DISC_TRSVCID"), [port.to_string()], "{why}");
    assert_eq!(
        out.values("DISC_TREQ"),
        ["not specified, sq flow control disable supported"],
        "{why}"
    );
    assert_eq!(out.value("RESTRICTED"), Some("refused"), "{why}");
    let admin = out.values("ADMIN_RC");
    assert_eq!(admin.len(), 15, "{why}");
    assert!(
        admin.iter().all(|v| v.starts_with("0 ")),
        "{admin:?}\n{why}"
    );
    // Linux's default keep alive timeout, 5 s, as Get Features reports it.
    assert_eq!(out.value("KATO_FEATURE"), Some("0x00001388"), "{why}");

    // Identify as the kernel and nvme-cli saw it.
    assert_eq!(out.value("LBS1"), Some("512"), "{why}");
    assert_eq!(out.value("LBS2"), Some("4096"), "{why}");
    let sectors = (NS_BYTES / 512).to_string();
    assert_eq!(out.value("SIZE1"), Some(sectors.as_str()), "{why}");
    assert_eq!(out.value("SIZE2"), Some(sectors.as_str()), "{why}");
    assert_eq!(out.value("LIST_ROWS"), Some("2"), "nvme list: {why}");
    for p in ["P1", "P2", "P3", "P4"] {
        let v = |k: &str| out.value(&format!("{p}_{k}")).map(str::to_string);
        assert_eq!(v("SUBNQN").as_deref(), Some(NQN), "{p}: {why}");
        assert_eq!(v("MN").as_deref(), Some(MODEL), "{p}: {why}");
        assert_eq!(v("SN").as_deref(), Some(SERIAL), "{p}: {why}");
        assert_eq!(v("NN").as_deref(), Some("2"), "{p}: {why}");
    }
    // Each reset made a new controller (dynamic model: a new CNTLID).
    let cntlids: std::collections::HashSet<_> = ["P2", "P3", "P4"]
        .iter()
        .map(|p| out.value(&format!("{p}_CNTLID")))
        .collect();
    assert_eq!(cntlids.len(), 3, "{why}");
    assert_eq!(out.value("QUEUES2"), Some("2"), "{why}");
    // CAP.MQES + 1 = 128 entries (sqsize is zero-based) although 256 were asked for.
    assert_eq!(out.value("SQSIZE5"), Some("127"), "{why}");

    // Reads: md5 in the guest of exactly what the host pre-filled.
    let fills = [&fill1, &fill2];
    for x in r1
        .iter()
        .chain(&r2)
        .chain(&r3)
        .chain(&r4)
        .chain(&r5)
        .chain(&r6)
    {
        let want = md5_hex(&fills[x.ns as usize - 1][x.range()]);
        assert_eq!(
            out.value(x.tag),
            Some(want.as_str()),
            "read {}: {why}",
            x.tag
        );
    }

    // Writes: the guest read back what it wrote; the host's namespaces hold exactly the
    // pre-fill with every guest write (and the discard) on top, nothing else.
    let mut expect = [fill1.clone(), fill2.clone()];
    assert_eq!(before, 1, "one controller before the restart");
    assert_eq!(
        out.value("W20_RC"),
        Some("0"),
        "write across the restart: {why}"
    );
    assert!(
        matches!(out.value("LOST_STATE"), Some("connecting" | "resetting")),
        "{why}"
    );
    assert!(
        matches!(out.value("THAWED_STATE"), Some("connecting" | "resetting")),
        "{why}"
    );
    let across = [w19, w20, w21];
    for x in w1.iter().chain(&w2).chain(&w3).chain(&w5).chain(&across) {
        let data = x.expected();
        let md5 = md5_hex(&data);
        assert_eq!(
            out.value(&format!("GEN_{}", x.tag)),
            Some(md5.as_str()),
            "guest pattern of {} differs from seq_bytes: {why}",
            x.tag
        );
        assert_eq!(
            out.value(&format!("RB_{}", x.tag)),
            Some(md5.as_str()),
            "read-back of {}: {why}",
            x.tag
        );
        expect[x.ns as usize - 1][x.off..x.off + x.len].copy_from_slice(&data);
    }
    expect[0][discard.0..discard.0 + discard.1].fill(0);
    expect[0][wz.0..wz.0 + wz.1].fill(0);
    expect[0][dsm.0..dsm.0 + dsm.1].fill(0);
    assert_eq!(
        out.value("DISCARDED"),
        Some(md5_hex(&vec![0u8; discard.1]).as_str()),
        "{why}"
    );
    for (i, ns) in [&ns1, &ns2].iter().enumerate() {
        let got = ns.read_all();
        if let Some(first) = (0..NS_BYTES).find(|&o| got[o] != expect[i][o]) {
            panic!(
                "namespace {} differs from what the guest wrote, first at byte {first}\n{why}",
                i + 1
            );
        }
    }
    assert!(ns1.flushes.load(Ordering::Relaxed) >= 2, "flushes on NS1");
    assert!(ns2.flushes.load(Ordering::Relaxed) >= 2, "flushes on NS2");
    assert!(
        ns1.deallocs.load(Ordering::Relaxed) >= 2,
        "discard + dsm on NS1"
    );

    // Which transport paths the kernel took.
    let st = target.stats();
    eprintln!("{st:?}");
    assert!(st.in_capsule_writes >= 5, "in-capsule writes: {st:?}");
    // W3 W4 W6 W7 W8 W9 W11 W12 W13 W14 W16: one R2T each (the kernel sends MAXR2T 0).
    assert!(st.r2ts >= 11, "R2Ts: {st:?}");
    assert!(st.h2c_data_pdus >= st.r2ts + 10, "H2CData per R2T: {st:?}");
    assert!(st.c2h_data_pdus >= 40, "C2HData PDUs: {st:?}");
    assert!(st.c2h_success >= 5, "C2HData SUCCESS (connect-all): {st:?}");
    // Admin + 2 I/O queues with both digests, three times (connect, two resets).
    assert!(st.hdgst_connections >= 9, "{st:?}");
    assert!(st.ddgst_connections >= 9, "{st:?}");
    assert_eq!(st.term_reqs, 0, "{st:?}");
    // discovery x2, phase 1, phase 2 + two resets, connect-all, phase 4 + two reconnects
    assert!(st.controllers >= 10, "{st:?}");
    // Every controller ended with its association, the last one (left connected when the
    // guest powered off) with its socket, while the target still serves.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while target.controller_count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(target.controller_count(), 0);
    drop(srv);
}

#[test]
fn md5_matches_known_vectors() {
    assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    let long = b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
    assert_eq!(md5_hex(long), "57edf4a22be3c955ac49da2e2107b67a");
    assert_eq!(seq_bytes(100_000, 15), b"100000\n100001\n1");
}
