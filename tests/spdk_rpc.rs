//! The RPC contract on a real `replication_tgt`, through SPDK's own Python client (raw
//! calls and `spdk-rpc` with the project's plugin) and through `replctl`; save_config and a
//! restart from the saved file.

mod spdk;

use serde_json::{Value, json};
use spdk::*;

fn malloc(app: &App, name: &str, blocks: u64, bs: u64) {
    app.ok(
        "bdev_malloc_create",
        json!({"name": name, "num_blocks": blocks, "block_size": bs}),
    );
}

fn bdev_names(app: &App) -> Vec<String> {
    let mut v: Vec<String> = app
        .ok("bdev_get_bdevs", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn claimed(app: &App, name: &str) -> bool {
    app.ok("bdev_get_bdevs", json!({"name": name}))[0]["claimed"]
        .as_bool()
        .unwrap()
}

fn empty_app(env: &Env, name: &str) -> App {
    App::start(env, name, &json!({"subsystems": []}), 0)
}

#[test]
fn create_errors_name_the_parameter_and_leave_nothing() {
    let Some(env) = env("create_errors_name_the_parameter_and_leave_nothing") else {
        return;
    };
    let app = empty_app(&env, "rpc-errors");
    for n in ["b0", "h0", "a0", "m1"] {
        malloc(&app, n, 2048, 4096);
    }
    malloc(&app, "small", 1024, 4096);
    malloc(&app, "b512", 16384, 512);
    let before = bdev_names(&app);
    let sec = |extra: Value| {
        let mut p = json!({"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                p.as_object_mut().unwrap().remove(k);
            } else {
                p[k] = v.clone();
            }
        }
        p
    };
    let cases: Vec<(Value, i64, &str)> = vec![
        (
            sec(json!({"base_bdev": null})),
            -22,
            "base_bdev: required with mode secondary",
        ),
        (
            sec(json!({"local_bdev": "m1"})),
            -22,
            "local_bdev: not valid with mode secondary",
        ),
        (
            sec(json!({"base_bdev": "nope"})),
            -19,
            "base_bdev: cannot open bdev nope",
        ),
        (
            sec(json!({"hidden_bdev": "b0"})),
            -22,
            "hidden_bdev: bdev b0 is already used as base_bdev",
        ),
        (
            sec(json!({"active_bdev": "small"})),
            -22,
            "active_bdev: size 1024 blocks differs from the base's 2048",
        ),
        (
            sec(json!({"hidden_bdev": "b512"})),
            -22,
            "hidden_bdev: block size 512 differs from the base's 4096",
        ),
        (
            sec(json!({"cow_granularity": 3000})),
            -22,
            "cow_granularity: 3000 must be a power of two",
        ),
        (
            sec(json!({"ingress_name": "s0"})),
            -22,
            "ingress_name: must be non-empty and differ from name",
        ),
        (
            sec(json!({"name": "m1"})),
            -17,
            "name: bdev m1 already exists",
        ),
        (
            sec(json!({"mode": "tertiary"})),
            -32602,
            "mode: unknown variant `tertiary`",
        ),
        (
            sec(json!({"colour": "blue"})),
            -32602,
            "colour: unknown field `colour`",
        ),
        (
            json!({"name": "p0", "mode": "primary", "local_bdev": "m1"}),
            -22,
            "remote_bdev: required with mode primary",
        ),
        (
            json!({"name": "p0", "mode": "primary", "local_bdev": "m1", "remote_bdev": "b0", "remote_timeout_ms": 0}),
            -22,
            "remote_timeout_ms: must be between 1 and 3600000, got 0",
        ),
    ];
    for (params, code, msg) in cases {
        let err = app
            .rpc("bdev_replication_create", params.clone())
            .expect_err(&params.to_string());
        assert_eq!(err.0, code, "{params}: {err:?}");
        assert!(
            err.1.starts_with(msg),
            "{params}: got {:?}, want {msg:?}",
            err.1
        );
        assert_eq!(bdev_names(&app), before, "{params} left something behind");
        for n in ["b0", "h0", "a0", "m1"] {
            assert!(!claimed(&app, n), "{params} left {n} claimed");
        }
    }
    // Already claimed by another module.
    app.ok(
        "bdev_passthru_create",
        json!({"base_bdev_name": "a0", "name": "pt"}),
    );
    let err = app
        .rpc("bdev_replication_create", sec(json!({})))
        .unwrap_err();
    assert_eq!(
        err,
        (-16, "active_bdev: bdev a0 is already claimed".to_string())
    );
    assert!(!claimed(&app, "b0") && !claimed(&app, "h0"));
    app.ok("bdev_passthru_delete", json!({"name": "pt"}));
    assert_eq!(
        app.ok("bdev_replication_create", sec(json!({}))),
        json!("s0")
    );
    assert!(claimed(&app, "b0") && claimed(&app, "h0") && claimed(&app, "a0"));
    let err = app
        .rpc("bdev_replication_create", sec(json!({"name": "s1"})))
        .unwrap_err();
    assert_eq!(err.0, -16, "{err:?}");
    let err = app
        .rpc("bdev_replication_delete", json!({"name": "zz"}))
        .unwrap_err();
    assert_eq!(err, (-19, "name: no replication bdev named zz".to_string()));
}

#[test]
fn control_rpcs_stage_rules_and_all_semantics() {
    let Some(env) = env("control_rpcs_stage_rules_and_all_semantics") else {
        return;
    };
    let app = empty_app(&env, "rpc-control");
    for n in ["b0", "h0", "a0", "l0", "r0"] {
        malloc(&app, n, 2048, 4096);
    }
    // Created through SPDK's CLI with the plugin, and through replctl.
    let out = app.spdk_rpc(&[
        "bdev_replication_create",
        "-b",
        "s0",
        "-m",
        "secondary",
        "--base-bdev",
        "b0",
        "--hidden-bdev",
        "h0",
        "--active-bdev",
        "a0",
        "--cow-granularity",
        "65536",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"s0\"");
    let out = app.replctl(
        &env,
        &[
            "create",
            "--name",
            "p0",
            "--mode",
            "primary",
            "--local-bdev",
            "l0",
            "--remote-bdev",
            "r0",
            "--remote-timeout-ms",
            "250",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "p0");

    let errors = app.ok("bdev_replication_get_error", Value::Null);
    assert_eq!(
        errors,
        json!([
            {"name": "p0", "stage": "none", "error": "Block replication is not running"},
            {"name": "s0", "stage": "none", "error": "Block replication is not running"},
        ])
    );
    // Stage errors, with the spec's texts and the bdev's name.
    let e = app
        .rpc("bdev_replication_checkpoint", json!({"name": "s0"}))
        .unwrap_err();
    assert_eq!(e, (-1, "s0: Block replication is not running".into()));
    let e = app
        .rpc(
            "bdev_replication_start",
            json!({"name": "s0", "mode": "primary"}),
        )
        .unwrap_err();
    assert_eq!(e.0, -22, "{e:?}");
    // Start all: most recent first (p0, then s0).
    app.ok("bdev_replication_start", Value::Null);
    let e = app.rpc("bdev_replication_start", Value::Null).unwrap_err();
    assert_eq!(
        e,
        (-1, "p0: Block replication is running or done".into()),
        "stops at the first error"
    );
    let out = app.replctl(&env, &["start", "s0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("s0: Block replication is running or done")
    );
    assert!(
        app.spdk_rpc(&["bdev_replication_checkpoint"])
            .status
            .success()
    );
    let st = app.status("s0");
    assert_eq!(
        (
            st["stage"].as_str(),
            st["cow_granularity"].as_u64(),
            st["ingress_name"].as_str()
        ),
        (Some("running"), Some(65536), Some("s0_ingress"))
    );
    assert_eq!(st["counters"]["checkpoints"], json!(1));
    assert_eq!(st["merge"], json!({"total_bytes": 0, "done_bytes": 0}));
    let st = app.status("p0");
    assert_eq!(
        (
            st["mode"].as_str(),
            st["remote_timeout_ms"].as_u64(),
            st["error"].clone()
        ),
        (Some("primary"), Some(250), Value::Null)
    );
    // bdev_get_bdevs shows driver_specific.replication for each of our bdevs.
    for (bdev, role) in [("s0", "top"), ("s0_ingress", "ingress"), ("p0", "primary")] {
        let b = app.ok("bdev_get_bdevs", json!({"name": bdev}))[0].clone();
        assert_eq!(
            b["driver_specific"]["replication"]["role"],
            json!(role),
            "{b}"
        );
        assert_eq!(b["product_name"], json!("COLO replication"));
    }
    // replctl status/get-error and stop --failover --wait.
    let out = app.replctl(&env, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let out = app.replctl(&env, &["stop", "--failover", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(app.status("s0")["stage"], "done");
    assert_eq!(app.status("p0")["stage"], "done");
    // Done: start/stop/checkpoint accepted and ignored.
    app.ok("bdev_replication_start", json!({"mode": "primary"}));
    app.ok("bdev_replication_checkpoint", Value::Null);
    app.ok("bdev_replication_stop", json!({"failover": true}));
    // Delete through replctl: bdevs gone, bases released.
    let out = app.replctl(&env, &["delete", "s0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!bdev_names(&app).contains(&"s0_ingress".to_string()));
    assert!(!claimed(&app, "b0") && !claimed(&app, "h0") && !claimed(&app, "a0"));
}

#[test]
fn save_config_then_restart_recreates_the_bdevs() {
    let Some(env) = env("save_config_then_restart_recreates_the_bdevs") else {
        return;
    };
    let mut app = empty_app(&env, "rpc-save");
    for n in ["b0", "h0", "a0", "l0", "r0"] {
        malloc(&app, n, 2048, 4096);
    }
    app.ok("bdev_replication_create", json!({"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0", "ingress_name": "s0_in"}));
    app.ok(
        "bdev_replication_create",
        json!({"name": "p0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "r0"}),
    );
    let out = std::process::Command::new("spdk-rpc")
        .arg("-s")
        .arg(&app.sock)
        .arg("save_config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let saved: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bdev_cfg = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap()["config"]
        .clone();
    let ours: Vec<Value> = bdev_cfg
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["method"] == "bdev_replication_create")
        .map(|e| e["params"].clone())
        .collect();
    assert_eq!(
        ours,
        vec![
            json!({"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0", "ingress_name": "s0_in", "cow_granularity": 16384}),
            json!({"name": "p0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "r0", "remote_timeout_ms": 1000, "sync_granularity": 65536}),
        ]
    );
    let status_before: Vec<Value> = ["s0", "p0"].iter().map(|n| app.status(n)).collect();
    let names_before = bdev_names(&app);
    app.stop();
    let path = env.tmp.path().join("saved.json");
    std::fs::write(&path, &out.stdout).unwrap();
    let app = App::start_file(&env, "rpc-restored", &path, 0);
    assert_eq!(bdev_names(&app), names_before);
    for (n, before) in ["s0", "p0"].iter().zip(status_before) {
        assert_eq!(app.status(n), before, "{n} after restart");
    }
}

#[test]
fn hot_remove_of_base_bdevs() {
    let Some(env) = env("hot_remove_of_base_bdevs") else {
        return;
    };
    let app = empty_app(&env, "rpc-hotremove");
    for n in ["b0", "h0", "a0", "l0", "r0"] {
        malloc(&app, n, 2048, 4096);
    }
    app.ok("bdev_replication_create", json!({"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0"}));
    app.ok(
        "bdev_replication_create",
        json!({"name": "p0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "r0"}),
    );
    app.ok("bdev_replication_start", Value::Null);
    // The primary's remote leg goes away: the link is broken, the bdev stays.
    app.ok("bdev_malloc_delete", json!({"name": "r0"}));
    let st = app.status("p0");
    assert_eq!(
        (
            st["stage"].clone(),
            st["error"].clone(),
            st["link_broken"].clone()
        ),
        (json!("running"), json!("I/O error occurred"), json!(true)),
        "{st}"
    );
    assert!(bdev_names(&app).contains(&"p0".to_string()));
    // Any other base goes away: the replication bdev goes away cleanly.
    app.ok("bdev_malloc_delete", json!({"name": "h0"}));
    let names = bdev_names(&app);
    assert!(
        !names.contains(&"s0".to_string()) && !names.contains(&"s0_ingress".to_string()),
        "{names:?}"
    );
    assert!(!claimed(&app, "b0") && !claimed(&app, "a0"));
    assert_eq!(
        app.ok("bdev_replication_get_status", Value::Null)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.ok("bdev_malloc_delete", json!({"name": "l0"}));
    assert!(
        app.ok("bdev_replication_get_status", Value::Null)
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(!claimed(&app, "b0"));
}

#[test]
fn top_exports_as_vhost_blk() {
    let Some(env) = env("top_exports_as_vhost_blk") else {
        return;
    };
    let app = empty_app(&env, "rpc-vhost");
    for n in ["b0", "h0", "a0"] {
        malloc(&app, n, 2048, 4096);
    }
    app.ok("bdev_replication_create", json!({"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0"}));
    let ctrlr = env.tmp.path().join("vhost.0");
    app.ok(
        "vhost_create_blk_controller",
        json!({"ctrlr": "vhost.0", "dev_name": "s0"}),
    );
    let ctrls = app.ok("vhost_get_controllers", Value::Null);
    assert_eq!(
        ctrls[0]["backend_specific"]["block"]["bdev"],
        json!("s0"),
        "{ctrls}"
    );
    assert!(ctrlr.exists(), "vhost-user socket");
    app.ok("vhost_delete_controller", json!({"ctrlr": "vhost.0"}));
}

/// Spec 5.5: deleting the bdev while the merge runs waits for the merge; the base is never
/// left half-merged. The base is a `bdev_delay` with 200 ms writes, so the merge of 32
/// clusters (16 in flight) is still running when the delete arrives.
#[test]
fn delete_during_merge_waits_for_it() {
    let Some(env) = env("delete_during_merge_waits_for_it") else {
        return;
    };
    let app = empty_app(&env, "rpc-delete-merge");
    for n in ["m0", "h0", "a0"] {
        malloc(&app, n, 4096, 4096);
    }
    app.ok("bdev_delay_create", json!({"base_bdev_name": "m0", "name": "slow0", "avg_read_latency": 0, "p99_read_latency": 0, "avg_write_latency": 200000, "p99_write_latency": 200000}));
    app.ok("bdev_replication_create", json!({"name": "s0", "mode": "secondary", "base_bdev": "slow0", "hidden_bdev": "h0", "active_bdev": "a0", "cow_granularity": 65536}));
    let port = ports();
    let export = |nqn: &str, bdev: &str| {
        app.ok(
            "nvmf_create_subsystem",
            json!({"nqn": nqn, "allow_any_host": true}),
        );
        app.ok(
            "nvmf_subsystem_add_ns",
            json!({"nqn": nqn, "namespace": {"bdev_name": bdev}}),
        );
        app.ok("nvmf_subsystem_add_listener", json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}));
        Export {
            port,
            nqn: nqn.into(),
        }
    };
    app.ok("nvmf_create_transport", json!({"trtype": "TCP"}));
    let top = export("nqn.2016-06.io.spdk:s0", "s0");
    app.ok("bdev_replication_start", json!({}));
    const DATA: u64 = 2 << 20;
    dd_write(&env, &top, 0, &fill(DATA, 0x3C)).unwrap();
    app.ok(
        "bdev_replication_stop",
        json!({"name": "s0", "failover": true}),
    );
    let st = app.status("s0");
    assert_eq!(st["stage"], "failover", "still merging: {st}");
    assert_eq!(st["merge"]["total_bytes"], json!(DATA));
    app.ok("bdev_replication_delete", json!({"name": "s0"}));
    assert!(
        app.ok("bdev_replication_get_status", Value::Null)
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.ok(
        "nvmf_delete_subsystem",
        json!({"nqn": "nqn.2016-06.io.spdk:s0"}),
    );
    let base = export("nqn.2016-06.io.spdk:base", "slow0");
    assert_runs(
        &dd_read(&env, &base, 0, DATA / BS).unwrap(),
        &[(DATA, 0x3C)],
        "base after delete",
    );
}

/// `replication_tgt` serves `-r` with its own RPC server (polled every `--rpc-poll-us`) or,
/// with `--rpc-poll-us 0`, with SPDK's: either answers SPDK's client, replies to handlers
/// that finish later (a checkpoint after its drain), answers `spdk_kill_instance` before
/// the process exits, and removes the socket at shutdown. A bad value is refused by name.
#[test]
fn rpc_socket_served_by_either_server_until_shutdown() {
    let Some(env) = env("rpc_socket_served_by_either_server_until_shutdown") else {
        return;
    };
    let cfg = env.tmp.path().join("rpc-servers.json");
    std::fs::write(&cfg, r#"{"subsystems": []}"#).unwrap();
    for (i, extra) in [&[][..], &["--rpc-poll-us", "0"], &["--rpc-poll-us", "2000"]]
        .into_iter()
        .enumerate()
    {
        let what = format!("replication_tgt {extra:?}");
        let mut app = App::start_args(&env, &format!("rpc-srv{i}"), &cfg, "0x1", extra);
        let methods = app.ok("rpc_get_methods", Value::Null);
        assert!(
            methods
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == "bdev_replication_checkpoint"),
            "{what}: {methods}"
        );
        for n in ["b0", "h0", "a0"] {
            malloc(&app, n, 2048, 4096);
        }
        app.ok(
            "bdev_replication_create",
            json!({"name": "s0", "mode": "secondary", "base_bdev": "b0",
                   "hidden_bdev": "h0", "active_bdev": "a0"}),
        );
        app.ok("bdev_replication_start", json!({"name": "s0"}));
        for _ in 0..3 {
            assert_eq!(
                app.ok("bdev_replication_checkpoint", json!({"name": "s0"})),
                json!(true),
                "{what}"
            );
        }
        assert_eq!(
            app.status("s0")["counters"]["checkpoints"],
            json!(3),
            "{what}"
        );
        let out = app.spdk_rpc(&["spdk_kill_instance", "SIGINT"]);
        assert!(
            out.status.success(),
            "{what}: spdk_kill_instance: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let st = loop {
            if let Some(st) = app.exited() {
                break st;
            }
            assert!(std::time::Instant::now() < deadline, "{what} did not exit");
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert!(st.success(), "{what} exited with {st}:\n{}", app.log_text());
        // Which server answered: ours says so at start-up, SPDK's does not.
        let ours = format!("JSON-RPC on {} polled every", app.sock.display());
        let expect = match extra {
            [] => Some(format!("{ours} 100 us")),
            [_, "2000"] => Some(format!("{ours} 2000 us")),
            _ => None,
        };
        let log = app.log_text();
        match expect {
            Some(line) => assert!(log.contains(&line), "{what}: no {line:?} in\n{log}"),
            None => assert!(!log.contains(&ours), "{what}: our server ran:\n{log}"),
        }
        assert!(!app.sock.exists(), "{what} left its RPC socket behind");
    }
    for bad in ["abc", "-5", "1000001"] {
        let out = std::process::Command::new(&env.tgt)
            .args(["--no-huge", "-s", "1024", "--no-pci", "--rpc-poll-us", bad])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--rpc-poll-us {bad}: {text}");
        assert!(
            text.contains("--rpc-poll-us"),
            "--rpc-poll-us {bad}: {text}"
        );
    }
}
