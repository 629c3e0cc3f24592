//! The JSON-RPC socket of the native node: a stream of JSON values per connection (split
//! or coalesced reads, no delimiters needed), answered in order with the id echoed and
//! SPDK's error objects; notifications get no answer. Batches and SPDK's size limits are
//! not handled yet: the workspace's `jsonrpc` crate, being written, replaces this.

use super::app::NativeNode;
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct RpcServer {
    path: PathBuf,
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn serve(node: Arc<NativeNode>, path: &Path) -> std::io::Result<RpcServer> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let n = node.clone();
            std::thread::spawn(move || conn(n, s));
        }
    });
    Ok(RpcServer {
        path: path.to_owned(),
    })
}

fn conn(node: Arc<NativeNode>, s: UnixStream) {
    let Ok(mut w) = s.try_clone() else { return };
    for v in serde_json::Deserializer::from_reader(s).into_iter::<Value>() {
        let Ok(v) = v else { return };
        let id = v.get("id").cloned();
        let method = v["method"].as_str().unwrap_or("").to_owned();
        let params = v.get("params").cloned();
        let r = futures::executor::block_on(node.call_async(method, params));
        let Some(id) = id else { continue };
        let resp = match r {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
        };
        if w.write_all(resp.to_string().as_bytes()).is_err() {
            return;
        }
    }
}
