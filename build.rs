//! Enables the SPDK host (`cfg(spdk)`) when spdk-sys found SPDK, and links SPDK the way
//! SPDK documents for applications: every library, with --no-as-needed, because bdev
//! modules, RPCs and transports register themselves from constructors nothing references.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spdk)");
    if env::var("DEP_SPDK_FOUND").as_deref() != Ok("1") {
        return;
    }
    println!("cargo:rustc-cfg=spdk");
    let libdir = env::var("DEP_SPDK_LIBDIR").expect("spdk-sys exports its libdir");
    println!("cargo:rustc-link-search=native={libdir}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for lib in env::var("DEP_SPDK_LIBS")
        .unwrap_or_default()
        .split_whitespace()
    {
        println!("cargo:rustc-link-arg=-l{lib}");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    if let Some(prefix) = std::path::Path::new(&libdir).parent() {
        println!("cargo:rustc-env=SPDK_PREFIX={}", prefix.display());
    }
    // The app runs from wherever SPDK was found, without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
}
