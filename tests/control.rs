//! The control plane's RPC contract (spec section 6) on the RAM host: what both hosts
//! answer, checked without SPDK. The SPDK suites check the same through real processes.

use serde_json::{Value, json};
use spdk_replication::control::testing::RamHost;
use spdk_replication::engine::testing::OpKind;

const BLOCKS: u64 = 2048;
const BS: u32 = 4096;

fn host() -> RamHost {
    let h = RamHost::default();
    for n in ["b0", "h0", "a0", "m1", "l0", "r0"] {
        h.add_malloc(n, BS, BLOCKS);
    }
    h.add_malloc("small", BS, 1024);
    h.add_malloc("b512", 512, 16384);
    h
}

fn sec(extra: Value) -> Value {
    let mut p = json!({"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0"});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            p.as_object_mut().unwrap().remove(k);
        } else {
            p[k] = v.clone();
        }
    }
    p
}

fn ok(h: &RamHost, method: &str, params: Value) -> Value {
    h.call(method, params.clone())
        .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
}

fn err(h: &RamHost, method: &str, params: Value) -> (i32, String) {
    let e = h
        .call(method, params.clone())
        .expect_err(&format!("{method} {params} must fail"));
    (e.code, e.message)
}

#[test]
fn create_errors_name_the_parameter_and_leave_nothing() {
    let h = host();
    let cases: Vec<(Value, i32, &str)> = vec![
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
            sec(json!({"base_bdev": ""})),
            -22,
            "base_bdev: must not be empty",
        ),
        (
            sec(json!({"hidden_bdev": "b0"})),
            -22,
            "hidden_bdev: bdev b0 is already used as base_bdev",
        ),
        (
            sec(json!({"active_bdev": "s0"})),
            -22,
            "active_bdev: bdev s0 is the replication bdev itself",
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
            sec(json!({"cow_granularity": 1u64 << 40})),
            -22,
            "cow_granularity: 1099511627776 must be a power of two, at most 16777216",
        ),
        (
            sec(json!({"cow_granularity": 512})),
            -22,
            "cow_granularity: 512 must be a power of two between the block size 4096",
        ),
        (
            sec(json!({"cow_granularity": -1})),
            -32602,
            "cow_granularity: invalid value",
        ),
        (
            sec(json!({"ingress_name": "s0"})),
            -22,
            "ingress_name: must be non-empty and differ from name",
        ),
        (
            sec(json!({"ingress_name": "m1"})),
            -17,
            "name: bdev m1 already exists",
        ),
        (
            sec(json!({"name": "m1"})),
            -17,
            "name: bdev m1 already exists",
        ),
        (
            sec(json!({"name": "a\u{0}b"})),
            -22,
            "name: must not contain NUL",
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
        (json!([1, 2]), -32602, "params: must be an object"),
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
        (
            json!({"name": "p0", "mode": "primary", "local_bdev": "m1", "remote_bdev": "b0", "remote_timeout_ms": u64::MAX}),
            -22,
            "remote_timeout_ms: must be between 1 and 3600000",
        ),
        (
            json!({"name": "p0", "mode": "primary", "local_bdev": "m1", "remote_bdev": "small"}),
            -22,
            "remote_bdev: 1024 blocks is smaller than the local bdev's 2048",
        ),
    ];
    for (params, code, msg) in cases {
        let (c, m) = err(&h, "bdev_replication_create", params.clone());
        assert_eq!(c, code, "{params}: {m}");
        assert!(m.starts_with(msg), "{params}: got {m:?}, want {msg:?}");
        assert!(
            h.claimed().is_empty(),
            "{params} left {:?} claimed",
            h.claimed()
        );
        assert_eq!(ok(&h, "bdev_replication_get_status", json!({})), json!([]));
    }
    assert_eq!(
        ok(&h, "bdev_replication_create", sec(json!({}))),
        json!("s0")
    );
    assert_eq!(h.claimed(), ["a0", "b0", "h0"]);
    // A claimed bdev cannot be taken twice; the first leg is released again.
    let (c, m) = err(
        &h,
        "bdev_replication_create",
        json!({"name": "p0", "mode": "primary", "local_bdev": "m1", "remote_bdev": "a0"}),
    );
    assert_eq!(
        (c, m.as_str()),
        (-16, "remote_bdev: bdev a0 is already claimed")
    );
    assert_eq!(h.claimed(), ["a0", "b0", "h0"]);
    let (c, _) = err(
        &h,
        "bdev_replication_create",
        sec(json!({"name": "s0_ingress"})),
    );
    assert_eq!(c, -17, "the ingress name is taken too");
    assert_eq!(
        err(&h, "bdev_replication_delete", json!({"name": "zz"})),
        (-19, "name: no replication bdev named zz".into())
    );
    assert_eq!(err(&h, "bdev_replication_frobnicate", json!({})).0, -32601);
}

