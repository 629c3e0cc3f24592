//! Shared test helpers: a RAM-backed target on loopback.
#![allow(dead_code)]

use nvmf::driver::{ConnectOptions, Controller, PollThread, Poller, RxDriver, TargetServer};
use nvmf::target::{NamespaceConfig, RamBackend, SubsystemConfig, Target, TargetConfig};
use std::sync::Arc;

pub const NQN: &str = "nqn.2024-01.io.spdk-replication:test";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

pub fn target(cfg: TargetConfig, block_size: u32, blocks: u64, vwc: bool) -> Arc<Target> {
    let t = Target::new(cfg);
    let be = Arc::new(RamBackend::new(block_size, blocks).with_write_cache(vwc));
    t.add_subsystem(SubsystemConfig::new(NQN).namespace(NamespaceConfig::new(1, be)))
        .unwrap();
    t
}

pub fn server(cfg: TargetConfig, block_size: u32, blocks: u64) -> TargetServer {
    TargetServer::start(target(cfg, block_size, blocks, true), "127.0.0.1:0").unwrap()
}

pub fn connect(srv: &TargetServer, opts: ConnectOptions) -> Controller {
    Controller::connect(srv.local_addr(), NQN, HOSTNQN, opts).unwrap()
}

/// With `poll`, `opts` with the queues read by one polling thread (the returned handle,
/// to keep while connected) instead of a reader thread each.
pub fn polled_if(poll: bool, opts: ConnectOptions) -> (ConnectOptions, Option<PollThread>) {
    if !poll {
        return (opts, None);
    }
    let p = Arc::new(Poller::default());
    let t = p.spawn_thread().unwrap();
    let rx: Arc<dyn RxDriver> = p;
    let opts = ConnectOptions {
        rx: Some(rx),
        ..opts
    };
    (opts, Some(t))
}

/// Deterministic bytes that differ per LBA and per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Polls every future until all finish, on the calling thread: lets one thread keep many
/// commands in flight (queue depth) without an async runtime.
pub type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

pub fn join_all<T>(futs: Vec<BoxFut<'_, T>>) -> Vec<T> {
    use std::task::Poll;
    let mut futs: Vec<_> = futs.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = (0..futs.len()).map(|_| None).collect();
    nvmf::driver::block_on(std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        out[i] = Some(v);
                        *f = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }));
    out.into_iter().map(|v| v.unwrap()).collect()
}
pub mod md5;
pub mod raw;
