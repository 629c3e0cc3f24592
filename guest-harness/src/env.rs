//! Where the host-side pieces are: read from the manifest `provision.sh` writes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Default cache folder of `provision.sh`; `GUEST_HARNESS_DIR` overrides it (for both).
pub const DEFAULT_DIR: &str = "/var/cache/spdk-replication-guest";

/// The provisioned host environment (`$GUEST_HARNESS_DIR/harness.env`).
#[derive(Debug, Clone)]
pub struct HostEnv {
    /// Cache folder (kernel tree, private QEMU, built initramfs images).
    pub dir: PathBuf,
    /// Guest kernel release, e.g. `6.1.0-57-cloud-amd64`.
    pub kver: String,
    /// Root of the extracted kernel package (`boot/vmlinuz-KVER`, `lib/modules/KVER`).
    pub kernel_dir: PathBuf,
    pub qemu: PathBuf,
    /// Firmware folders for a privately extracted QEMU (one `-L` each); empty for a system QEMU.
    pub qemu_datadirs: Vec<PathBuf>,
    /// A statically linked busybox (Debian's busybox-static).
    pub busybox: PathBuf,
    /// nvme-cli, copied into the guest with its shared libraries.
    pub nvme: PathBuf,
}

impl HostEnv {
    pub fn dir() -> PathBuf {
        std::env::var_os("GUEST_HARNESS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
    }

    /// Reads the manifest and checks that every file it names exists.
    pub fn load() -> Result<HostEnv> {
        let dir = Self::dir();
        let manifest = dir.join("harness.env");
        let text = std::fs::read_to_string(&manifest).with_context(|| {
            format!(
                "no {} (run guest-harness/provision.sh as root)",
                manifest.display()
            )
        })?;
        let env = Self::parse(&dir, &text)?;
        env.check()?;
        Ok(env)
    }

    fn parse(dir: &Path, text: &str) -> Result<HostEnv> {
        let get = |key: &str| -> Option<String> {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        };
        let need = |key: &str| -> Result<String> {
            match get(key) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => bail!("{} has no {key}=", dir.join("harness.env").display()),
            }
        };
        Ok(HostEnv {
            dir: dir.to_path_buf(),
            kver: need("KVER")?,
            kernel_dir: need("KERNEL_DIR")?.into(),
            qemu: need("QEMU")?.into(),
            qemu_datadirs: get("QEMU_DATADIR")
                .unwrap_or_default()
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            busybox: need("BUSYBOX")?.into(),
            nvme: need("NVME")?.into(),
        })
    }

    fn check(&self) -> Result<()> {
        let items = [
            ("QEMU", self.qemu.clone()),
            ("guest kernel", self.vmlinuz()),
            (
                "guest kernel modules",
                self.modules_dir().join("modules.dep"),
            ),
            ("busybox", self.busybox.clone()),
            ("nvme-cli", self.nvme.clone()),
        ];
        for (what, path) in items {
            if !path.exists() {
                bail!(
                    "{what} missing: no {} (run guest-harness/provision.sh as root)",
                    path.display()
                );
            }
        }
        Ok(())
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.kernel_dir.join(format!("boot/vmlinuz-{}", self.kver))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.kernel_dir.join(format!("lib/modules/{}", self.kver))
    }

    /// `qemu-storage-daemon` (a vhost-user-blk backend for tests): the system one, else the one
    /// next to a privately extracted QEMU.
    pub fn qemu_storage_daemon(&self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join("qemu-storage-daemon"))
            .chain(self.qemu.parent().map(|d| d.join("qemu-storage-daemon")))
            .find(|p| p.is_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_manifest() {
        let text = "# c\nSTAMP=1\nKVER=6.1.0-57-cloud-amd64\nKERNEL_DIR=/k\nQEMU=/q/qemu\n\
                    QEMU_DATADIR=/a:/b\nBUSYBOX=/bin/busybox\nNVME=/usr/sbin/nvme\n";
        let env = HostEnv::parse(Path::new("/c"), text).unwrap();
        assert_eq!(env.kver, "6.1.0-57-cloud-amd64");
        assert_eq!(
            env.qemu_datadirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(
            env.vmlinuz(),
            PathBuf::from("/k/boot/vmlinuz-6.1.0-57-cloud-amd64")
        );
        let no_datadir = text.replace("QEMU_DATADIR=/a:/b", "QEMU_DATADIR=");
        assert!(
            HostEnv::parse(Path::new("/c"), &no_datadir)
                .unwrap()
                .qemu_datadirs
                .is_empty()
        );
        assert!(HostEnv::parse(Path::new("/c"), "KVER=x\n").is_err());
    }
}
