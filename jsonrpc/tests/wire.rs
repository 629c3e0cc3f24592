//! SPDK's wire behaviour, checked over real sockets with raw bytes.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use jsonrpc::{MAX_REQUEST_SIZE, Server};
use serde_json::{Value, json};

#[test]
fn response_is_one_line_in_spdk_member_order() {
    let srv = server();
    let mut s = connect(&srv);
    send(
        &mut s,
        br#"{"jsonrpc":"2.0","method":"echo","params":{"a":1},"id":1}"#,
    );
    let (_, raw) = read_values(&mut s, 1);
    assert_eq!(raw, "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"a\":1}}\n");
}

#[test]
fn split_byte_by_byte() {
    let srv = server();
    let mut s = connect(&srv);
    for b in br#"  {"jsonrpc":"2.0","method":"echo","params":[1,"x"],"id":"s-1"}"# {
        s.write_all(&[*b]).unwrap();
        s.flush().unwrap();
    }
    let (v, _) = read_values(&mut s, 1);
    assert_eq!(
        v,
        vec![json!({"jsonrpc":"2.0","id":"s-1","result":[1,"x"]})]
    );
}

#[test]
fn several_requests_in_one_write_any_separator() {
    let srv = server();
    let mut s = connect(&srv);
    send(
        &mut s,
        b"{\"method\":\"echo\",\"params\":[1],\"id\":1}{\"method\":\"echo\",\"params\":[2],\"id\":2}\n\t {\"method\":\"echo\",\"params\":[3],\"id\":3}",
    );
    let (v, raw) = read_values(&mut s, 3);
    let ids: Vec<_> = v.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [json!(1), json!(2), json!(3)]);
    assert_eq!(raw.matches('\n').count(), 3);
}

