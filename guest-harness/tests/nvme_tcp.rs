//! The guest kernel as NVMe/TCP target (reached from the host through hostfwd) and as
//! initiator (nvme-cli against the same guest's nvmet over loopback).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use guest_harness::{
    Guest, HOST_ADDR_FROM_GUEST, NvmetTarget, free_port, kernel_nvmet_target, nvme_initiator_script,
};

fn skip(test: &str) -> bool {
    match guest_harness::available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("skipped {test}: {why}");
            true
        }
    }
}

/// NVMe/TCP ICReq (PDU type 0, HLEN = PLEN = 128, PFV 0, HPDA 0, no digests, MAXR2T 0).
fn icreq() -> [u8; 128] {
    let mut pdu = [0u8; 128];
    pdu[0] = 0x00; // type: ICReq
    pdu[2] = 128; // hlen
    pdu[4..8].copy_from_slice(&128u32.to_le_bytes()); // plen
    pdu
}

#[test]
fn kernel_target_answers_icreq_through_hostfwd() {
    if skip("kernel_target_answers_icreq_through_hostfwd") {
        return;
    }
    let port = free_port().unwrap();
    let nqn = "nqn.2024-01.io.spdk-replication:guest-target";
    let target = kernel_nvmet_target(port, nqn, 64).unwrap();

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&icreq()).unwrap();
    let mut resp = [0u8; 128];
    s.read_exact(&mut resp)
        .unwrap_or_else(|e| panic!("no ICResp: {e}\n{}", target.console()));
    assert_eq!(resp[0], 0x01, "PDU type ICResp");
    assert_eq!(resp[2], 128, "hlen");
    assert_eq!(
        u32::from_le_bytes(resp[4..8].try_into().unwrap()),
        128,
        "plen"
    );
    assert_eq!(
        u16::from_le_bytes(resp[8..10].try_into().unwrap()),
        0,
        "pfv"
    );
    assert_eq!(resp[11], 0, "no digests were asked for");
    let maxh2cdata = u32::from_le_bytes(resp[12..16].try_into().unwrap());
    assert!(
        maxh2cdata >= 4096 && maxh2cdata % 4 == 0,
        "maxh2cdata {maxh2cdata}"
    );
    drop(s);
    drop(target); // kills the guest
}

#[test]
fn nvme_cli_initiator_against_in_guest_nvmet() {
    if skip("nvme_cli_initiator_against_in_guest_nvmet") {
        return;
    }
    let nqn = "nqn.2024-01.io.spdk-replication:loopback";
    let mut target = NvmetTarget::new(nqn, 32);
    target.traddr = "127.0.0.1".into();
    let script = format!(
        "{}{}",
        target.setup_script(),
        nvme_initiator_script("127.0.0.1", target.trsvcid, nqn, 1)
    );
    let out = Guest::builder()
        .script(script)
        .append("nvme_core.admin_timeout=15")
        .no_network()
        .timeout(Duration::from_secs(150))
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    out.check_success().unwrap();
    let why = out.describe();
    assert!(out.values("NVME_DISCOVER_SUBNQN").contains(&nqn), "{why}");
    assert_eq!(out.value("NVME_SUBNQN"), Some(nqn), "{why}");
    assert!(
        out.value("NVME_MN").is_some_and(|m| m.starts_with("Linux")),
        "{why}"
    );
    assert!(
        out.value("NVME_DEV")
            .is_some_and(|d| d.starts_with("/dev/nvme")),
        "{why}"
    );
    assert_eq!(out.value("IO_OK"), Some("1"), "{why}");
    assert_eq!(out.value("MD5_WRITTEN"), out.value("MD5_READ"), "{why}");
    assert_eq!(out.value("NVME_DISCONNECTED"), Some(nqn), "{why}");
    eprintln!("{}", out.output);
}

/// Guest initiator -> 10.0.2.2 (the host's 127.0.0.1) -> hostfwd -> a second guest's nvmet:
/// the path a guest initiator takes to a target listening on the host.
#[test]
fn guest_initiator_reaches_host_port() {
    if skip("guest_initiator_reaches_host_port") {
        return;
    }
    let port = free_port().unwrap();
    let nqn = "nqn.2024-01.io.spdk-replication:via-host";
    let mut target = NvmetTarget::new(nqn, 64);
    target.block_size = 4096;
    let _target = target
        .spawn_with(port, Guest::builder().timeout(Duration::from_secs(300)))
        .unwrap();
    let script = format!(
        "nvme_connect_wait {HOST_ADDR_FROM_GUEST} {port} {nqn} || exit 1\n\
         echo LBA=$(cat /sys/block/${{NVME_DEV#/dev/}}/queue/logical_block_size)\n\
         io_check \"$NVME_DEV\" 2 1 || exit 2\n\
         nvme_disconnect {nqn} || exit 3\n"
    );
    let out = Guest::builder()
        .script(script)
        .append("nvme_core.admin_timeout=15")
        .timeout(Duration::from_secs(150))
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    out.check_success().unwrap();
    assert_eq!(out.value("LBA"), Some("4096"), "{}", out.describe());
    assert_eq!(out.value("IO_OK"), Some("1"), "{}", out.describe());
}
