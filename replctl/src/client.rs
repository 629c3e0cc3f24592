//! Blocking JSON-RPC 2.0 client for SPDK's Unix domain socket.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::Request;

/// Default socket of an SPDK application (`spdk_tgt -r`).
pub const DEFAULT_SOCKET: &str = "/var/tmp/spdk.sock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to SPDK RPC socket {} (is the SPDK application running?)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The server answered with a JSON-RPC `error` object.
    #[error("{method}: {message} (code {code})")]
    Rpc {
        method: String,
        code: i64,
        message: String,
    },
    #[error("{method}: no response within {} s", timeout.as_secs_f64())]
    Timeout { method: String, timeout: Duration },
    #[error("{method}: RPC socket I/O failed")]
    Io {
        method: String,
        #[source]
        source: io::Error,
    },
    /// The bytes received were not a JSON-RPC response to our request.
    #[error("{method}: invalid response: {reason}")]
    Protocol { method: String, reason: String },
    /// A well-formed `result` that does not have the documented shape.
    #[error("{method}: unexpected result")]
    Decode {
        method: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A connection to the SPDK RPC server; requests are sent one at a time.
#[derive(Debug)]
pub struct Client {
    // Kept across calls so bytes read past one response are not lost.
    reader: BufReader<DeadlineStream>,
    timeout: Duration,
    next_id: u64,
}

/// The socket plus the deadline of the request in flight. Re-arming the read
/// timeout before every read turns SO_RCVTIMEO (which is per read call) into
/// a bound on the whole response, however it is fragmented.
#[derive(Debug)]
struct DeadlineStream {
    stream: UnixStream,
    deadline: Instant,
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(remaining))?;
        self.stream.read(buf)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    jsonrpc: &'static str,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a Value>,
    id: u64,
}

#[derive(serde::Deserialize)]
struct ErrorObject {
    code: i64,
    message: String,
}

impl Client {
    /// Connects to the server; `timeout` bounds each later request.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Client {
            reader: BufReader::new(DeadlineStream {
                stream,
                deadline: Instant::now(),
            }),
            timeout,
            next_id: 1,
        })
    }

    /// Sends `request` and returns its `result`.
    pub fn call(&mut self, request: &Request) -> Result<Value, Error> {
        let method = request.method.as_str();
        let id = self.next_id;
        self.next_id += 1;

        let bytes = serde_json::to_vec(&Envelope {
            jsonrpc: "2.0",
            method,
            params: request.params.as_ref(),
            id,
        })
        .expect("a JSON value always serializes");

        let timeout = self.timeout;
        let io_error = |source: io::Error| match source.kind() {
            // SO_RCVTIMEO/SO_SNDTIMEO expiry surfaces as EAGAIN on Linux.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                method: method.to_owned(),
                timeout,
            },
            _ => Error::Io {
                method: method.to_owned(),
                source,
            },
        };
        let protocol = |reason: String| Error::Protocol {
            method: method.to_owned(),
            reason,
        };

        let conn = self.reader.get_mut();
        conn.deadline = Instant::now() + timeout;
        conn.stream
            .set_write_timeout(Some(timeout))
            .map_err(io_error)?;
        conn.stream.write_all(&bytes).map_err(io_error)?;

        // SPDK does not reliably terminate responses with a newline, so read
        // exactly one complete JSON value rather than a line. A top-level
        // object is self-delimiting: the stream deserializer stops at its
        // closing brace without waiting for more input.
        let response = serde_json::Deserializer::from_reader(&mut self.reader)
            .into_iter::<Value>()
            .next()
            .ok_or_else(|| protocol("connection closed before a response arrived".into()))?
            .map_err(|e| {
                if e.is_io() {
                    io_error(e.into())
                } else if e.is_eof() {
                    protocol("connection closed in the middle of the response".into())
                } else {
                    protocol(e.to_string())
                }
            })?;

        let Value::Object(mut response) = response else {
            return Err(protocol(format!("expected an object, got {response}")));
        };
        // Checked before the id: SPDK answers requests it cannot parse with
        // an error whose id is null.
        if let Some(error) = response.remove("error") {
            let error: ErrorObject = serde_json::from_value(error)
                .map_err(|e| protocol(format!("malformed error object: {e}")))?;
            return Err(Error::Rpc {
                method: method.to_owned(),
                code: error.code,
                message: error.message,
            });
        }
        // A stale answer (e.g. to a request that timed out earlier on this
        // connection) must not be mistaken for this one's.
        match response.get("id") {
            Some(Value::Number(n)) if n.as_u64() == Some(id) => {}
            other => {
                let got = other.map_or_else(|| "none".to_owned(), Value::to_string);
                return Err(protocol(format!(
                    "response id {got} does not match request id {id}"
                )));
            }
        }
        response
            .remove("result")
            .ok_or_else(|| protocol("neither result nor error present".into()))
    }

    /// Like [`Client::call`], decoding the result into `R`.
    pub fn call_as<R: DeserializeOwned>(&mut self, request: &Request) -> Result<R, Error> {
        decode_result(&request.method, self.call(request)?)
    }
}

