//! Random and mutated byte streams: the server never panics, keeps serving
//! other connections, and refuses to buffer more than one request's bound.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use serde_json::json;

const SEEDS: &[&str] = &[
    r#"{"jsonrpc":"2.0","method":"echo","params":{"a":[1,2.5,"x\"y",null,true]},"id":1}"#,
    r#"[{"method":"echo","id":"a"},{"method":"fail"},7,[]]"#,
    r#"{"method":"later","params":{"ms":1},"id":null}"#,
    r#"{"method":"nope","id":-3e2} "s" 12 "#,
];

fn stream() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        prop::sample::select(SEEDS),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    )
        .prop_map(|(seed, edits)| {
            let mut b = seed.as_bytes().to_vec();
            for (i, byte) in edits {
                let at = i.index(b.len() + 1);
                match byte % 3 {
                    0 if at < b.len() => b[at] = byte,
                    1 if at < b.len() => {
                        b.remove(at);
                    }
                    _ => b.insert(at, byte),
                }
            }
            b
        });
    let structural = prop::collection::vec(
        prop::sample::select(&b"{}[]\":,0123456789-.eEtruefalsn \n\\x"[..]),
        0..400,
    );
    prop_oneof![
        3 => prop::collection::vec(mutated, 1..5).prop_map(|v| v.concat()),
        1 => structural,
        1 => prop::collection::vec(any::<u8>(), 0..400),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_keeps_serving(bytes in stream(), chunk in 1usize..64) {
        let srv = server();
        let mut s = connect(&srv);
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        for part in bytes.chunks(chunk) {
            if s.write_all(part).is_err() {
                break; // closed after a parse error
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Whatever came back is a sequence of JSON-RPC responses, then close.
        let out = read_to_close(&mut s).expect("server closes after the client's EOF");
        for v in serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>() {
            let v = v.expect("responses are valid JSON");
            let one = |r: &serde_json::Value| {
                r["jsonrpc"] == "2.0" && (r.get("result").is_some() || r["error"]["code"].is_i64())
            };
            prop_assert!(one(&v) || v.as_array().is_some_and(|a| a.iter().all(one)), "{v}");
        }
        // The server still works for others.
        let mut t = connect(&srv);
        send(&mut t, br#"{"method":"echo","id":1}"#);
        prop_assert_eq!(&read_values(&mut t, 1).0[0]["id"], &json!(1));
    }
}

/// Memory stays bounded: an endless unterminated value is cut off after
/// about `MAX_REQUEST_SIZE` bytes, whatever its shape.
#[test]
fn endless_value_is_cut_off() {
    let srv = server();
    for unit in [
        &b"[["[..],
        b"\"xxxxxxxxxxxxxxxx",
        b"1111111111111111",
        b"   ",
    ] {
        let mut s = connect(&srv);
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = if unit[0] == b'1' { &b"[1"[..] } else { b"" };
        let _ = s.write_all(start);
        let mut sent = 0usize;
        let mut closed = false;
        while sent < 16 * jsonrpc::MAX_REQUEST_SIZE {
            match s.write(&unit.repeat(4096)) {
                Ok(n) => sent += n,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if unit == b"   " {
            // Whitespace between values is not buffered: still open.
            assert!(!closed);
            send(&mut s, br#"{"method":"echo","id":2}"#);
            assert_eq!(read_values(&mut s, 1).0[0]["id"], 2);
        } else {
            // "[[" trips the depth limit at once; the others the size bound.
            assert!(closed, "server kept buffering {sent} bytes");
            assert!(sent < 8 * jsonrpc::MAX_REQUEST_SIZE, "{sent}");
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    }
}
