//! The SPDK application with the replication bdev module. See `host::app`.

#[cfg(spdk)]
fn main() {
    std::process::exit(spdk_replication::host::app::run(std::env::args()));
}

#[cfg(not(spdk))]
fn main() {
    eprintln!(
        "replication_tgt: this build found no SPDK (see README: SPDK discovery); \
         rebuild with SPDK installed"
    );
    std::process::exit(1);
}
