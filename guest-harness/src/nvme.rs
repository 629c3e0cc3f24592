//! NVMe/TCP fixtures: the guest kernel as target (nvmet-tcp) or initiator (nvme-cli).
//!
//! The scripts call the shell helpers of `guest-harness.sh` (sourced in every guest), which
//! print `KEY=VALUE` lines: `NVMET_READY`, `NVME_DISCOVER_SUBNQN`, `NVME_CTRL`, `NVME_DEV`,
//! `NVME_MN`, `NVME_SUBNQN`, `NVME_CNTLID`, `MD5_WRITTEN`, `MD5_READ`, `IO_OK`, `NVME_DISCONNECTED`.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::guest::{Guest, GuestBuilder};

/// TCP port the guest's nvmet listens on (forwarded from the host port you choose).
pub const NVMET_GUEST_PORT: u16 = 4420;

/// The host's 127.0.0.1 as the guest sees it (QEMU user networking).
pub const HOST_ADDR_FROM_GUEST: &str = "10.0.2.2";

/// A kernel NVMe/TCP target (nvmet-tcp) exporting one memory-backed null_blk namespace.
#[derive(Debug, Clone)]
pub struct NvmetTarget {
    pub nqn: String,
    pub size_mib: u32,
    /// Logical block size of the namespace (512 or 4096).
    pub block_size: u32,
    /// Address nvmet binds inside the guest (default 0.0.0.0).
    pub traddr: String,
    /// Port nvmet listens on inside the guest (default 4420).
    pub trsvcid: u16,
}

impl NvmetTarget {
    pub fn new(nqn: impl Into<String>, size_mib: u32) -> Self {
        NvmetTarget {
            nqn: nqn.into(),
            size_mib,
            block_size: 512,
            traddr: "0.0.0.0".into(),
            trsvcid: NVMET_GUEST_PORT,
        }
    }

    /// Shell lines that configure the target; prints `NVMET_READY=<nqn>` once it listens.
    /// Combine with other script lines (e.g. an initiator against 127.0.0.1 in the same guest).
    pub fn setup_script(&self) -> String {
        format!(
            "nullb_create {size} {bs} || exit 90\n\
             nvmet_target {nqn} \"$NULLB\" {addr} {port} || exit 91\n",
            size = self.size_mib,
            bs = self.block_size,
            nqn = shell_quote(&self.nqn),
            addr = shell_quote(&self.traddr),
            port = self.trsvcid,
        )
    }

    /// Boots a guest running this target, reachable from the host at `127.0.0.1:host_port`,
    /// and returns once the target listens. It serves until the returned guest is dropped (or
    /// `builder`'s timeout passes). Use `builder` for extra kernel args or a longer timeout.
    pub fn spawn_with(&self, host_port: u16, builder: GuestBuilder) -> Result<Guest> {
        let script = format!("{}idle\n", self.setup_script());
        let guest = builder
            .script(script)
            .hostfwd(host_port, self.trsvcid)
            .spawn()?;
        guest
            .wait_for_line("NVMET_READY=", Duration::from_secs(150))
            .context("kernel nvmet target did not come up")?;
        Ok(guest)
    }
}

/// Boots a guest whose kernel serves `nqn` (one `size_mib` MiB null_blk namespace, 512-byte
/// blocks, any host allowed) over NVMe/TCP, reachable from the host at `127.0.0.1:host_port`.
/// Returns once the target listens; the target lives until the guest is dropped or 10 minutes.
/// Its discovery log advertises the guest-side listener (`0.0.0.0:4420`), not the host port.
pub fn kernel_nvmet_target(host_port: u16, nqn: &str, size_mib: u32) -> Result<Guest> {
    NvmetTarget::new(nqn, size_mib).spawn_with(
        host_port,
        Guest::builder().timeout(Duration::from_secs(600)),
    )
}

/// A guest script for the kernel initiator: `nvme discover` (prints `NVME_DISCOVER_SUBNQN=`),
/// `nvme connect` (prints `NVME_CTRL=`, `NVME_DEV=`), `nvme list`, `nvme id-ctrl` (`NVME_MN=`,
/// `NVME_SUBNQN=`, `NVME_CNTLID=`), an O_DIRECT write + read-back of `io_mib` MiB with md5
/// comparison (`IO_OK=1`; skipped when 0) and `nvme disconnect`. Exits non-zero at the first
/// failing step (exit codes 81-85). `addr` is as seen from the guest: use
/// [`HOST_ADDR_FROM_GUEST`] for a target on the host's 127.0.0.1.
pub fn nvme_initiator_script(addr: &str, port: u16, nqn: &str, io_mib: u32) -> String {
    let (a, n) = (shell_quote(addr), shell_quote(nqn));
    let mut s = format!(
        "nvme_discover {a} {port} || exit 81\n\
         nvme_connect_wait {a} {port} {n} || exit 82\n\
         nvme list\n\
         nvme_id_ctrl \"$NVME_CTRL\" || exit 83\n"
    );
    if io_mib > 0 {
        s.push_str(&format!("io_check \"$NVME_DEV\" {io_mib} || exit 84\n"));
    }
    s.push_str(&format!("nvme_disconnect {n} || exit 85\n"));
    s
}

/// Single-quotes `s` for the guest shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_quote_arguments() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        let s = nvme_initiator_script("10.0.2.2", 4420, "nqn.x:y", 1);
        assert!(s.contains("nvme_connect_wait '10.0.2.2' 4420 'nqn.x:y' || exit 82"));
        assert!(s.contains("io_check \"$NVME_DEV\" 1"));
        assert!(!nvme_initiator_script("a", 1, "n", 0).contains("io_check"));
        let t = NvmetTarget::new("nqn.t", 64).setup_script();
        assert!(t.contains("nullb_create 64 512") && t.contains("nvmet_target 'nqn.t'"));
    }
}
