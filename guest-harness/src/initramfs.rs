//! Builds (and caches) the guest initramfs: kernel module closure, busybox, nvme-cli with its
//! shared libraries, `/init` and the shell helpers. The image is an uncompressed newc cpio:
//! QEMU loads it by DMA, and skipping gzip saves the guest a decompression under TCG.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use crate::env::HostEnv;

const INIT: &str = include_str!("guest/init.sh");
/// Shell helpers sourced before every script (see README.md).
pub const HARNESS_SH: &str = include_str!("guest/harness.sh");

/// Loaded by `/init` at boot, in dependency order (dependencies are added automatically).
const BOOT_MODULES: &[&str] = &[
    "qemu_fw_cfg",
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "configfs",
    "loop",
    "crc32c_generic",
    "nvme_core",
    "nvme_fabrics",
    "nvme_tcp",
    "nvmet",
    "nvmet_tcp",
];
/// In the image for `modprobe` only: null_blk must be loaded with `nr_devices=0` by the helper.
const ON_DEMAND_MODULES: &[&str] = &["null_blk"];

/// Host NQN / host ID the guest's nvme-cli uses (`/etc/nvme/hostnqn`, `/etc/nvme/hostid`).
pub const GUEST_HOSTID: &str = "6e1f0b7a-52d4-4c3e-9a0d-8f5b1c2d3e4f";

/// One `/etc/nvme/hostnqn` line.
pub fn guest_hostnqn() -> String {
    format!("nqn.2014-08.org.nvmexpress:uuid:{GUEST_HOSTID}")
}

