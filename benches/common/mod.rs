//! Helpers shared by the native benchmarks (`native.rs`, `sync.rs`).
#![allow(dead_code)]

use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use nvmf::driver::{ConnectOptions, Controller};
use serde_json::{Value, json};
use spdk_replication::engine::BlockDevice;
use spdk_replication::native::app::NativeNode;
use spdk_replication::native::bdev::Dev;
use spdk_replication::native::node::Exported;
use spdk_replication::native::reactor::yield_now;
use std::time::{Duration, Instant};

pub const BS: u64 = 4096;

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub fn ok(n: &NativeNode, m: &str, p: Value) -> Value {
    n.call(m, p).unwrap_or_else(|e| panic!("{m}: {e}"))
}

pub fn secs() -> f64 {
    std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

pub fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

pub fn median_spread(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v[v.len() / 2];
    (m, (v[v.len() - 1] - v[0]) / m)
}

/// Distribution-free 95 % confidence interval of the median (as `run.median_ci` in
/// `benches/bdevperf/run.py`): the order statistics x(j), x(n+1-j) for the largest j whose
/// coverage 1 - 2 P(Binomial(n, 1/2) < j) is still >= 0.95. None below 6 values.
#[allow(dead_code)] // not every bench reports it
pub fn median_ci(mut v: Vec<f64>) -> Option<(f64, f64)> {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let mut below = 0.0; // P(B < j)
    let mut choose = 1.0; // C(n, j - 1)
    let mut best = None;
    for j in 1..=n / 2 {
        below += choose / 2f64.powi(n as i32);
        if 1.0 - 2.0 * below < 0.95 {
            break;
        }
        best = Some((v[j - 1], v[n - j]));
        choose = choose * (n - (j - 1)) as f64 / j as f64;
    }
    best
}

pub fn listen(nqn: &str, port: u16) -> Value {
    json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
           "traddr": "127.0.0.1", "trsvcid": port.to_string()}})
}

pub fn export(n: &NativeNode, nqn: &str, bdev: &str, port: u16) {
    ok(
        n,
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "allow_any_host": true}),
    );
    ok(
        n,
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": bdev}}),
    );
    ok(n, "nvmf_subsystem_add_listener", listen(nqn, port));
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (IOPS, mean latency µs) of QD `qd` 4 KiB random I/O through our initiator, over the
/// first `blocks` blocks of namespace 1.
pub fn nvmf_run(
    port: u16,
    nqn: &str,
    blocks: u64,
    write: bool,
    qd: usize,
    d: Duration,
) -> (f64, f64) {
    let c = connect(port, nqn);
    let t = Instant::now();
    let c = &c;
    let counts = futures::executor::block_on(join_all((0..qd).map(|q| async move {
        let mut rng = Rng(0x1234_5678 + q as u64);
        let mut n = 0u64;
        let data = bytes::Bytes::from(vec![0xA5u8; BS as usize]);
        while t.elapsed() < d {
            let lba = rng.next() % blocks;
            if write {
                c.write(1, lba, data.clone()).await.expect("write");
            } else {
                c.read(1, lba, 1).await.expect("read");
            }
            n += 1;
        }
        n
    })));
    let el = t.elapsed().as_secs_f64();
    let ios: u64 = counts.iter().sum();
    (ios as f64 / el, el * 1e6 * qd as f64 / ios as f64)
}

/// A plain copy of blocks `range` of bdev `from` to `to` on the app reactor, `region`
/// bytes per request, `depth` in flight: what a sync or merge is measured against.
/// Like them it gives the reactor a turn after each request (over RAM disks a copy that
/// does not would hold the reactor from the guests' connections until it ends).
/// Seconds taken.
pub fn raw_copy(
    n: &NativeNode,
    from: &str,
    to: &str,
    range: std::ops::Range<u64>,
    region: u64,
    depth: usize,
) -> f64 {
    let (from, to) = (from.to_owned(), to.to_owned());
    n.with_app(move |app| async move {
        let dev = |name: &str| match app.exported(name) {
            Some(Exported::Dev(d)) => d,
            _ => panic!("{name}: not a plain bdev"),
        };
        let (src, dst): (Dev, Dev) = (dev(&from), dev(&to));
        let per = region / BS;
        let t = Instant::now();
        let mut next = range.start;
        let mut inflight = FuturesUnordered::new();
        loop {
            while inflight.len() < depth && next < range.end {
                let (src, dst, lba) = (src.clone(), dst.clone(), next);
                next += per;
                inflight.push(async move {
                    let buf = src.alloc_buf(region as usize).expect("buffer");
                    src.read(lba, buf.clone()).await.expect("read");
                    dst.write(lba, buf).await.expect("write");
                });
            }
            if inflight.next().await.is_none() {
                break;
            }
            yield_now().await;
        }
        t.elapsed().as_secs_f64()
    })
    .expect("app")
}

/// Our initiator on `nqn` at 127.0.0.1:`port`, queue size 128.
pub fn connect(port: u16, nqn: &str) -> Controller {
    Controller::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        nqn,
        "nqn.2014-08.org.nvmexpress:uuid:bench",
        ConnectOptions {
            queue_size: 128,
            ..ConnectOptions::default()
        },
    )
    .expect("connect")
}

/// The `bdev_replication_get_status` entry of `name`.
pub fn status(n: &NativeNode, name: &str) -> Value {
    match ok(n, "bdev_replication_get_status", json!({"name": name})) {
        Value::Array(mut v) if !v.is_empty() => v.swap_remove(0),
        v => v,
    }
}

/// A node on `core` with RAM disks `base`, `hidden`, `active` of `blocks` blocks, the
/// secondary `svm0` over them (stage `none`) and the TCP transport.
pub fn secondary_node(core: usize, blocks: u64) -> NativeNode {
    let n = NativeNode::start(&[core], ".".into()).unwrap();
    for b in ["base", "hidden", "active"] {
        ok(
            &n,
            "bdev_malloc_create",
            json!({"name": b, "num_blocks": blocks, "block_size": BS}),
        );
    }
    ok(
        &n,
        "bdev_replication_create",
        json!({"name": "svm0", "mode": "secondary", "base_bdev": "base",
               "hidden_bdev": "hidden", "active_bdev": "active"}),
    );
    ok(&n, "nvmf_create_transport", json!({"trtype": "TCP"}));
    n
}

/// A node on `core` with the RAM disk `local` of `blocks` blocks, the NVMe/TCP bdev
/// `svm0n1` attached to the ingress `ingress_nqn` at 127.0.0.1:`ingress_port`, and the TCP
/// transport: what a primary is created over.
pub fn primary_node(core: usize, blocks: u64, ingress_port: u16, ingress_nqn: &str) -> NativeNode {
    let n = NativeNode::start(&[core], ".".into()).unwrap();
    ok(
        &n,
        "bdev_malloc_create",
        json!({"name": "local", "num_blocks": blocks, "block_size": BS}),
    );
    ok(
        &n,
        "bdev_nvme_attach_controller",
        json!({"name": "svm0", "trtype": "TCP", "traddr": "127.0.0.1",
               "trsvcid": ingress_port.to_string(), "subnqn": ingress_nqn}),
    );
    ok(&n, "nvmf_create_transport", json!({"trtype": "TCP"}));
    n
}
