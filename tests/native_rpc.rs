//! The native node's JSON-RPC server and framework as SPDK clients use them: startup and
//! runtime states (`--wait-for-rpc`, `framework_start_init`, `rpc_get_methods current`),
//! the `--json` loader's two passes and explicit batches, `spdk-rpc save_config` /
//! `load_config` (built on `framework_get_subsystems` / `framework_get_config`), and
//! JSON-RPC batches on the wire.

mod native;

use native::*;
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const STARTUP_ONLY: &str = "Method may only be called after framework is initialized using \
                            framework_start_init RPC.";

fn methods(n: &Node, current: bool) -> Vec<String> {
    serde_json::from_value(n.ok("rpc_get_methods", json!({"current": current}))).unwrap()
}

fn names(n: &Node) -> Vec<String> {
    let mut v: Vec<String> = n
        .ok("bdev_get_bdevs", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn malloc(name: &str) -> Value {
    json!({"method": "bdev_malloc_create",
           "params": {"name": name, "num_blocks": 256, "block_size": 4096}})
}

#[test]
fn wait_for_rpc_holds_the_runtime_pass_until_framework_start_init() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = json!({"subsystems": [
        // Not a subsystem of this host: skipped, as SPDK skips subsystems not linked in.
        {"subsystem": "accel", "config": [{"method": "accel_set_options", "params": {}}]},
        {"subsystem": "bdev", "config": [
            {"method": "bdev_nvme_set_options", "params": {"timeout_us": 0}},
            malloc("m0"),
            // An explicit batch, run in the runtime pass as one.
            [malloc("m1"), malloc("m2")],
        ]},
    ]});
    let file = tmp.path().join("cfg.json");
    std::fs::write(&file, cfg.to_string()).unwrap();
    let f = file.to_str().unwrap();
    let n = Node::spawn(
        tmp.path(),
        "node",
        &["-m", "0x1", "--wait-for-rpc", "--json", f],
        false,
    );
    // Startup state: only startup methods, runtime ones refused with SPDK's message.
    let now = methods(&n, true);
    assert!(now.contains(&"framework_start_init".to_owned()), "{now:?}");
    assert!(!now.contains(&"bdev_malloc_create".to_owned()), "{now:?}");
    assert!(methods(&n, false).contains(&"bdev_malloc_create".to_owned()));
    assert_eq!(
        n.rpc("bdev_get_bdevs", Value::Null),
        Err((-1, STARTUP_ONLY.to_owned()))
    );
    // The startup pass ran (bdev_nvme_set_options is a startup method), the runtime one not.
    let e = n.rpc("framework_start_init", json!({"x": 1})).unwrap_err();
    assert_eq!(e.0, -32602, "{e:?}");
    assert_eq!(n.ok("framework_start_init", Value::Null), true);
    assert_eq!(n.ok("framework_wait_init", Value::Null), true);
    assert_eq!(names(&n), ["m0", "m1", "m2"]);
    let saved = n.ok("save_config", Value::Null);
    let bdev = &saved["subsystems"][0];
    assert_eq!(bdev["subsystem"], "bdev");
    assert_eq!(bdev["config"][0]["method"], "bdev_nvme_set_options");
    // Runtime state: framework_start_init is over.
    assert!(!methods(&n, true).contains(&"framework_start_init".to_owned()));
    let e = n.rpc("framework_start_init", Value::Null).unwrap_err();
    assert_eq!(e.0, -1, "{e:?}");
    assert!(e.1.contains("--wait-for-rpc"), "{e:?}");
}

#[test]
fn a_failing_config_call_names_the_entry_and_stops_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        malloc("m0"),
        {"method": "bdev_no_such_thing", "params": {}},
    ]}]});
    let file = tmp.path().join("bad.json");
    std::fs::write(&file, cfg.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replication_tgt"))
        .args(["--host", "native", "-r"])
        .arg(tmp.path().join("s.sock"))
        .arg("--json")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config[1] bdev_no_such_thing") && err.contains("was not found"),
        "{err}"
    );
}

