//! Enables the constructor (`cfg(spdk)`) when spdk-sys found SPDK, and links SPDK the way
//! the root crate's build.rs does. Link args from a dependency's build script don't reach
//! this cdylib, so they are repeated here. Without SPDK the cdylib builds empty.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spdk)");
    println!("cargo:rerun-if-env-changed=DEP_SPDK_FOUND");
    if env::var("DEP_SPDK_FOUND").as_deref() != Ok("1") {
        return;
    }
    println!("cargo:rustc-cfg=spdk");
    let libdir = env::var("DEP_SPDK_LIBDIR").expect("spdk-sys exports its libdir");
    println!("cargo:rustc-link-search=native={libdir}");
    // Every SPDK library, even those nothing here references: the .so then pulls in the
    // same set as replication_tgt when preloaded into a smaller app.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for lib in env::var("DEP_SPDK_LIBS")
        .unwrap_or_default()
        .split_whitespace()
    {
        println!("cargo:rustc-link-arg=-l{lib}");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
}
