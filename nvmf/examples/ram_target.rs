//! A RAM-disk NVMe/TCP target for manual interop (Linux `nvme connect`, SPDK initiators):
//!
//! ```text
//! cargo run -p nvmf --example ram_target -- --listen 127.0.0.1:4420 \
//!     --nqn nqn.2024-01.io.spdk-replication:ram --size-mib 64 --block-size 512
//! ```
//! `RUST_LOG=debug` for protocol traces. Runs until killed.

use nvmf::driver::TargetServer;
use nvmf::target::{NamespaceConfig, RamBackend, SubsystemConfig, Target, TargetConfig};
use std::sync::Arc;

fn usage() -> ! {
    eprintln!(
        "usage: ram_target --listen ADDR:PORT --nqn NQN [--size-mib N] [--block-size 512|4096] [--write-cache]"
    );
    std::process::exit(2);
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut listen = None;
    let mut nqn = None;
    let mut size_mib: u64 = 64;
    let mut bs: u32 = 512;
    let mut vwc = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(val()),
            "--nqn" => nqn = Some(val()),
            "--size-mib" => size_mib = val().parse().unwrap_or_else(|_| usage()),
            "--block-size" => bs = val().parse().unwrap_or_else(|_| usage()),
            "--write-cache" => vwc = true,
            _ => usage(),
        }
    }
    let (Some(listen), Some(nqn)) = (listen, nqn) else {
        usage()
    };
    if bs != 512 && bs != 4096 {
        usage();
    }
    let blocks = size_mib * 1024 * 1024 / u64::from(bs);
    let target = Target::new(TargetConfig::default());
    let be = Arc::new(RamBackend::new(bs, blocks).with_write_cache(vwc));
    if let Err(e) =
        target.add_subsystem(SubsystemConfig::new(&nqn).namespace(NamespaceConfig::new(1, be)))
    {
        eprintln!("ram_target: {e}");
        std::process::exit(1);
    }
    let srv = match TargetServer::start(target, listen.as_str()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ram_target: listen {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "serving {nqn} ({size_mib} MiB, {bs}-byte blocks) on {}",
        srv.local_addr()
    );
    loop {
        std::thread::park();
    }
}
