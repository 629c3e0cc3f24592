//! Finds SPDK, generates bindings and builds the C shim.
//!
//! Discovery, in order: `pkg-config` as the environment sets it up (`PKG_CONFIG_PATH`),
//! then `$SPDK_DIR` (an install prefix or a built source tree), then `/opt/spdk` and
//! `/usr/local`. Without SPDK the crate builds empty with one warning; dependents see
//! `DEP_SPDK_FOUND=0` and compile their SPDK parts out.

use std::env;
use std::path::{Path, PathBuf};

/// The SPDK libraries an application with the bdev, NVMe-oF target and vhost-blk
/// subsystems needs; `spdk_event_bdev` brings every bdev module (malloc, nvme, passthru,
/// raid, ...) and its RPCs.
const PACKAGES: &[&str] = &[
    "spdk_event_bdev",
    "spdk_event_accel",
    "spdk_event_nvmf",
    "spdk_event_vhost_blk",
    "spdk_bdev_malloc",
    "spdk_bdev_nvme",
    "spdk_bdev_passthru",
    "spdk_bdev_raid",
    "spdk_event",
    "spdk_jsonrpc",
    "spdk_rpc",
    "spdk_sock_posix",
    "spdk_env_dpdk",
    "spdk_env_dpdk_rpc",
];

/// The SPDK functions the host calls.
const FUNCTIONS: &[&str] = &[
    "spdk_sys_io_channel_get_ctx",
    "spdk_app_fini",
    "spdk_app_opts_init",
    "spdk_app_parse_args",
    "spdk_app_start",
    "spdk_app_stop",
    "spdk_bdev_close",
    "spdk_bdev_desc_get_bdev",
    "spdk_bdev_flush_blocks",
    "spdk_bdev_free_io",
    "spdk_bdev_get_block_size",
    "spdk_bdev_get_by_name",
    "spdk_bdev_get_io_channel",
    "spdk_bdev_get_num_blocks",
    "spdk_bdev_has_write_cache",
    "spdk_bdev_io_complete",
    "spdk_bdev_io_get_buf",
    "spdk_bdev_io_type_supported",
    "spdk_bdev_module_claim_bdev",
    "spdk_bdev_module_list_add",
    "spdk_bdev_module_release_bdev",
    "spdk_bdev_open_ext",
    "spdk_bdev_queue_io_wait",
    "spdk_bdev_read_blocks",
    "spdk_bdev_readv_blocks",
    "spdk_bdev_register",
    "spdk_bdev_reset",
    "spdk_bdev_unmap_blocks",
    "spdk_bdev_unregister",
    "spdk_bdev_write_blocks",
    "spdk_bdev_write_zeroes_blocks",
    "spdk_bdev_writev_blocks",
    "spdk_dma_free",
    "spdk_dma_malloc",
    "spdk_for_each_channel",
    "spdk_for_each_channel_continue",
    "spdk_get_io_channel",
    "spdk_get_thread",
    "spdk_get_ticks",
    "spdk_get_ticks_hz",
    "spdk_io_channel_iter_get_channel",
    "spdk_io_channel_iter_get_ctx",
    "spdk_io_device_register",
    "spdk_io_device_unregister",
    "spdk_json_write_begin",
    "spdk_json_write_end",
    "spdk_json_write_name",
    "spdk_json_write_val",
    "spdk_json_write_val_raw",
    "spdk_jsonrpc_begin_result",
    "spdk_jsonrpc_end_result",
    "spdk_jsonrpc_send_error_response",
    "spdk_poller_register",
    "spdk_poller_unregister",
    "spdk_put_io_channel",
    "spdk_rpc_register_method",
    "spdk_rpc_server_accept",
    "spdk_rpc_server_close",
    "spdk_rpc_server_listen",
    "spdk_thread_send_msg",
];

fn candidate_pkgconfig_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = env::var_os("SPDK_DIR") {
        let d = PathBuf::from(d);
        dirs.push(d.join("lib/pkgconfig"));
        dirs.push(d.join("build/lib/pkgconfig"));
    }
    dirs.push("/opt/spdk/lib/pkgconfig".into());
    dirs.push("/usr/local/lib/pkgconfig".into());
    dirs
}

