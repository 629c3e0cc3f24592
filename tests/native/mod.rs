//! Harness for tests against native `replication_tgt` processes (`--host native`): started
//! from the project's `config/*.json` (ports moved), driven with raw JSON-RPC over the Unix
//! socket, SPDK's `spdk-rpc` (when installed) and `replctl`, with the project's NVMe/TCP
//! initiator checking bytes. Needs nothing outside the workspace.
#![allow(dead_code)]

use nvmf::driver::{ConnectOptions, Controller};
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const BS: usize = 4096;
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:native-test";

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A block of ten free-looking TCP ports for one test.
pub fn ports() -> u16 {
    let base = 5600 + (std::process::id() % 300) as u16 * 10;
    base + NEXT_PORT.fetch_add(10, Ordering::SeqCst) % 3000
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One JSON-RPC 2.0 call on a fresh connection: `Ok(result)` or `Err((code, message))`.
pub fn rpc_raw(
    sock: &Path,
    method: &str,
    params: &Value,
) -> std::io::Result<Result<Value, (i64, String)>> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if !params.is_null() {
        req["params"] = params.clone();
    }
    s.write_all(req.to_string().as_bytes())?;
    let v: Value = serde_json::Deserializer::from_reader(&mut s)
        .into_iter::<Value>()
        .next()
        .ok_or_else(|| std::io::Error::other("no response"))?
        .map_err(std::io::Error::other)?;
    assert_eq!(v["id"], 1, "id echoed: {v}");
    Ok(match v.get("error") {
        Some(e) => Err((
            e["code"].as_i64().unwrap_or(0),
            e["message"].as_str().unwrap_or("").to_owned(),
        )),
        None => Ok(v["result"].clone()),
    })
}

pub struct Node {
    child: Option<Child>,
    pub name: String,
    pub sock: PathBuf,
    pub log: PathBuf,
    pub dir: PathBuf,
}

/// Which host a node runs: the same binary, `--host native|spdk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Native,
    Spdk,
}

impl Host {
    pub fn arg(self) -> &'static str {
        match self {
            Host::Native => "native",
            Host::Spdk => "spdk",
        }
    }
}

/// Process-pair tests of a binary take turns (see `host_or_skip`).
static NODE_SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    NODE_SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// For a test on `host`: `None` (after one line saying why) when that host cannot run here;
/// otherwise a guard that serialises these tests within this binary (SPDK nodes poll their
/// cores, and two pairs syncing at once on a small machine starve each other).
pub fn host_or_skip(host: Host, test: &str) -> Option<Option<std::sync::MutexGuard<'static, ()>>> {
    match host {
        Host::Native => Some(Some(serial())),
        Host::Spdk if !spdk_replication::SPDK_FOUND => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: SPDK was not found when building (see README, \"SPDK discovery\")"
            );
            None
        }
        Host::Spdk => Some(Some(serial())),
    }
}

