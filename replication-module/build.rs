//! Enables the constructor (`cfg(spdk)`) when spdk-sys found SPDK and links SPDK like
//! `replication_tgt`, so the preloaded module brings the same libraries into a smaller app.
//! Without SPDK the cdylib builds empty.

include!("../spdk-sys/link.rs");

fn main() {
    println!("cargo:rerun-if-changed=../spdk-sys/link.rs");
    link_spdk();
}
