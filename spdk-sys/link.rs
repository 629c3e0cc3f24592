// Shared by the build scripts of the crates that link an SPDK application or module
// (`include!`d: a build script cannot depend on code any other way without building
// spdk-sys's bindings twice). Link args from spdk-sys's own build script do not reach
// dependents, so each final crate emits them from spdk-sys's `DEP_SPDK_*` metadata.

/// Emits `cfg(spdk)` and the link arguments when spdk-sys found SPDK; returns SPDK's
/// library directory then.
fn link_spdk() -> Option<String> {
    println!("cargo::rustc-check-cfg=cfg(spdk)");
    if std::env::var("DEP_SPDK_FOUND").as_deref() != Ok("1") {
        return None;
    }
    println!("cargo:rustc-cfg=spdk");
    let libdir = std::env::var("DEP_SPDK_LIBDIR").expect("spdk-sys exports its libdir");
    println!("cargo:rustc-link-search=native={libdir}");
    // Every SPDK library with --no-as-needed: bdev modules, RPCs and transports register
    // themselves from constructors nothing references.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for lib in std::env::var("DEP_SPDK_LIBS").unwrap_or_default().split_whitespace() {
        println!("cargo:rustc-link-arg=-l{lib}");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    // Runs from wherever SPDK was found, without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
    Some(libdir)
}
