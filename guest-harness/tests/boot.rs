//! The harness itself: a guest boots, runs its script, reports rc and output.

use std::time::{Duration, Instant};

use guest_harness::{Guest, GuestError};

fn skip(test: &str) -> bool {
    match guest_harness::available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("skipped {test}: {why}");
            true
        }
    }
}

#[test]
fn boot_reports_rc_and_output() {
    if skip("boot_reports_rc_and_output") {
        return;
    }
    let env = guest_harness::HostEnv::load().unwrap();
    let out = Guest::builder()
        .script("echo KVER=$(uname -r)\necho to-stderr >&2\nip -4 addr show eth0 | awk '/inet /{print \"IP=\" $2}'\nexit 7\n")
        .timeout(Duration::from_secs(120))
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    eprintln!("boot took {:?}\n{}", out.elapsed, out.console);
    // every boot module loaded and eth0 configured
    assert!(!out.console.contains("failed"), "{}", out.describe());
    assert_eq!(out.rc, 7, "{}", out.describe());
    assert_eq!(
        out.value("KVER"),
        Some(env.kver.as_str()),
        "{}",
        out.describe()
    );
    assert_eq!(out.value("IP"), Some("10.0.2.15/24"), "{}", out.describe());
    assert!(out.output.contains("to-stderr\n"), "{}", out.describe());
    assert!(out.check_success().is_err());
}

/// A guest that outlives its timeout is killed and reported as such, promptly.
#[test]
fn timeout_kills_the_guest() {
    if skip("timeout_kills_the_guest") {
        return;
    }
    let start = Instant::now();
    let err = Guest::builder()
        .script("sleep 600\n")
        .timeout(Duration::from_secs(3))
        .spawn()
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<GuestError>(),
            Some(GuestError::Timeout { .. })
        ),
        "{err:#}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

/// wait_for_line sees a line while the guest runs; dropping the guest kills QEMU.
#[test]
fn drop_kills_a_running_guest() {
    if skip("drop_kills_a_running_guest") {
        return;
    }
    let guest = Guest::builder()
        .script("echo STARTED=1\nidle\n")
        .no_network()
        .timeout(Duration::from_secs(120))
        .spawn()
        .unwrap();
    let line = guest
        .wait_for_line("STARTED=", Duration::from_secs(100))
        .unwrap();
    assert_eq!(line, "STARTED=1");
    let proc = std::path::PathBuf::from(format!("/proc/{}", guest.pid()));
    assert!(proc.exists());
    drop(guest);
    // the supervisor reaped QEMU before drop returned
    assert!(!proc.exists(), "QEMU still running after drop");
}
