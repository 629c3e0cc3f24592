//! A test dispatcher and raw-socket helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jsonrpc::{INVALID_PARAMS, METHOD_NOT_FOUND, Reply, Server};
use serde_json::{Value, json};

pub const METHODS: &[&str] = &[
    "spdk_get_version",
    "rpc_get_methods",
    "echo",
    "fail",
    "later",
    "drop",
    "panic",
];

/// Methods covering every way a host may answer.
pub fn dispatch(method: &str, params: Option<Value>, reply: Reply) {
    match method {
        "spdk_get_version" if params.is_some() => reply.err(
            INVALID_PARAMS,
            "spdk_get_version method requires no parameters",
        ),
        "spdk_get_version" => reply.ok(json!({
            "version": "SPDK v26.09 native",
            "fields": {"major": 26, "minor": 9, "patch": 0, "suffix": " native"}
        })),
        "rpc_get_methods" => reply.ok(json!(METHODS)),
        "echo" => reply.ok(params.unwrap_or(Value::Null)),
        // An SPDK-style negative errno, passed through.
        "fail" => reply.err(-19, "No such device"),
        "later" => {
            let ms = params
                .as_ref()
                .and_then(|p| p["ms"].as_u64())
                .unwrap_or(100);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                reply.ok(params.unwrap_or(Value::Null));
            });
        }
        "drop" => drop(reply),
        "panic" => panic!("test handler panics"),
        _ => reply.err(METHOD_NOT_FOUND, "Method not found"),
    }
}

pub fn sock_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "jsonrpc-test-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

pub fn server() -> Server {
    Server::bind(sock_path(), dispatch).expect("bind")
}

pub fn connect(server: &Server) -> UnixStream {
    let s = UnixStream::connect(server.path()).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Reads until `n` JSON values arrived (or 5 s passed) and returns them with
/// the raw text.
pub fn read_values(s: &mut UnixStream, n: usize) -> (Vec<Value>, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut raw = Vec::new();
    loop {
        let vals: Vec<Value> = serde_json::Deserializer::from_slice(&raw)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect();
        if vals.len() >= n || Instant::now() > deadline {
            return (vals, String::from_utf8_lossy(&raw).into_owned());
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return (vals, String::from_utf8_lossy(&raw).into_owned()),
            Ok(k) => raw.extend_from_slice(&buf[..k]),
            Err(_) => {}
        }
    }
}

/// Everything the server sends until it closes; None if it stays open 5 s.
pub fn read_to_close(s: &mut UnixStream) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut raw = Vec::new();
    while Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&raw).into_owned()),
            Ok(k) => raw.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&raw).into_owned());
            }
            Err(_) => {}
        }
    }
    None
}

/// Nothing more arrives within 300 ms and the connection is still open.
pub fn quiet(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 1];
    std::thread::sleep(Duration::from_millis(100));
    matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

pub fn send(s: &mut UnixStream, bytes: &[u8]) {
    s.write_all(bytes).expect("write");
}
