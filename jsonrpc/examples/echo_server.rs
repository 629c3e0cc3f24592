//! A tiny server for trying the wire format by hand:
//! `cargo run -p jsonrpc --example echo_server -- /tmp/echo.sock`, then
//! `spdk-rpc -s /tmp/echo.sock spdk_get_version`. Stops (removing the
//! socket) when its standard input closes.

use jsonrpc::{METHOD_NOT_FOUND, Reply, Server};
use serde_json::{Value, json};

fn dispatch(method: &str, params: Option<Value>, reply: Reply) {
    match method {
        "spdk_get_version" => reply.ok(json!({
            "version": "SPDK v0.0 echo",
            "fields": {"major": 0, "minor": 0, "patch": 0, "suffix": " echo"}
        })),
        "rpc_get_methods" => reply.ok(json!(["spdk_get_version", "rpc_get_methods", "echo"])),
        "echo" => reply.ok(params.unwrap_or(Value::Null)),
        _ => reply.err(METHOD_NOT_FOUND, "Method not found"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/echo.sock".into());
    let server = Server::bind(&path, dispatch)?;
    eprintln!("listening on {path}; close stdin to stop");
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    server.shutdown();
    Ok(())
}
