//! SPDK's own client (`spdk-rpc`, PyPI `spdk`) against this server.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// `spdk-rpc`, or why it cannot be used.
fn spdk_rpc() -> Result<String, String> {
    match Command::new("spdk-rpc").arg("--help").output() {
        Ok(o) if o.status.success() => Ok("spdk-rpc".into()),
        Ok(o) => Err(format!("spdk-rpc --help exited with {}", o.status)),
        Err(e) => Err(format!("spdk-rpc not found ({e}); pip install spdk")),
    }
}

fn run(rpc: &str, sock: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(rpc)
        .arg("-s")
        .arg(sock)
        .args(args)
        .output()
        .expect("run spdk-rpc")
}

#[test]
fn spdk_rpc_client() {
    let rpc = match spdk_rpc() {
        Ok(r) => r,
        Err(why) => {
            println!("skipped spdk_rpc_client: {why}");
            return;
        }
    };
    let srv = server();

    let out = run(&rpc, srv.path(), &["spdk_get_version"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["version"], "SPDK v26.09 native");
    assert_eq!(v["fields"]["major"], 26);

    let out = run(&rpc, srv.path(), &["rpc_get_methods"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v, serde_json::json!(METHODS));

    // An unknown method: spdk-rpc reports the server's error and fails.
    let out = run(&rpc, srv.path(), &["bdev_get_bdevs"]);
    assert!(!out.status.success());
    // spdk-rpc prints the error response on stdout.
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        err.contains("-32601") && err.contains("Method not found"),
        "{err}"
    );
}