/// Decodes the `result` of `method` into `R`, for callers that also need the
/// raw value.
pub fn decode_result<R: DeserializeOwned>(method: &str, result: Value) -> Result<R, Error> {
    serde_json::from_value(result).map_err(|source| Error::Decode {
        method: method.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::{self, JoinHandle};

    /// A one-connection server: reads one request per entry of `replies` and
    /// answers each by writing its chunks separately, with a pause between
    /// them so the client really sees a fragmented response. It then holds
    /// the connection open until the client hangs up, so drop the client
    /// before joining. Returns the socket path and a handle yielding every
    /// request received.
    fn serve(replies: Vec<Vec<String>>) -> (PathBuf, JoinHandle<Vec<Value>>) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "replctl-test-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let reader = stream.try_clone().unwrap();
            let mut requests = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
            let mut received = Vec::new();
            for chunks in replies {
                received.push(requests.next().unwrap().unwrap());
                for (i, chunk) in chunks.iter().enumerate() {
                    if i > 0 {
                        thread::sleep(Duration::from_millis(20));
                    }
                    stream.write_all(chunk.as_bytes()).unwrap();
                    stream.flush().unwrap();
                }
            }
            received.extend(requests.map_while(Result::ok));
            received
        });
        (path, handle)
    }

    fn connect(path: &Path) -> Client {
        Client::connect(path, Duration::from_secs(5)).unwrap()
    }

    fn request(method: &str, params: Option<Value>) -> Request {
        Request {
            method: method.to_owned(),
            params,
        }
    }

    #[test]
    fn returns_result_and_increments_id() {
        let (path, server) = serve(vec![
            vec![r#"{"jsonrpc":"2.0","id":1,"result":"r0"}"#.into()],
            vec![r#"{"jsonrpc":"2.0","id":2,"result":true}"#.into()],
        ]);
        let mut client = connect(&path);
        let first = request("bdev_replication_create", Some(json!({"name": "r0"})));
        assert_eq!(client.call(&first).unwrap(), json!("r0"));
        let second = request("bdev_replication_checkpoint", None);
        assert!(client.call_as::<bool>(&second).unwrap());
        drop(client);

        let received = server.join().unwrap();
        assert_eq!(
            received,
            vec![
                json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_replication_create",
                       "params": {"name": "r0"}}),
                // No params key at all, rather than `"params": null`.
                json!({"jsonrpc": "2.0", "id": 2, "method": "bdev_replication_checkpoint"}),
            ]
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn maps_error_object() {
        let (path, server) = serve(vec![vec![
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-19,"message":"No such device"}}"#.into(),
        ]]);
        let err = connect(&path)
            .call(&request(
                "bdev_replication_delete",
                Some(json!({"name": "x"})),
            ))
            .unwrap_err();
        match &err {
            Error::Rpc {
                method,
                code,
                message,
            } => {
                assert_eq!(method, "bdev_replication_delete");
                assert_eq!(*code, -19);
                assert_eq!(message, "No such device");
            }
            other => panic!("expected an RPC error, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "bdev_replication_delete: No such device (code -19)"
        );
        server.join().unwrap();
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn reassembles_split_response_without_newline() {
        // Split inside a string and with no trailing newline: the client must
        // keep reading until the value is complete and then stop, without
        // waiting for a line end or for the connection to close (the server
        // keeps it open until it has answered the second request too).
        let (path, server) = serve(vec![
            vec![
                r#"{"jsonrpc":"2.0","id":1,"result":[{"name":"r0","st"#.into(),
                r#"age":"running","error":null}]}"#.into(),
            ],
            vec![r#"{"jsonrpc":"2.0","id":2,"result":true}"#.into()],
        ]);
        let mut client = connect(&path);
        let result = client
            .call(&request("bdev_replication_get_error", None))
            .unwrap();
        assert_eq!(
            result,
            json!([{"name": "r0", "stage": "running", "error": null}])
        );
        assert_eq!(
            client
                .call(&request("bdev_replication_start", None))
                .unwrap(),
            json!(true)
        );
        drop(client);
        server.join().unwrap();
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn rejects_mismatched_id() {
        let (path, server) = serve(vec![vec![
            r#"{"jsonrpc":"2.0","id":7,"result":true}"#.into(),
        ]]);
        let err = connect(&path)
            .call(&request("bdev_replication_start", None))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Protocol { reason, .. } if reason.contains("id 7")),
            "{err:?}"
        );
        server.join().unwrap();
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn times_out_when_server_is_silent() {
        let (path, server) = serve(vec![vec![]]);
        let mut client = Client::connect(&path, Duration::from_millis(100)).unwrap();
        let err = client
            .call(&request("bdev_replication_start", None))
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        drop(client);
        server.join().unwrap();
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn connect_failure_names_socket() {
        let path = std::env::temp_dir().join("replctl-test-no-such.sock");
        let err = Client::connect(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, Error::Connect { .. }));
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}
