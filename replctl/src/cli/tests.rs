//! The command line's parsing and its mapping to requests.

use super::*;
use serde_json::json;

fn request(args: &[&str]) -> Result<Request, UsageError> {
    let cli = Cli::try_parse_from(std::iter::once("replctl").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?} did not parse: {e}"));
    cli.command.request()
}

fn expect(args: &[&str], method: &str, params: Option<Value>) {
    assert_eq!(
        request(args).unwrap(),
        Request {
            method: method.to_owned(),
            params
        },
        "{args:?}"
    );
}

#[test]
fn create_primary() {
    expect(
        &[
            "create",
            "--name",
            "r0",
            "--mode",
            "primary",
            "--local-bdev",
            "nvme0n1",
            "--remote-bdev",
            "nvmf0n1",
        ],
        "bdev_replication_create",
        Some(
            json!({"name": "r0", "mode": "primary", "local_bdev": "nvme0n1",
                    "remote_bdev": "nvmf0n1"}),
        ),
    );
    expect(
        &[
            "create",
            "--name",
            "r0",
            "--mode",
            "primary",
            "--local-bdev",
            "L",
            "--remote-bdev",
            "R",
            "--remote-timeout-ms",
            "5000",
        ],
        "bdev_replication_create",
        Some(json!({"name": "r0", "mode": "primary", "local_bdev": "L",
                    "remote_bdev": "R", "remote_timeout_ms": 5000})),
    );
}

#[test]
fn create_secondary() {
    expect(
        &[
            "create",
            "--name",
            "s0",
            "--mode",
            "secondary",
            "--base-bdev",
            "B",
            "--hidden-bdev",
            "H",
            "--active-bdev",
            "A",
        ],
        "bdev_replication_create",
        Some(json!({"name": "s0", "mode": "secondary", "base_bdev": "B",
                    "hidden_bdev": "H", "active_bdev": "A"})),
    );
    expect(
        &[
            "create",
            "--name",
            "s0",
            "--mode",
            "secondary",
            "--base-bdev",
            "B",
            "--hidden-bdev",
            "H",
            "--active-bdev",
            "A",
            "--ingress-name",
            "in0",
            "--cow-granularity",
            "65536",
        ],
        "bdev_replication_create",
        Some(json!({"name": "s0", "mode": "secondary", "base_bdev": "B",
                    "hidden_bdev": "H", "active_bdev": "A", "ingress_name": "in0",
                    "cow_granularity": 65536})),
    );
}

#[test]
fn create_validation() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--mode",
                "secondary",
                "--hidden-bdev",
                "H",
                "--active-bdev",
                "A",
            ],
            "--base-bdev is required with --mode secondary",
        ),
        (
            &[
                "--mode",
                "secondary",
                "--base-bdev",
                "B",
                "--hidden-bdev",
                "H",
            ],
            "--active-bdev is required with --mode secondary",
        ),
        (
            &["--mode", "primary", "--local-bdev", "L"],
            "--remote-bdev is required with --mode primary",
        ),
        (
            &[
                "--mode",
                "secondary",
                "--base-bdev",
                "B",
                "--hidden-bdev",
                "H",
                "--active-bdev",
                "A",
                "--local-bdev",
                "L",
            ],
            "--local-bdev is only valid with --mode primary",
        ),
        (
            &[
                "--mode",
                "secondary",
                "--base-bdev",
                "B",
                "--hidden-bdev",
                "H",
                "--active-bdev",
                "A",
                "--remote-timeout-ms",
                "10",
            ],
            "--remote-timeout-ms is only valid with --mode primary",
        ),
        (
            &[
                "--mode",
                "primary",
                "--local-bdev",
                "L",
                "--remote-bdev",
                "R",
                "--cow-granularity",
                "4096",
            ],
            "--cow-granularity is only valid with --mode secondary",
        ),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = ["create", "--name", "x"]
            .iter()
            .chain(*args)
            .copied()
            .collect();
        let err = request(&args).unwrap_err();
        assert_eq!(err.to_string(), *message, "{args:?}");
    }
}

#[test]
fn simple_commands() {
    expect(
        &["delete", "r0"],
        "bdev_replication_delete",
        Some(json!({"name": "r0"})),
    );
    expect(
        &["delete", "r0", "--force"],
        "bdev_replication_delete",
        Some(json!({"name": "r0", "force": true})),
    );
    expect(&["start"], "bdev_replication_start", None);
    expect(
        &["start", "r0", "--mode", "secondary"],
        "bdev_replication_start",
        Some(json!({"name": "r0", "mode": "secondary"})),
    );
    expect(&["checkpoint"], "bdev_replication_checkpoint", None);
    expect(
        &["checkpoint", "r0"],
        "bdev_replication_checkpoint",
        Some(json!({"name": "r0"})),
    );
    expect(&["status"], "bdev_replication_get_status", None);
    expect(
        &["status", "r0", "--json"],
        "bdev_replication_get_status",
        Some(json!({"name": "r0"})),
    );
    expect(&["get-error"], "bdev_replication_get_error", None);
    expect(
        &["get-error", "r0"],
        "bdev_replication_get_error",
        Some(json!({"name": "r0"})),
    );
}

