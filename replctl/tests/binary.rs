//! End-to-end runs of the `replctl` binary against a scripted fake server,
//! covering what the library tests cannot: output, exit codes and the
//! `stop --failover --wait` loop.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread::{self, JoinHandle};

use serde_json::{Value, json};

/// Serves one connection, answering each request with `respond(method,
/// call number)`, which returns the response minus `jsonrpc` and `id`.
/// Yields the methods called once the client hangs up.
fn fake_spdk(
    test: &str,
    mut respond: impl FnMut(&str, usize) -> Value + Send + 'static,
) -> (PathBuf, JoinHandle<Vec<String>>) {
    let path = std::env::temp_dir().join(format!("replctl-{test}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // The accepted connection lives on without the path.
        std::fs::remove_file(listener.local_addr().unwrap().as_pathname().unwrap()).unwrap();
        let reader = stream.try_clone().unwrap();
        let mut methods = Vec::new();
        for request in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
            let request = request.unwrap();
            let method = request["method"].as_str().unwrap().to_owned();
            let mut response = respond(&method, methods.len());
            response["jsonrpc"] = json!("2.0");
            response["id"] = request["id"].clone();
            stream.write_all(response.to_string().as_bytes()).unwrap();
            methods.push(method);
        }
        methods
    });
    (path, handle)
}

fn replctl(socket: &PathBuf, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("REPLCTL_SOCKET")
        .output()
        .unwrap()
}

fn secondary(stage: &str, error: Value, done_bytes: u64) -> Value {
    json!({"name": "s0", "mode": "secondary", "stage": stage, "error": error,
           "cow_granularity": 16384, "ingress_name": "s0_ingress", "counters": {},
           "merge": {"total_bytes": 4096, "done_bytes": done_bytes}})
}

#[test]
fn failover_wait_reports_progress_and_completion() {
    let (socket, server) = fake_spdk("wait-ok", |method, call| match (method, call) {
        ("bdev_replication_stop", _) => json!({"result": true}),
        (_, 1) => json!({"result": [secondary("failover", Value::Null, 1024)]}),
        _ => json!({"result": [secondary("done", Value::Null, 4096)]}),
    });
    let out = replctl(&socket, &["stop", "s0", "--failover", "--wait"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "s0: merge complete (4096 bytes)\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "s0: failover: merged 1024/4096 bytes (25.0%)\n"
    );
    assert!(out.status.success());
    assert_eq!(
        server.join().unwrap(),
        [
            "bdev_replication_stop",
            "bdev_replication_get_status",
            "bdev_replication_get_status"
        ]
    );
}

#[test]
fn failover_wait_fails_on_failover_failed() {
    let (socket, server) = fake_spdk("wait-fail", |method, _| match method {
        "bdev_replication_stop" => json!({"result": true}),
        _ => json!({"result": [secondary("failover_failed", json!("EIO on base"), 0)]}),
    });
    let out = replctl(&socket, &["stop", "--failover", "--wait"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "replctl: s0: failover failed: EIO on base\n"
    );
    assert_eq!(out.status.code(), Some(1));
    server.join().unwrap();
}

#[test]
fn rpc_error_is_reported_with_code() {
    let (socket, server) = fake_spdk(
        "rpc-error",
        |_, _| json!({"error": {"code": -19, "message": "No such device"}}),
    );
    let out = replctl(&socket, &["delete", "nope"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "replctl: bdev_replication_delete: No such device (code -19)\n"
    );
    assert_eq!(out.status.code(), Some(1));
    server.join().unwrap();
}

#[test]
fn usage_error_exits_before_connecting() {
    let socket = std::env::temp_dir().join("replctl-usage-no-such.sock");
    let out = replctl(
        &socket,
        &[
            "create",
            "--name",
            "s0",
            "--mode",
            "secondary",
            "--hidden-bdev",
            "H",
            "--active-bdev",
            "A",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--base-bdev is required with --mode secondary"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(2));
}