#[test]
fn spdk_rpc_save_config_and_load_config_round_trip() {
    if !has_spdk_rpc() {
        eprintln!(
            "skipped spdk_rpc_save_config_and_load_config_round_trip: spdk-rpc not installed"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = ports();
    let a = Node::spawn(tmp.path(), "a", &["-m", "0x1"], true);
    for m in ["b0", "h0", "a0"] {
        a.ok(
            "bdev_malloc_create",
            json!({"name": m, "num_blocks": 512, "block_size": 4096}),
        );
    }
    a.ok(
        "bdev_replication_create",
        json!({"name": "r0", "mode": "secondary", "base_bdev": "b0",
               "hidden_bdev": "h0", "active_bdev": "a0"}),
    );
    a.ok("nvmf_create_transport", json!({"trtype": "TCP"}));
    let nqn = "nqn.2016-06.io.spdk:r0";
    a.ok(
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "allow_any_host": true}),
    );
    a.ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": "r0"}}),
    );
    a.ok(
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
               "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
    let out = a.spdk_rpc(&["save_config"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(saved, a.ok("save_config", Value::Null));
    let file = tmp.path().join("saved.json");
    std::fs::write(&file, &out.stdout).unwrap();
    drop(a);

    // load_config into a node waiting for RPC: startup pass, framework_start_init, runtime.
    let b = Node::spawn(tmp.path(), "b", &["-m", "0x1", "--wait-for-rpc"], false);
    let out = b
        .spdk_rpc(&["load_config", "-j", file.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("skipped"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(b.ok("framework_wait_init", Value::Null), true);
    assert_eq!(b.ok("save_config", Value::Null), saved);
    assert_eq!(b.status("r0")["mode"], "secondary");
    let subs = b.ok("nvmf_get_subsystems", Value::Null);
    assert!(subs.to_string().contains(nqn), "{subs}");
    let e = b
        .rpc("framework_get_config", json!({"name": "nope"}))
        .unwrap_err();
    assert_eq!(e, (-32602, "Subsystem 'nope' not found".to_owned()));
}

/// Sends `req` on a fresh connection and reads one JSON value back.
fn exchange(n: &Node, req: &str) -> Value {
    let mut s = UnixStream::connect(&n.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    serde_json::Deserializer::from_reader(&mut s)
        .into_iter::<Value>()
        .next()
        .unwrap()
        .unwrap()
}

#[test]
fn batches_are_answered_as_one_array_with_every_id() {
    let tmp = tempfile::tempdir().unwrap();
    let n = Node::spawn(tmp.path(), "node", &["-m", "0x1"], true);
    let r = exchange(
        &n,
        r#"[{"jsonrpc":"2.0","id":"a","method":"spdk_get_version"},
            {"jsonrpc":"2.0","method":"bdev_malloc_create",
             "params":{"name":"quiet","num_blocks":8,"block_size":4096}},
            {"jsonrpc":"2.0","id":7,"method":"bdev_get_bdevs","params":{"name":"missing"}},
            {"jsonrpc":"2.0","id":8,"method":"no_such_method"}]"#,
    );
    let r = r.as_array().expect("a batch answer is an array");
    // The notification gets no answer; the three others do, matched by id.
    assert_eq!(r.len(), 3, "{r:?}");
    let by_id = |id: Value| r.iter().find(|x| x["id"] == id).cloned().unwrap();
    assert!(by_id(json!("a"))["result"]["version"].is_string());
    assert_eq!(by_id(json!(7))["error"]["code"], -19);
    assert_eq!(by_id(json!(8))["error"]["code"], -32601);
    assert_eq!(names(&n), ["quiet"]);
    // A request split over writes is still one request.
    let mut s = UnixStream::connect(&n.sock).unwrap();
    s.write_all(br#"{"jsonrpc":"2.0","id":1,"me"#).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(br#"thod":"framework_wait_init"}"#).unwrap();
    let v: Value = serde_json::Deserializer::from_reader(&mut s)
        .into_iter::<Value>()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(v, json!({"jsonrpc": "2.0", "id": 1, "result": true}));
}