/// Returns the path of a cached initramfs built from `env`, building it on first use.
pub fn initramfs(env: &HostEnv) -> Result<PathBuf> {
    // Tests run in parallel threads: build once per process; the rename below covers processes.
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());

    let plan = Plan::new(env)?;
    let key = plan.key()?;
    let dir = cache_dir(env);
    let out = dir.join(format!("initramfs-{}-{key:016x}.cpio", env.kver));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let image = plan.build()?;
    let tmp = dir.join(format!(".initramfs-{key:016x}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &image).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(out)
}

/// `$GUEST_HARNESS_DIR/initramfs` when writable (CI runs as root), else a per-user temp folder.
fn cache_dir(env: &HostEnv) -> PathBuf {
    let shared = env.dir.join("initramfs");
    if std::fs::create_dir_all(&shared).is_ok() {
        let probe = shared.join(format!(".probe-{}", std::process::id()));
        if std::fs::write(&probe, b"").is_ok() {
            let _ = std::fs::remove_file(probe);
            return shared;
        }
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("guest-harness-{uid}"))
}

/// Everything that goes into the image, resolved before building so the cache key covers it.
struct Plan {
    kver: String,
    modules_dir: PathBuf,
    /// (path relative to the modules dir, its dependencies), in load order.
    modules: Vec<(String, Vec<String>)>,
    boot: BTreeSet<String>,
    /// (path in the guest, host file) for busybox, nvme-cli and its libraries.
    files: Vec<(String, PathBuf)>,
    applets: Vec<String>,
}

impl Plan {
    fn new(env: &HostEnv) -> Result<Plan> {
        let modules_dir = env.modules_dir();
        let dep = std::fs::read_to_string(modules_dir.join("modules.dep"))
            .context("reading modules.dep")?;
        let builtin =
            std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
        let want: Vec<&str> = BOOT_MODULES
            .iter()
            .chain(ON_DEMAND_MODULES)
            .copied()
            .collect();
        let modules = module_closure(&dep, &builtin, &want)?;
        let deps = parse_modules_dep(&dep);
        let mut boot = BTreeSet::new();
        for name in BOOT_MODULES {
            if let Some(path) = deps.keys().find(|p| module_name(p) == *name) {
                boot.extend(
                    module_closure(&dep, &builtin, &[name])?
                        .into_iter()
                        .map(|m| m.0),
                );
                boot.insert(path.clone());
            }
        }

        let mut files = vec![("bin/busybox".to_string(), env.busybox.clone())];
        files.push(("usr/sbin/nvme".to_string(), env.nvme.clone()));
        for lib in ldd_closure(&env.nvme)? {
            let guest = lib.to_string_lossy().trim_start_matches('/').to_string();
            files.push((guest, lib));
        }
        let list = Command::new(&env.busybox)
            .arg("--list-full")
            .output()
            .context("running busybox --list-full")?;
        let applets = String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(str::to_string)
            .filter(|a| !a.is_empty() && a != "bin/busybox")
            .collect();
        Ok(Plan {
            kver: env.kver.clone(),
            modules_dir,
            modules,
            boot,
            files,
            applets,
        })
    }

    /// FNV-1a over the crate version, the embedded scripts and every input file's path, size
    /// and mtime: stable across processes and toolchains (unlike `DefaultHasher`).
    fn key(&self) -> Result<u64> {
        let mut h = Fnv::default();
        h.add(env!("CARGO_PKG_VERSION").as_bytes());
        h.add(INIT.as_bytes());
        h.add(HARNESS_SH.as_bytes());
        h.add(guest_hostnqn().as_bytes());
        let module_paths = self.modules.iter().map(|(p, _)| self.modules_dir.join(p));
        let file_paths = self.files.iter().map(|(_, p)| p.clone());
        for path in module_paths.chain(file_paths) {
            let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.add(path.as_os_str().as_encoded_bytes());
            h.add(&meta.len().to_le_bytes());
            h.add(&mtime.to_le_bytes());
        }
        for name in &self.boot {
            h.add(name.as_bytes());
        }
        Ok(h.0)
    }

    fn build(&self) -> Result<Vec<u8>> {
        let mut tree = Tree::default();
        for dir in [
            "proc", "sys", "dev", "tmp", "run", "etc/nvme", "sbin", "usr/bin",
        ] {
            tree.dir(dir);
        }
        tree.node("dev/console", 0o020600, (5, 1));
        tree.node("dev/null", 0o020666, (1, 3));
        tree.file("init", INIT.as_bytes().to_vec(), 0o755);
        tree.file(
            "lib/guest-harness.sh",
            HARNESS_SH.as_bytes().to_vec(),
            0o644,
        );
        tree.file(
            "etc/nvme/hostnqn",
            format!("{}\n", guest_hostnqn()).into_bytes(),
            0o644,
        );
        tree.file(
            "etc/nvme/hostid",
            format!("{GUEST_HOSTID}\n").into_bytes(),
            0o644,
        );

        for (guest, host) in &self.files {
            let data =
                std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
            tree.file(guest, data, 0o755);
        }
        for applet in &self.applets {
            let depth = applet.matches('/').count();
            tree.symlink(applet, &format!("{}bin/busybox", "../".repeat(depth)));
        }

        // Modules, decompressed (busybox insmod wants plain .ko files), plus a modules.dep
        // describing just these so `modprobe` works inside the guest.
        let mods = format!("lib/modules/{}", self.kver);
        let mut load = String::new();
        let mut dep = String::new();
        for (path, deps) in &self.modules {
            let data = read_module(&self.modules_dir.join(path))?;
            let plain = strip_compression(path);
            tree.file(&format!("{mods}/{plain}"), data, 0o644);
            let deps: Vec<&str> = deps.iter().map(|d| strip_compression(d)).collect();
            dep.push_str(&format!("{plain}: {}\n", deps.join(" ")));
            if self.boot.contains(path) {
                load.push_str(plain);
                load.push('\n');
            }
        }
        tree.file(&format!("{mods}/modules.dep"), dep.into_bytes(), 0o644);
        tree.file("etc/modules.load", load.into_bytes(), 0o644);
        if let Ok(b) = std::fs::read(self.modules_dir.join("modules.builtin")) {
            tree.file(&format!("{mods}/modules.builtin"), b, 0o644);
        }
        Ok(tree.cpio())
    }
}

#[derive(Default)]
struct Fnv(u64);
impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        if self.0 == 0 {
            self.0 = 0xcbf2_9ce4_8422_2325;
        }
        for b in bytes.iter().chain(&[0xff]) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn strip_compression(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext))
        .unwrap_or(path)
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = match () {
        _ if name.ends_with(".xz") => "xz",
        _ if name.ends_with(".zst") => "zstd",
        _ if name.ends_with(".gz") => "gzip",
        _ => return std::fs::read(path).with_context(|| format!("reading {name}")),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} -dc {name}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name} failed");
    }
    Ok(out.stdout)
}

/// `kernel/fs/configfs/configfs.ko` -> `configfs`; `nvme-tcp.ko.xz` -> `nvme_tcp`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = strip_compression(base);
    base.strip_suffix(".ko").unwrap_or(base).replace('-', "_")
}

fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.split_whitespace().map(String::from).collect(),
            )
        })
        .collect()
}

/// Modules `want` and their dependencies in load order (dependencies first). Built-in modules
/// are skipped; an unknown module is an error.
fn module_closure(dep: &str, builtin: &str, want: &[&str]) -> Result<Vec<(String, Vec<String>)>> {
    let deps = parse_modules_dep(dep);
    let by_name: BTreeMap<String, &String> = deps.keys().map(|k| (module_name(k), k)).collect();
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, Vec<String>)>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        let d = deps.get(path).cloned().unwrap_or_default();
        for p in &d {
            visit(p, deps, seen, order);
        }
        order.push((path.to_string(), d));
    }
    for name in want {
        let name = name.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        let Some(path) = by_name.get(&name) else {
            bail!("kernel module {name} is neither in modules.dep nor built in");
        };
        visit(path, &deps, &mut seen, &mut order);
    }
    Ok(order)
}