#[test]
fn stage_rules_and_all_semantics() {
    let h = host();
    ok(&h, "bdev_replication_create", sec(json!({})));
    ok(
        &h,
        "bdev_replication_create",
        json!({"name": "p0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "r0"}),
    );
    // Most recently created first; stop at the first error: p0 is fine, s0 is not running.
    assert_eq!(
        err(&h, "bdev_replication_checkpoint", json!({})),
        (-1, "s0: Block replication is not running".into())
    );
    assert_eq!(
        err(&h, "bdev_replication_start", json!({"mode": "secondary"})),
        (
            -22,
            "p0: The parameter mode's value is invalid: the bdev is primary, but got secondary"
                .into()
        )
    );
    ok(&h, "bdev_replication_start", json!({"name": "s0"}));
    ok(&h, "bdev_replication_start", json!({"name": "p0"}));
    ok(&h, "bdev_replication_checkpoint", json!({}));
    assert_eq!(
        err(&h, "bdev_replication_start", json!({})),
        (-1, "p0: Block replication is running or done".into())
    );
    let st = ok(&h, "bdev_replication_get_status", json!({}));
    assert_eq!(st[0]["name"], "p0");
    assert_eq!(st[1]["name"], "s0");
    assert_eq!(st[1]["counters"]["checkpoints"], 1);
    assert_eq!(
        ok(&h, "bdev_replication_get_error", json!({"name": "s0"})),
        json!([{"name": "s0", "stage": "running", "error": null}])
    );
    ok(&h, "bdev_replication_stop", json!({"failover": true}));
    h.run_background();
    let st = ok(&h, "bdev_replication_get_status", json!({}));
    assert_eq!(
        (st[0]["stage"].as_str(), st[1]["stage"].as_str()),
        (Some("done"), Some("done"))
    );
    // Ignored once done.
    ok(&h, "bdev_replication_start", json!({"mode": "primary"}));
    ok(&h, "bdev_replication_checkpoint", json!({}));
    ok(&h, "bdev_replication_stop", json!({}));
}

#[test]
fn delete_refused_in_failover_failed_without_force() {
    let h = host();
    ok(&h, "bdev_replication_create", sec(json!({})));
    ok(&h, "bdev_replication_start", json!({}));
    // SVM data in the overlays; the base fails writes, so the merge fails.
    let base = h.disk("b0").unwrap();
    h.run(async {
        let s = spdk_replication::control::find(&h, "s0").unwrap();
        let sec = s.secondary().unwrap();
        let buf = spdk_replication::engine::testing::MemBuf::filled(8192, 0x33);
        sec.top_write(0, buf).await.unwrap();
    });
    base.fail(&[OpKind::Write], None, None);
    ok(&h, "bdev_replication_stop", json!({"failover": true}));
    h.run_background();
    let st = ok(&h, "bdev_replication_get_error", json!({"name": "s0"}));
    assert_eq!(
        st,
        json!([{"name": "s0", "stage": "failover_failed", "error": "I/O error occurred"}])
    );
    let (c, m) = err(&h, "bdev_replication_delete", json!({"name": "s0"}));
    assert_eq!(c, -1);
    assert!(
        m.starts_with("s0: Block replication failover failed") && m.contains("force"),
        "{m}"
    );
    assert_eq!(h.claimed(), ["a0", "b0", "h0"], "nothing released");
    // The retry works once the fault is gone; or force deletes.
    ok(
        &h,
        "bdev_replication_delete",
        json!({"name": "s0", "force": true}),
    );
    assert!(h.claimed().is_empty());
    assert_eq!(ok(&h, "bdev_replication_get_status", json!({})), json!([]));
}

#[test]
fn overlapping_failover_stops_run_one_merge() {
    let h = host();
    ok(
        &h,
        "bdev_replication_create",
        sec(json!({"cow_granularity": 4096})),
    );
    ok(&h, "bdev_replication_start", json!({}));
    let node = spdk_replication::control::find(&h, "s0").unwrap();
    let sec = node.secondary().unwrap();
    h.run(async {
        for i in 0..16 {
            let buf = spdk_replication::engine::testing::MemBuf::filled(4096, i as u8 + 1);
            sec.top_write(i * 8, buf).await.unwrap();
        }
    });
    // Two stops in one batch, as a retrying orchestrator might send.
    let (a, b) = h.run(async {
        futures::join!(
            spdk_replication::control::handle(
                &h,
                "bdev_replication_stop",
                Some(json!({"failover": true}))
            ),
            spdk_replication::control::handle(
                &h,
                "bdev_replication_stop",
                Some(json!({"failover": true}))
            )
        )
    });
    assert_eq!((a.unwrap(), b.unwrap()), (json!(true), json!(true)));
    h.run_background();
    assert_eq!(sec.stage().as_str(), "done");
    assert_eq!(
        sec.counters().merged_clusters,
        16,
        "each cluster merged once"
    );
    // The delete does not wait for a phantom second merge.
    ok(&h, "bdev_replication_delete", json!({"name": "s0"}));
}

#[test]
fn saved_config_recreates_the_node() {
    let h = host();
    ok(
        &h,
        "bdev_replication_create",
        sec(json!({"cow_granularity": 65536})),
    );
    ok(
        &h,
        "bdev_replication_create",
        json!({"name": "p0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "r0"}),
    );
    let saved: Vec<Value> = spdk_replication::control::Host::nodes(&h)
        .iter()
        .rev()
        .map(|n| n.config_entry())
        .collect();
    assert_eq!(
        saved[0],
        json!({"method": "bdev_replication_create", "params": {"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0", "ingress_name": "s0_ingress", "cow_granularity": 65536}})
    );
    assert_eq!(saved[1]["params"]["remote_timeout_ms"], 1000);
    let before = ok(&h, "bdev_replication_get_status", json!({}));
    let h2 = host();
    for e in &saved {
        ok(&h2, e["method"].as_str().unwrap(), e["params"].clone());
    }
    assert_eq!(ok(&h2, "bdev_replication_get_status", json!({})), before);
}

#[test]
fn overlays_are_released_at_done() {
    for failover in [true, false] {
        let h = host();
        ok(&h, "bdev_replication_create", sec(json!({})));
        ok(&h, "bdev_replication_start", json!({}));
        ok(&h, "bdev_replication_stop", json!({"failover": failover}));
        h.run_background();
        assert_eq!(
            h.claimed(),
            ["b0"],
            "failover {failover}: overlays released"
        );
        // Another replication bdev may take them now; the first one keeps serving its top.
        ok(
            &h,
            "bdev_replication_create",
            json!({"name": "p1", "mode": "primary", "local_bdev": "h0", "remote_bdev": "a0"}),
        );
        h.disk("h0")
            .unwrap()
            .fail(&[OpKind::Read, OpKind::Write], None, None);
        let node = spdk_replication::control::find(&h, "s0").unwrap();
        let s = node.secondary().unwrap();
        h.run(async {
            let buf = spdk_replication::engine::testing::MemBuf::filled(4096, 0x5a);
            s.top_write(0, buf).await.unwrap();
            let back = spdk_replication::engine::testing::MemBuf::filled(4096, 0xee);
            s.top_read(0, back.clone()).await.unwrap();
            assert!(back.to_vec().iter().all(|&b| b == 0x5a));
        });
        ok(&h, "bdev_replication_delete", json!({"name": "s0"}));
        assert_eq!(
            h.claimed(),
            ["a0", "h0"],
            "p1's claims untouched by the delete"
        );
    }
}