impl Node {
    /// Starts a native node with `config` and waits until `framework_wait_init` answers.
    pub fn start(dir: &Path, name: &str, config: &Value, mask: &str) -> Node {
        let cfg = dir.join(format!("{name}.json"));
        std::fs::write(&cfg, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        Self::start_file(dir, name, &cfg, mask)
    }

    pub fn start_file(dir: &Path, name: &str, cfg: &Path, mask: &str) -> Node {
        Self::start_on(Host::Native, dir, name, cfg, mask)
    }

    /// Starts a node of either host from a config file (same command line for both).
    pub fn start_on(host: Host, dir: &Path, name: &str, cfg: &Path, mask: &str) -> Node {
        let cfg = cfg.to_string_lossy().into_owned();
        Self::spawn_on(host, dir, name, &["-m", mask, "--json", &cfg], true)
    }

    /// Starts a native node with SPDK's usual script options plus `args`; waits until the
    /// RPC socket answers `framework_wait_init` (`wait_init`) or `spdk_get_version`.
    pub fn spawn(dir: &Path, name: &str, args: &[&str], wait_init: bool) -> Node {
        Self::spawn_on(Host::Native, dir, name, args, wait_init)
    }

    pub fn spawn_on(host: Host, dir: &Path, name: &str, args: &[&str], wait_init: bool) -> Node {
        let sock = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(env!("CARGO_BIN_EXE_replication_tgt"))
            .current_dir(dir)
            .arg("--host")
            .arg(host.arg())
            // SPDK's options scripts pass: accepted and ignored.
            .args([
                "--no-huge",
                "-s",
                "1024",
                "--no-pci",
                "--disable-cpumask-locks",
            ])
            .arg("-r")
            .arg(&sock)
            .args(args)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .expect("start replication_tgt");
        let mut n = Node {
            child: Some(child),
            name: name.into(),
            sock,
            log,
            dir: dir.to_owned(),
        };
        let probe = if wait_init {
            "framework_wait_init"
        } else {
            "spdk_get_version"
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = n.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{name} exited ({st}) during start-up:\n{}", n.log_text());
            }
            if n.sock.exists() && matches!(rpc_raw(&n.sock, probe, &Value::Null), Ok(Ok(_))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not come up:\n{}",
                n.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        rpc_raw(&self.sock, method, &params)
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", self.log_text()))
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.rpc(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e:?}\n{}", self.log_text()))
    }

    pub fn status(&self, name: &str) -> Value {
        self.ok("bdev_replication_get_status", json!({"name": name}))[0].clone()
    }

    /// `spdk-rpc` with the project's plugin, or `None` when SPDK's client is not installed.
    pub fn spdk_rpc(&self, args: &[&str]) -> Option<Output> {
        Command::new("spdk-rpc")
            .env("PYTHONPATH", root().join("tests/rpc_plugin"))
            .arg("-s")
            .arg(&self.sock)
            .args(["--plugin", "rpc_replication"])
            .args(args)
            .output()
            .ok()
    }

    pub fn replctl(&self, args: &[&str]) -> Output {
        Command::new(replctl())
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("replctl")
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Clean shutdown (SIGINT); returns whether the process exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// replctl, built into the same target directory (on demand when run alone).
pub fn replctl() -> PathBuf {
    let target = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let p = target.join("replctl");
    if !p.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "replctl"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(st.success(), "building replctl");
    }
    p
}

pub fn has_spdk_rpc() -> bool {
    Command::new("sh")
        .args(["-c", "command -v spdk-rpc"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `config/<file>` with its TCP ports moved to `port_map` (old, new).
pub fn config(file: &str, port_map: &[(u16, u16)]) -> Value {
    let mut text = std::fs::read_to_string(root().join("config").join(file)).unwrap();
    for (old, new) in port_map {
        text = text.replace(
            &format!("\"trsvcid\": \"{old}\""),
            &format!("\"trsvcid\": \"{new}\""),
        );
    }
    serde_json::from_str(&text).unwrap()
}

/// An NVMe-oF TCP export on loopback.
#[derive(Clone)]
pub struct Export {
    pub port: u16,
    pub nqn: String,
}

impl Export {
    pub fn connect(&self) -> Controller {
        self.try_connect()
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.nqn))
    }

    pub fn try_connect(&self) -> Result<Controller, nvmf::driver::Error> {
        Controller::connect(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            &self.nqn,
            HOSTNQN,
            ConnectOptions::default(),
        )
    }
}

/// The README's pair: a secondary and a primary from `config/*.json`, on their own ports.
pub struct Pair {
    pub sec: Node,
    pub pri: Node,
    pub ingress: Export,
    pub top: Export,
    pub primary: Export,
}

pub fn pair(dir: &Path, remote_timeout_ms: Option<u64>) -> Pair {
    let p = ports();
    let sec_cfg = config("secondary.json", &[(4420, p), (4421, p + 1)]);
    let mut pri_cfg = config("primary.json", &[(4420, p), (4430, p + 2)]);
    if let Some(t) = remote_timeout_ms {
        for e in pri_cfg["subsystems"][0]["config"].as_array_mut().unwrap() {
            if e["method"] == "bdev_replication_create" {
                e["params"]["remote_timeout_ms"] = json!(t);
            }
        }
    }
    let sec = Node::start(dir, "secondary", &sec_cfg, "0x1");
    let pri = Node::start(dir, "primary", &pri_cfg, "0x2");
    Pair {
        sec,
        pri,
        ingress: Export {
            port: p,
            nqn: "nqn.2016-06.io.spdk:svm0-ingress".into(),
        },
        top: Export {
            port: p + 1,
            nqn: "nqn.2016-06.io.spdk:svm0".into(),
        },
        primary: Export {
            port: p + 2,
            nqn: "nqn.2016-06.io.spdk:pvm0".into(),
        },
    }
}

impl Pair {
    /// Starts replication: the secondary, then the primary (both from `none`).
    pub fn start(&self) {
        self.sec.ok(
            "bdev_replication_start",
            json!({"name": "svm0", "mode": "secondary"}),
        );
        self.pri.ok(
            "bdev_replication_start",
            json!({"name": "pvm0", "mode": "primary"}),
        );
    }
}

pub fn md5_hex(b: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

pub fn fill(len: usize, byte: u8) -> Vec<u8> {
    vec![byte; len]
}

/// Asserts `data` is made of runs of (length, byte), reporting the first difference.
pub fn assert_runs(data: &[u8], runs: &[(usize, u8)], what: &str) {
    let total: usize = runs.iter().map(|r| r.0).sum();
    assert_eq!(data.len(), total, "{what}: length");
    let mut at = 0;
    for &(len, b) in runs {
        if let Some(i) = data[at..at + len].iter().position(|&x| x != b) {
            panic!(
                "{what}: byte {} (block {}) is {:#x}, want {b:#x}",
                at + i,
                (at + i) / BS,
                data[at + i]
            );
        }
        at += len;
    }
}

/// Waits for `f` to hold, up to `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Blocks per transfer: the controller's MDTS (SPDK's target: 128 KiB), at most 1 MiB.
fn per_transfer(c: &Controller) -> u32 {
    (c.info().max_transfer.min(1 << 20) / BS).max(1) as u32
}

/// Writes `data` at `lba` in transfers the controller accepts.
pub fn write_all(c: &Controller, lba: u64, data: &[u8]) {
    let per = per_transfer(c) as usize * BS;
    for (i, chunk) in data.chunks(per).enumerate() {
        let at = lba + (i * per / BS) as u64;
        c.blocking().write(1, at, chunk.to_vec()).unwrap();
    }
}

/// Reads `nblocks` from `lba` in transfers the controller accepts.
pub fn read_all(c: &Controller, lba: u64, nblocks: u32) -> Vec<u8> {
    let per = per_transfer(c);
    let mut out = Vec::with_capacity(nblocks as usize * BS);
    let mut at = 0;
    while at < nblocks {
        let n = (nblocks - at).min(per);
        out.extend(c.blocking().read(1, lba + u64::from(at), n).unwrap());
        at += n;
    }
    out
}
