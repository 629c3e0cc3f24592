//! The guest's virtio-blk driver on a vhost-user-blk backend (qemu-storage-daemon serving a
//! raw file): the guest sees /dev/vda, reads what the host wrote, and its writes land in the file.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_harness::{Guest, HostEnv};

/// qemu-storage-daemon, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_vhost_user_blk(qsd: &Path, image: &Path, socket: &Path) -> Daemon {
    let child = Command::new(qsd)
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=file0,filename={}", image.display()))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues=1",
            socket.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("starting qemu-storage-daemon");
    let mut daemon = Daemon(child);
    // bounded poll: the daemon creates the socket once it listens
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!("qemu-storage-daemon exited: {status}");
        }
        assert!(Instant::now() < deadline, "no vhost-user socket after 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

#[test]
fn virtio_blk_on_vhost_user_blk() {
    if let Err(why) = guest_harness::available() {
        eprintln!("skipped virtio_blk_on_vhost_user_blk: {why}");
        return;
    }
    let Some(qsd) = HostEnv::load().unwrap().qemu_storage_daemon() else {
        eprintln!("skipped virtio_blk_on_vhost_user_blk: no qemu-storage-daemon");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    let socket = dir.path().join("vhost.sock");
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(64 << 20).unwrap();
    file.write_all_at(b"HOST-WROTE-THIS!", 0).unwrap();
    let _daemon = serve_vhost_user_blk(&qsd, &image, &socket);

    let script = r#"
wait_for /dev/vda 10 || exit 20
echo VDA_SECTORS=$(cat /sys/block/vda/size)
echo HOST_MARK=$(dd if=/dev/vda bs=16 count=1 2>/dev/null)
{ printf GUEST-WROTE-THIS; dd if=/dev/zero bs=4080 count=1 2>/dev/null; } > /tmp/blk
dd if=/tmp/blk of=/dev/vda bs=4096 seek=256 oflag=direct 2>/dev/null || exit 21
io_check /dev/vda 1 2 || exit 22
"#;
    let out = Guest::builder()
        .script(script)
        .vhost_user_blk(&socket)
        .no_network()
        .timeout(Duration::from_secs(120))
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    out.check_success().unwrap();
    let why = out.describe();
    assert_eq!(out.value("VDA_SECTORS"), Some("131072"), "{why}");
    assert_eq!(out.value("HOST_MARK"), Some("HOST-WROTE-THIS!"), "{why}");
    assert_eq!(out.value("IO_OK"), Some("1"), "{why}");

    let file = std::fs::File::open(&image).unwrap();
    let mut mark = [0u8; 16];
    file.read_exact_at(&mut mark, 1 << 20).unwrap();
    assert_eq!(
        &mark, b"GUEST-WROTE-THIS",
        "guest write not in the host file"
    );
    let mut data = vec![0u8; 1 << 20];
    file.read_exact_at(&mut data, 2 << 20).unwrap();
    assert!(
        data.iter().any(|b| *b != 0),
        "io_check data not in the host file"
    );
}
