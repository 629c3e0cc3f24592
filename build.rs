//! Enables the SPDK host (`cfg(spdk)`) when spdk-sys found SPDK, links SPDK the way SPDK
//! documents for applications, and records SPDK's prefix for the tests.

include!("spdk-sys/link.rs");

fn main() {
    println!("cargo:rerun-if-changed=spdk-sys/link.rs");
    if let Some(libdir) = link_spdk()
        && let Some(prefix) = std::path::Path::new(&libdir).parent()
    {
        println!("cargo:rustc-env=SPDK_PREFIX={}", prefix.display());
    }
}