#[test]
fn stop_always_sends_failover() {
    expect(
        &["stop"],
        "bdev_replication_stop",
        Some(json!({"failover": false})),
    );
    expect(
        &["stop", "r0", "--failover", "--wait"],
        "bdev_replication_stop",
        Some(json!({"name": "r0", "failover": true})),
    );
    let err = Cli::try_parse_from(["replctl", "stop", "--wait"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
}

#[test]
fn raw_rpc() {
    expect(&["rpc", "spdk_get_version"], "spdk_get_version", None);
    expect(
        &["rpc", "bdev_get_bdevs", r#"{"name":"r0"}"#],
        "bdev_get_bdevs",
        Some(json!({"name": "r0"})),
    );
    let err = Cli::try_parse_from(["replctl", "rpc", "m", "{bad"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
}

#[test]
fn global_options() {
    let cli = Cli::try_parse_from(["replctl", "status", "-s", "/tmp/x.sock", "-t", "5"]).unwrap();
    assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
    assert_eq!(cli.timeout, 5);
    assert!(Cli::try_parse_from(["replctl", "-t", "0", "status"]).is_err());
}

#[test]
fn resync_verify_and_start_sync_map_to_their_requests() {
    let req = |args: &[&str]| {
        let mut v = vec!["replctl"];
        v.extend_from_slice(args);
        let r = Cli::try_parse_from(v).unwrap().command.request().unwrap();
        (r.method, r.params)
    };
    assert_eq!(
        req(&["resync", "p0", "--full", "--wait"]),
        (
            "bdev_replication_resync".to_owned(),
            Some(serde_json::json!({"name": "p0", "full": true}))
        )
    );
    assert_eq!(
        req(&["verify", "p0"]),
        (
            "bdev_replication_verify".to_owned(),
            Some(serde_json::json!({"name": "p0"}))
        )
    );
    assert_eq!(
        req(&["reprotect", "s0", "s1n1", "--wait"]),
        (
            "bdev_replication_reprotect".to_owned(),
            Some(serde_json::json!({"name": "s0", "remote_bdev": "s1n1"}))
        )
    );
    assert_eq!(
        req(&["reprotect", "s0", "s1n1", "--sync", "incremental"]).1,
        Some(serde_json::json!({"name": "s0", "remote_bdev": "s1n1", "sync": "incremental"}))
    );
    assert!(Cli::try_parse_from(["replctl", "reprotect", "s0"]).is_err());
    assert_eq!(
        req(&["dirty-map", "p0"]),
        (
            "bdev_replication_get_dirty_map".to_owned(),
            Some(serde_json::json!({"name": "p0"}))
        )
    );
}

#[test]
fn reprotect_peer_map_is_read_from_a_dirty_map_file() {
    let req = |args: &[&str]| {
        let r = request(args).unwrap();
        (r.method, r.params)
    };
    let dir = std::env::temp_dir().join(format!("replctl-peer-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map = dir.join("a.map");
    // What `replctl dirty-map` prints on the former primary.
    std::fs::write(
        &map,
        r#"{"name": "p0", "block_size": 4096, "sync_granularity": 65536,
            "dirty_bytes": 196608, "extents": [[0, 65536], [1048576, 131072]]}"#,
    )
    .unwrap();
    let m = map.to_str().unwrap();
    assert_eq!(
        req(&[
            "reprotect",
            "s0",
            "s1n1",
            "--sync",
            "incremental",
            "--peer-map",
            m
        ])
        .1,
        Some(
            serde_json::json!({"name": "s0", "remote_bdev": "s1n1", "sync": "incremental",
                                "peer_dirty_extents": [[0, 65536], [1048576, 131072]]})
        )
    );
    std::fs::write(&map, "[[4096, 4096]]").unwrap();
    assert_eq!(
        req(&["reprotect", "s0", "s1n1", "--peer-map", m]).1,
        Some(serde_json::json!({"name": "s0", "remote_bdev": "s1n1",
                                "peer_dirty_extents": [[4096, 4096]]}))
    );
    for bad in [r#"{"extents": [[1]]}"#, r#"{"name": "p0"}"#, "not json"] {
        std::fs::write(&map, bad).unwrap();
        let e = Cli::try_parse_from(["replctl", "reprotect", "s0", "s1n1", "--peer-map", m])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--peer-map") && e.contains("a.map"), "{e}");
    }
    let e = Cli::try_parse_from([
        "replctl",
        "reprotect",
        "s0",
        "s1n1",
        "--peer-map",
        "/nonexistent/x",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("cannot read /nonexistent/x"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        req(&["start", "p0", "--sync", "full"]),
        (
            "bdev_replication_start".to_owned(),
            Some(serde_json::json!({"name": "p0", "sync": "full"}))
        )
    );
}
