//! Fuzzing the control plane (issue 6): every `bdev_replication_*` method fed random and
//! mutated JSON params, in random sequences, on the RAM host. Never a panic; every error is
//! a JSON-RPC error with a known code and a message; a failed call leaves nothing behind.
//! `PROPTEST_CASES=100000 cargo test --test rpc_fuzz` runs longer.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use spdk_replication::control::testing::RamHost;
use spdk_replication::control::{Host, METHODS};

const KNOWN_CODES: &[i32] = &[-32602, -32601, -1, -5, -16, -17, -19, -22];
const BDEVS: &[&str] = &["b0", "h0", "a0", "l0", "r0", "odd"];

fn host() -> RamHost {
    let h = RamHost::default();
    for n in &BDEVS[..5] {
        h.add_malloc(n, 512, 4096);
    }
    h.add_malloc("odd", 4096, 100);
    h
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u32..=30).prop_map(|s| Value::from(1u64 << s)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "",
            "s0",
            "p0",
            "b0",
            "h0",
            "a0",
            "l0",
            "r0",
            "odd",
            "s0_ingress",
            "primary",
            "secondary",
            "none",
            "\u{0}",
            "x\u{0}y",
            "🦀",
            "nqn.2016-06.io.spdk:x",
        ])
        .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "name",
    "mode",
    "local_bdev",
    "remote_bdev",
    "remote_timeout_ms",
    "base_bdev",
    "hidden_bdev",
    "active_bdev",
    "ingress_name",
    "cow_granularity",
    "sync_granularity",
    "sync",
    "full",
    "force",
    "failover",
];

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "[a-z_]{0,12}",
    ]
}

/// Valid-looking params for `method`, then mutated: fields dropped, replaced, added.
fn mutated(method: &'static str) -> impl Strategy<Value = Value> {
    let base = match method {
        "bdev_replication_create" => prop_oneof![
            Just(json!({"name": "s0", "mode": "secondary", "base_bdev": "b0", "hidden_bdev": "h0", "active_bdev": "a0"})),
            Just(json!({"name": "p0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "r0"})),
            Just(json!({"name": "s1", "mode": "secondary", "base_bdev": "l0", "hidden_bdev": "r0", "active_bdev": "odd", "cow_granularity": 4096})),
        ]
        .boxed(),
        "bdev_replication_delete" => Just(json!({"name": "s0", "force": false})).boxed(),
        "bdev_replication_start" => Just(json!({"name": "s0", "mode": "secondary"})).boxed(),
        "bdev_replication_stop" => Just(json!({"name": "s0", "failover": true})).boxed(),
        _ => Just(json!({"name": "s0"})).boxed(),
    };
    let edits = prop::collection::vec((field_name(), prop::option::of(json_value())), 0..4);
    (base, edits).prop_map(|(mut v, edits)| {
        let obj = v.as_object_mut().expect("object");
        for (k, val) in edits {
            match val {
                Some(val) => {
                    obj.insert(k, val);
                }
                None => {
                    obj.remove(&k);
                }
            }
        }
        v
    })
}

fn call() -> impl Strategy<Value = (String, Option<Value>)> {
    let method = prop::sample::select(METHODS);
    prop_oneof![
        // Mutated valid params.
        4 => method.clone().prop_flat_map(|m| mutated(m).prop_map(move |p| (m.to_owned(), Some(p)))),
        // Anything at all as params, or none.
        2 => (method, prop::option::of(json_value())).prop_map(|(m, p)| (m.to_owned(), p)),
        // Unknown methods.
        1 => ("bdev_replication_[a-z]{0,8}", prop::option::of(json_value())),
    ]
}

/// What a call may change: claims and registered replication bdevs.
fn snapshot(h: &RamHost) -> (Vec<String>, Vec<String>) {
    let nodes = h.nodes().iter().map(|n| n.name().to_owned()).collect();
    (h.claimed(), nodes)
}

fn check_invariants(h: &RamHost) {
    // Every registered replication bdev claims exactly its legs (a secondary at done only
    // its base: the overlays are released); nothing else is claimed.
    let mut want: Vec<String> = h
        .nodes()
        .iter()
        .flat_map(|n| {
            let done = n.secondary().is_some() && n.stage().as_str() == "done";
            let legs = n.params.leg_params();
            let keep = if done { 1 } else { legs.len() };
            legs.into_iter()
                .take(keep)
                .map(|(_, b)| b.to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    want.sort();
    assert_eq!(
        h.claimed(),
        want,
        "claims match the registered replication bdevs"
    );
    let st = h
        .call("bdev_replication_get_status", json!({}))
        .expect("status");
    assert_eq!(st.as_array().map(Vec::len), Some(h.nodes().len()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn rpc_sequences_never_panic_and_leave_nothing_half_created(
        calls in prop::collection::vec(call(), 1..10)
    ) {
        let h = host();
        for (method, params) in calls {
            let before = snapshot(&h);
            let r = h.call(&method, params.clone().unwrap_or(Value::Object(Map::new())));
            h.run_background();
            match r {
                Ok(v) => prop_assert!(!v.is_null(), "{method}: null result"),
                Err(e) => {
                    prop_assert!(KNOWN_CODES.contains(&e.code), "{method} {params:?}: code {}", e.code);
                    prop_assert!(!e.message.is_empty(), "{method}: empty message");
                    if method == "bdev_replication_create" || method == "bdev_replication_delete" {
                        prop_assert_eq!(snapshot(&h), before, "{} {:?} failed but changed state", method, params);
                    }
                }
            }
            check_invariants(&h);
        }
    }
}