/// Shared libraries of `bin` (and the dynamic loader), as `ldd` resolves them on the host.
fn ldd_closure(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed", bin.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        } else if line.contains("not found") {
            bail!("{}: {line}", bin.display());
        }
    }
    Ok(libs)
}

enum Entry {
    Dir,
    File(Vec<u8>, u32),
    Symlink(String),
    Node(u32, (u32, u32)),
}

/// In-memory file tree, written as a newc cpio archive.
#[derive(Default)]
struct Tree(BTreeMap<String, Entry>);

impl Tree {
    /// Adds `path` and its parents as directories (the kernel's unpacker does not create them).
    fn dir(&mut self, path: &str) {
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            self.0.entry(cur.clone()).or_insert(Entry::Dir);
        }
    }
    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }
    fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.parent(path);
        self.0.insert(path.to_string(), Entry::File(data, mode));
    }
    fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.0
            .entry(path.to_string())
            .or_insert(Entry::Symlink(target.to_string()));
    }
    fn node(&mut self, path: &str, mode: u32, dev: (u32, u32)) {
        self.parent(path);
        self.0.insert(path.to_string(), Entry::Node(mode, dev));
    }

    fn cpio(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // BTreeMap order puts every directory before its contents ("a" < "a/b").
        for (ino, (path, entry)) in self.0.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040755, &[], (0, 0)),
                Entry::File(d, m) => (0o100000 | m, d, (0, 0)),
                Entry::Symlink(t) => (0o120777, t.as_bytes(), (0, 0)),
                Entry::Node(m, dev) => (*m, &[], *dev),
            };
            cpio_entry(&mut out, ino as u32 + 1, mode, rdev, path, data);
        }
        cpio_entry(&mut out, 0, 0, (0, 0), "TRAILER!!!", &[]);
        out
    }
}

fn cpio_entry(out: &mut Vec<u8>, ino: u32, mode: u32, rdev: (u32, u32), name: &str, data: &[u8]) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/nvme/host/nvme-tcp.ko: kernel/drivers/nvme/host/nvme-fabrics.ko\n\
        kernel/drivers/nvme/host/nvme-fabrics.ko:\n\
        kernel/drivers/nvme/target/nvmet-tcp.ko.xz: kernel/drivers/nvme/target/nvmet.ko kernel/fs/configfs/configfs.ko\n\
        kernel/drivers/nvme/target/nvmet.ko: kernel/fs/configfs/configfs.ko\n\
        kernel/fs/configfs/configfs.ko:\n";

    #[test]
    fn closure_orders_dependencies_first_and_skips_builtins() {
        let builtin = "kernel/drivers/nvme/host/nvme-core.ko\n";
        let order = module_closure(DEP, builtin, &["nvme-core", "nvmet_tcp", "nvme_tcp"]).unwrap();
        let names: Vec<String> = order.iter().map(|(p, _)| module_name(p)).collect();
        assert_eq!(
            names,
            ["configfs", "nvmet", "nvmet_tcp", "nvme_fabrics", "nvme_tcp"]
        );
        assert!(module_closure(DEP, builtin, &["nope"]).is_err());
        assert_eq!(strip_compression("a/nvmet-tcp.ko.xz"), "a/nvmet-tcp.ko");
    }

    #[test]
    fn cpio_has_parents_first_and_aligned_entries() {
        let mut t = Tree::default();
        t.file("a/b/c", b"hello".to_vec(), 0o644);
        t.symlink("bin/sh", "busybox");
        let img = t.cpio();
        let names: Vec<&String> = t.0.keys().collect();
        assert_eq!(names, ["a", "a/b", "a/b/c", "bin", "bin/sh"]);
        assert_eq!(&img[..6], b"070701");
        assert_eq!(img.len() % 4, 0);
        assert!(img.windows(10).any(|w| w == b"TRAILER!!!"));
        // first entry: 110-byte header + "a\0" padded to 4
        assert_eq!(&img[110..112], b"a\0");
        assert_eq!(&img[112..118], b"070701");
    }

    #[test]
    fn fnv_is_stable() {
        let mut h = Fnv::default();
        h.add(b"guest");
        assert_eq!(h.0, {
            let mut x = Fnv::default();
            x.add(b"guest");
            x.0
        });
        let mut other = Fnv::default();
        other.add(b"guesT");
        assert_ne!(h.0, other.0);
    }
}