fn probe(extra_dir: Option<&Path>) -> Option<pkg_config::Library> {
    if let Some(dir) = extra_dir {
        if !dir.join("spdk_bdev.pc").exists() {
            return None;
        }
        let path = match env::var_os("PKG_CONFIG_PATH") {
            Some(p) => {
                env::join_paths(std::iter::once(dir.to_path_buf()).chain(env::split_paths(&p)))
                    .ok()?
            }
            None => dir.as_os_str().to_owned(),
        };
        // SAFETY: build scripts are single-threaded.
        unsafe { env::set_var("PKG_CONFIG_PATH", path) };
    }
    let mut cfg = pkg_config::Config::new();
    cfg.cargo_metadata(false).statik(false);
    let mut merged: Option<pkg_config::Library> = None;
    for pkg in PACKAGES {
        let lib = cfg.probe(pkg).ok()?;
        match merged.as_mut() {
            None => merged = Some(lib),
            Some(m) => {
                for l in lib.libs {
                    if !m.libs.contains(&l) {
                        m.libs.push(l);
                    }
                }
                for p in lib.link_paths {
                    if !m.link_paths.contains(&p) {
                        m.link_paths.push(p);
                    }
                }
            }
        }
    }
    let sys = cfg.probe("spdk_syslibs").ok()?;
    let m = merged.as_mut()?;
    for l in sys.libs {
        if !m.libs.contains(&l) {
            m.libs.push(l);
        }
    }
    merged
}

/// Builds the crate empty: dependents see `DEP_SPDK_FOUND=0` and compile their SPDK parts out.
fn without_spdk(out: &Path, why: &str) {
    println!("cargo:warning={why}: building without the SPDK host");
    std::fs::write(out.join("bindings.rs"), "").unwrap();
    println!("cargo:found=0");
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-changed=shim");
    // SPDK installed (or rebuilt) in a documented prefix after a first build is picked up:
    // watch each prefix's pkgconfig folder, or the nearest existing parent until it appears.
    for d in candidate_pkgconfig_dirs() {
        if let Some(w) = d.ancestors().find(|a| a.exists() && *a != Path::new("/")) {
            println!("cargo:rerun-if-changed={}", w.display());
        }
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());

    // Lets a machine with SPDK check the build without it.
    println!("cargo:rerun-if-env-changed=SPDK_SYS_NO_SPDK");
    let disabled = env::var_os("SPDK_SYS_NO_SPDK").is_some();
    let lib = (!disabled).then(|| probe(None)).flatten().or_else(|| {
        if disabled {
            return None;
        }
        candidate_pkgconfig_dirs()
            .iter()
            .find_map(|d| probe(Some(d)))
    });
    let Some(lib) = lib else {
        return without_spdk(
            &out,
            "SPDK not found (looked via pkg-config/PKG_CONFIG_PATH, $SPDK_DIR, /opt/spdk, \
             /usr/local)",
        );
    };

    let include_dirs = lib.include_paths.clone();
    let libdir = lib
        .link_paths
        .first()
        .cloned()
        .expect("SPDK's pkg-config names its library directory");

    // Bindings: only what the replication module and its application use (the types
    // they need come along).
    let functions = FUNCTIONS.join("|");
    let mut b = bindgen::Builder::default()
        .header("shim/wrapper.h")
        .clang_arg("-Ishim")
        .allowlist_function(format!("^({functions})$"))
        .allowlist_type("spdk_bdev_io_status")
        .allowlist_type("spdk_bdev_event_type")
        .allowlist_var("SPDK_RPC_RUNTIME|SPDK_RPC_STARTUP")
        .allowlist_var("SPDK_JSONRPC_ERROR_.*")
        .opaque_type("spdk_bdev_ext_io_opts")
        .wrap_unsafe_ops(true)
        .derive_default(true)
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate_comments(false);
    for d in &include_dirs {
        b = b.clang_arg(format!("-I{}", d.display()));
    }
    // bindgen panics when it cannot load libclang; SPDK present without libclang (Debian
    // `libclang-dev`) is a machine that cannot build the SPDK host, not a broken build.
    // The default hook would print the panic as if the build had crashed; its message goes
    // into the warning instead.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let generated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.generate()));
    std::panic::set_hook(hook);
    let bindings = match generated {
        Ok(Ok(bindings)) => bindings,
        Ok(Err(e)) => return without_spdk(&out, &format!("bindgen over SPDK's headers: {e}")),
        Err(payload) => {
            let why = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("bindgen panicked");
            // Picked up again once a package (libclang-dev) is installed.
            println!("cargo:rerun-if-changed=/var/lib/dpkg/status");
            return without_spdk(
                &out,
                &format!(
                    "SPDK found but bindgen failed, most likely no libclang (install Debian's \
                     libclang-dev or set LIBCLANG_PATH): {why}"
                ),
            );
        }
    };
    bindings.write_to_file(out.join("bindings.rs")).unwrap();

    let mut cc = cc::Build::new();
    cc.file("shim/shim.c").include("shim").warnings(false);
    for d in &include_dirs {
        cc.include(d);
    }
    cc.compile("spdk_sys_shim");

    // Linking is left to the final crate (`DEP_SPDK_LIBS`): SPDK's libraries must be linked
    // with --no-as-needed, since modules, RPCs and transports register themselves from
    // constructors that nothing references, and only link args can say that on stable.
    println!("cargo:rustc-cfg=spdk");
    println!("cargo:found=1");
    println!("cargo:libdir={}", libdir.display());
    println!("cargo:libs={}", lib.libs.join(" "));
}