#[test]
fn id_echoed_byte_for_byte() {
    let srv = server();
    let mut s = connect(&srv);
    send(&mut s, br#"{"method":"echo","id":1.50}{"method":"echo","id":123456789012345678901234567890}{"method":"echo","id":"\u00e9x"}"#);
    let (_, raw) = read_values(&mut s, 3);
    assert!(raw.contains(r#""id":1.50,"#), "{raw}");
    assert!(
        raw.contains(r#""id":123456789012345678901234567890,"#),
        "{raw}"
    );
    assert!(raw.contains(r#""id":"\u00e9x","#), "{raw}");
}

#[test]
fn batch() {
    let srv = server();
    let mut s = connect(&srv);
    send(
        &mut s,
        br#"[{"method":"echo","params":[1],"id":1},{"method":"echo","params":[2]},42,{"method":"nope","id":3}]"#,
    );
    let (v, raw) = read_values(&mut s, 1);
    assert!(raw.ends_with("]\n"), "{raw}");
    let arr = v[0].as_array().unwrap();
    // The notification's result is not sent; the invalid element's error is.
    assert_eq!(arr.len(), 3, "{raw}");
    assert_eq!(arr[0], json!({"jsonrpc":"2.0","id":1,"result":[1]}));
    assert_eq!(
        arr[1]["error"],
        json!({"code":-32600,"message":"Invalid request"})
    );
    assert_eq!(arr[1]["id"], Value::Null);
    assert_eq!(arr[2]["error"]["code"], -32601);
    assert_eq!(arr[2]["id"], 3);
}

#[test]
fn batch_in_completion_order_and_empty_batch() {
    let srv = server();
    let mut s = connect(&srv);
    send(
        &mut s,
        br#"[{"method":"later","params":{"ms":200},"id":"slow"},{"method":"echo","id":"fast"}] []"#,
    );
    let (v, _) = read_values(&mut s, 2);
    // The empty batch's error overtakes the slow batch.
    assert_eq!(v[0]["error"]["code"], -32600);
    assert_eq!(v[1][0]["id"], "fast");
    assert_eq!(v[1][1]["id"], "slow");
}

#[test]
fn notifications() {
    let srv = server();
    let mut s = connect(&srv);
    // No result for a notification, nor for an all-notification batch.
    send(
        &mut s,
        br#"{"method":"echo"} {"method":"echo","id":null} [{"method":"echo"}]"#,
    );
    assert!(quiet(&mut s));
    // Errors are sent even for notifications, with id null, as SPDK does.
    send(&mut s, br#"{"method":"nope"}"#);
    let (v, _) = read_values(&mut s, 1);
    assert_eq!(v[0]["id"], Value::Null);
    assert_eq!(v[0]["error"]["code"], -32601);
}

#[test]
fn bad_json_answers_parse_error_and_closes() {
    for bad in [
        &b"{\"method\":\"echo\" \"id\":1}"[..],
        b"}",
        b"{\"a\":tru}",
        b"[\xff]",
    ] {
        let srv = server();
        let mut s = connect(&srv);
        send(&mut s, br#"{"method":"echo","id":1}"#);
        send(&mut s, bad);
        let out = read_to_close(&mut s).expect("connection closed");
        let v: Vec<Value> = serde_json::Deserializer::from_str(&out)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(v.len(), 2, "{out}");
        assert_eq!(v[0]["id"], 1);
        assert_eq!(
            v[1],
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}})
        );
    }
}

#[test]
fn non_object_request_is_invalid_and_connection_stays() {
    let srv = server();
    let mut s = connect(&srv);
    send(&mut s, br#""hello" 42 null {"method":"echo","id":9}"#);
    let (v, _) = read_values(&mut s, 4);
    for r in &v[..3] {
        assert_eq!(r["error"]["code"], -32600);
        assert_eq!(r["id"], Value::Null);
    }
    assert_eq!(v[3]["id"], 9);
}

#[test]
fn invalid_requests() {
    let srv = server();
    let mut s = connect(&srv);
    send(
        &mut s,
        br#"{"id":1} {"method":5,"id":2} {"jsonrpc":"1.0","method":"echo","id":3} {"method":"echo","id":4,"extra":1} {"method":"echo","id":5,"params":7} {"method":"echo","id":{}}"#,
    );
    let (v, _) = read_values(&mut s, 6);
    assert_eq!(v.len(), 6);
    let ids: Vec<_> = v.iter().map(|r| r["id"].clone()).collect();
    // SPDK only echoes the id once method and id are accepted.
    assert_eq!(
        ids,
        [
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            json!(5),
            Value::Null
        ]
    );
    assert!(v.iter().all(|r| r["error"]["code"] == -32600));
}

#[test]
fn errors_pass_through_and_unanswered_replies() {
    let srv = server();
    let mut s = connect(&srv);
    send(
        &mut s,
        br#"{"method":"fail","id":1}{"method":"drop","id":2}{"method":"panic","id":3}{"method":"spdk_get_version","params":{},"id":4}{"method":"echo","id":5}"#,
    );
    let (v, _) = read_values(&mut s, 5);
    assert_eq!(
        v[0]["error"],
        json!({"code":-19,"message":"No such device"})
    );
    assert_eq!(
        v[1]["error"],
        json!({"code":-32603,"message":"Internal error"})
    );
    assert_eq!(
        v[2]["error"],
        json!({"code":-32603,"message":"Internal error"})
    );
    assert_eq!(v[3]["error"]["code"], -32602);
    assert_eq!(v[4]["id"], 5);
}

#[test]
fn pipelined_replies_in_completion_order() {
    let srv = server();
    let mut s = connect(&srv);
    send(
        &mut s,
        br#"{"method":"later","params":{"ms":200},"id":1}{"method":"echo","id":2}"#,
    );
    let (v, _) = read_values(&mut s, 2);
    assert_eq!(v[0]["id"], 2);
    assert_eq!(v[1]["id"], 1);
}

#[test]
fn answers_after_client_half_close() {
    let srv = server();
    let mut s = connect(&srv);
    send(&mut s, br#"{"method":"later","params":{"ms":100},"id":7}"#);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let out = read_to_close(&mut s).unwrap();
    assert!(out.contains("\"id\":7"), "{out}");
}

#[test]
fn huge_request_closes_without_reply() {
    let srv = server();
    let mut s = connect(&srv);
    let pad = "x".repeat(MAX_REQUEST_SIZE);
    let req = format!(r#"{{"method":"echo","params":["{pad}"],"id":1}}"#);
    // The server may close while we are still writing.
    let _ = s.write_all(req.as_bytes());
    assert_eq!(read_to_close(&mut s).as_deref(), Some(""));
    // A request just under the limit is served.
    let mut s = connect(&srv);
    let pad = "x".repeat(MAX_REQUEST_SIZE - 64);
    send(
        &mut s,
        format!(r#"{{"method":"echo","params":["{pad}"],"id":1}}"#).as_bytes(),
    );
    let (v, _) = read_values(&mut s, 1);
    assert_eq!(v[0]["result"][0].as_str().map(str::len), Some(pad.len()));
}

#[test]
fn too_deep_or_too_many_values_is_parse_error() {
    let srv = server();
    for bad in ["[".repeat(65), format!("[{}]", vec!["0"; 8191].join(","))] {
        let mut s = connect(&srv);
        send(&mut s, bad.as_bytes());
        let out = read_to_close(&mut s).unwrap();
        assert!(out.contains("-32700"), "{out}");
    }
}

#[test]
fn socket_file_lifecycle() {
    let path = sock_path();
    // A stale socket (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let srv = Server::bind(&path, dispatch).expect("stale socket replaced");
    // A live one is refused.
    let err = Server::bind(&path, dispatch).unwrap_err();
    assert!(matches!(err, jsonrpc::Error::InUse { .. }), "{err}");
    assert!(err.to_string().contains("in use"));
    let mut s = connect(&srv);
    send(&mut s, br#"{"method":"later","params":{"ms":5000},"id":1}"#);
    std::thread::sleep(Duration::from_millis(50));
    srv.shutdown();
    assert!(!path.exists());
    assert!(read_to_close(&mut s).is_some(), "shutdown ends connections");
    assert!(UnixStream::connect(&path).is_err());
    // A regular file is not removed.
    std::fs::write(&path, b"x").unwrap();
    assert!(matches!(
        Server::bind(&path, dispatch),
        Err(jsonrpc::Error::NotASocket { .. })
    ));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn many_connections_served() {
    let srv = server();
    let mut conns: Vec<_> = (0..8).map(|_| connect(&srv)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        send(s, format!(r#"{{"method":"echo","id":{i}}}"#).as_bytes());
    }
    for (i, s) in conns.iter_mut().enumerate() {
        assert_eq!(read_values(s, 1).0[0]["id"], i);
    }
}
