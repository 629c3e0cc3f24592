//! Harness for tests against real SPDK processes: `replication_tgt` nodes started from the
//! project's `config/*.json`, SPDK's Python RPC client, `replctl`, and SPDK's own
//! initiators (`spdk_dd`, `bdevperf`) over NVMe-oF TCP on 127.0.0.1.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const BS: u64 = 4096;
pub const SENTINEL: u8 = 0xEE;

/// SPDK processes poll a core each; on a small machine, tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

pub struct Env {
    pub tgt: PathBuf,
    pub spdk_bin: PathBuf,
    pub replctl: PathBuf,
    pub root: PathBuf,
    pub tmp: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The environment, or `None` after printing one line saying what is missing.
pub fn env(test: &str) -> Option<Env> {
    let skip = |why: String| {
        // Straight to stderr: libtest captures the print macros, and this line must show.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
        None
    };
    if !spdk_replication::SPDK_FOUND {
        return skip("SPDK was not found when building (see README, \"SPDK discovery\")".into());
    }
    let prefix = PathBuf::from(spdk_replication::SPDK_PREFIX.expect("set with SPDK"));
    let spdk_bin = prefix.join("bin");
    for tool in ["spdk_dd", "bdevperf"] {
        if !spdk_bin.join(tool).exists() {
            return skip(format!(
                "{} is missing (SPDK's tools are expected in {})",
                tool,
                spdk_bin.display()
            ));
        }
    }
    if !which("spdk-rpc") {
        return skip("spdk-rpc (PyPI package `spdk`) is not installed".into());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // replctl is a sibling package: built into the same target directory by
    // `cargo test --workspace`, or on demand here.
    let target = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let replctl = target.join("replctl");
    if !replctl.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "replctl"])
            .current_dir(&root)
            .status();
        if !st.is_ok_and(|s| s.success()) || !replctl.exists() {
            return skip("replctl could not be built".into());
        }
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Some(Env {
        tgt: PathBuf::from(env!("CARGO_BIN_EXE_replication_tgt")),
        spdk_bin,
        replctl,
        root,
        tmp: tempfile::tempdir().unwrap(),
        _serial: serial,
    })
}

/// A block of free TCP ports for one test.
pub fn ports() -> u16 {
    let base = 4600 + (std::process::id() % 200) as u16 * 10;
    base + NEXT_PORT.fetch_add(10, Ordering::SeqCst) % 2000
}

/// An NVMe-oF TCP export on loopback.
#[derive(Clone)]
pub struct Export {
    pub port: u16,
    pub nqn: String,
}

pub struct App {
    child: Option<Child>,
    pub name: String,
    pub sock: PathBuf,
    pub log: PathBuf,
    plugin_dir: PathBuf,
    rpc_call: PathBuf,
}

impl App {
    /// Starts `replication_tgt` on `core` with `config` and waits until it serves RPCs.
    pub fn start(env: &Env, name: &str, config: &Value, core: u32) -> App {
        let dir = env.tmp.path();
        let cfg = dir.join(format!("{name}.json"));
        std::fs::write(&cfg, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        Self::start_file(env, name, &cfg, core)
    }

    pub fn start_file(env: &Env, name: &str, cfg: &Path, core: u32) -> App {
        Self::start_mask(env, name, cfg, &format!("{:#x}", 1u32 << core))
    }

    /// Starts with an SPDK core mask (several reactors when it has several bits).
    pub fn start_mask(env: &Env, name: &str, cfg: &Path, mask: &str) -> App {
        Self::start_args(env, name, cfg, mask, &[])
    }

    /// Starts with an SPDK core mask and `extra` arguments for `replication_tgt`.
    pub fn start_args(env: &Env, name: &str, cfg: &Path, mask: &str, extra: &[&str]) -> App {
        let dir = env.tmp.path();
        let sock = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(&env.tgt)
            // vhost-user sockets are created relative to the working directory.
            .current_dir(dir)
            .args([
                "--no-huge",
                "-s",
                "1024",
                "--no-pci",
                "--disable-cpumask-locks",
            ])
            .args(["-m", mask])
            .arg("-r")
            .arg(&sock)
            .arg("--json")
            .arg(cfg)
            .args(extra)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .expect("start replication_tgt");
        let mut app = App {
            child: Some(child),
            name: name.into(),
            sock,
            log,
            plugin_dir: env.root.join("tests/rpc_plugin"),
            rpc_call: env.root.join("tests/spdk/rpc_call.py"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = app.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{name} exited ({st}) during start-up:\n{}", app.log_text());
            }
            // Probed without panicking: the socket can exist a moment before SPDK's RPC
            // server answers on it (the client then sees a reset, not JSON).
            if app.sock.exists()
                && matches!(app.try_rpc("framework_wait_init", Value::Null), Some(Ok(_)))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not come up:\n{}",
                app.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        app
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited (a crash, say).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A raw call through SPDK's Python client: `Ok(result)` or `Err((code, message))`.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        self.try_rpc_output(method, params)
            .unwrap_or_else(|(text, err)| {
                panic!(
                    "{method}: no JSON from the RPC client: {text} {err}\n{}",
                    self.log_text()
                )
            })
    }

    /// `rpc`, or `None` when the client got no answer at all (nothing listening yet).
    pub fn try_rpc(&self, method: &str, params: Value) -> Option<Result<Value, (i64, String)>> {
        self.try_rpc_output(method, params).ok()
    }

    #[allow(clippy::type_complexity)]
    fn try_rpc_output(
        &self,
        method: &str,
        params: Value,
    ) -> Result<Result<Value, (i64, String)>, (String, String)> {
        let mut cmd = Command::new("python3");
        cmd.arg(&self.rpc_call).arg(&self.sock).arg(method);
        if !params.is_null() {
            cmd.arg(params.to_string());
        }
        let out = cmd.output().expect("python3");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.trim()).map_err(|_| {
            (
                text.to_string(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })?;
        Ok(match v.get("error") {
            Some(e) => Err((
                e["code"].as_i64().unwrap_or(0),
                e["message"].as_str().unwrap_or("").to_string(),
            )),
            None => Ok(v["result"].clone()),
        })
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.rpc(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e:?}\n{}", self.log_text()))
    }

    /// `spdk-rpc` with the project's plugin: SPDK's own CLI, as an operator would run it.
    pub fn spdk_rpc(&self, args: &[&str]) -> Output {
        Command::new("spdk-rpc")
            .env("PYTHONPATH", &self.plugin_dir)
            .arg("-s")
            .arg(&self.sock)
            .args(["--plugin", "rpc_replication"])
            .args(args)
            .output()
            .expect("spdk-rpc")
    }

    pub fn replctl(&self, env: &Env, args: &[&str]) -> Output {
        Command::new(&env.replctl)
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("replctl")
    }

    pub fn status(&self, name: &str) -> Value {
        self.ok("bdev_replication_get_status", json!({"name": name}))[0].clone()
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

    /// Clean shutdown (SIGINT), then wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// `config/<file>` with its TCP ports moved to `port_map` (old, new).
pub fn config(env: &Env, file: &str, port_map: &[(u16, u16)]) -> Value {
    let mut text = std::fs::read_to_string(env.root.join("config").join(file)).unwrap();
    for (old, new) in port_map {
        text = text.replace(
            &format!("\"trsvcid\": \"{old}\""),
            &format!("\"trsvcid\": \"{new}\""),
        );
    }
    serde_json::from_str(&text).unwrap()
}

/// A secondary and a primary from the README's configs, on their own ports.
pub struct Pair {
    pub sec: App,
    pub pri: App,
    pub ingress: Export,
    pub top: Export,
    pub primary: Export,
}

pub fn pair(env: &Env, remote_timeout_ms: Option<u64>) -> Pair {
    pair_with(env, remote_timeout_ms, |_| {})
}

/// `pair`, with `edit` applied to each entry of the primary's bdev config first.
pub fn pair_with(
    env: &Env,
    remote_timeout_ms: Option<u64>,
    mut edit: impl FnMut(&mut Value),
) -> Pair {
    let p = ports();
    let sec_cfg = config(env, "secondary.json", &[(4420, p), (4421, p + 1)]);
    let mut pri_cfg = config(env, "primary.json", &[(4420, p), (4430, p + 2)]);
    for e in pri_cfg["subsystems"][0]["config"].as_array_mut().unwrap() {
        if let Some(t) = remote_timeout_ms
            && e["method"] == "bdev_replication_create"
        {
            e["params"]["remote_timeout_ms"] = json!(t);
        }
        edit(e);
    }
    let sec = App::start(env, "secondary", &sec_cfg, 0);
    let pri = App::start(env, "primary", &pri_cfg, 1);
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

fn initiator_config(env: &Env, exp: &Export, tag: &str) -> PathBuf {
    // enable_flush: SPDK's NVMe bdev otherwise completes every flush locally.
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_set_options", "params": {"enable_flush": true}},
        {"method": "bdev_nvme_attach_controller", "params": {
            "name": "t", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
            "trsvcid": exp.port.to_string(), "subnqn": exp.nqn}}
    ]}]});
    let path = env.tmp.path().join(format!("init-{tag}-{}.json", exp.port));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

fn spdk_tool(env: &Env, tool: &str, tag: &str) -> Command {
    let mut c = Command::new(env.spdk_bin.join(tool));
    c.env(
        "LD_LIBRARY_PATH",
        env.spdk_bin.parent().unwrap().join("lib"),
    )
    .args([
        "--no-huge",
        "-s",
        "1024",
        "--no-pci",
        "--disable-cpumask-locks",
        "-m",
        "0x1",
    ])
    .arg("-r")
    .arg(env.tmp.path().join(format!("{tool}-{tag}.sock")));
    c
}

fn run(mut c: Command, what: &str) -> Result<String, String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // spdk_dd exits 0 even when I/O fails; the NVMe initiator logs every failed completion.
    let io_failed = text.contains("*ERROR*") || text.contains("DEVICE ERROR");
    if out.status.success() && !io_failed {
        Ok(text)
    } else {
        Err(format!("{what} failed ({}):\n{text}", out.status))
    }
}

/// One spdk_dd run between a file and the export (attached as bdev `tn1`).
fn spdk_dd(env: &Env, exp: &Export, tag: &str, args: &[String]) -> Result<(), String> {
    let mut c = spdk_tool(env, "spdk_dd", tag);
    c.arg("--json").arg(initiator_config(env, exp, tag));
    c.args(args).args([format!("--bs={BS}"), "--qd=8".into()]);
    run(c, &format!("spdk_dd {tag}")).map(drop)
}

/// Writes `data` at block `lba` of an export with SPDK's spdk_dd (a real NVMe/TCP initiator).
pub fn dd_write(env: &Env, exp: &Export, lba: u64, data: &[u8]) -> Result<(), String> {
    let input = env.tmp.path().join(format!("dd-in-{}-{lba}", exp.port));
    std::fs::write(&input, data).unwrap();
    let args = [
        format!("--if={}", input.display()),
        "--ob=tn1".into(),
        format!("--seek={lba}"),
    ];
    spdk_dd(env, exp, "write", &args)
}

/// Reads `blocks` blocks at `lba` of an export. The output file starts out filled with the
/// sentinel, so a short or missing read cannot pass for data.
pub fn dd_read(env: &Env, exp: &Export, lba: u64, blocks: u64) -> Result<Vec<u8>, String> {
    let out = env.tmp.path().join(format!("dd-out-{}-{lba}", exp.port));
    std::fs::write(&out, vec![SENTINEL; (blocks * BS) as usize]).unwrap();
    let args = [
        "--ib=tn1".into(),
        format!("--of={}", out.display()),
        format!("--skip={lba}"),
        format!("--count={blocks}"),
    ];
    spdk_dd(env, exp, "read", &args)?;
    Ok(std::fs::read(&out).unwrap())
}

fn bdevperf_cmd(env: &Env, exp: &Export, workload: &str, secs: u32) -> Command {
    let mut c = spdk_tool(env, "bdevperf", workload);
    c.arg("--json").arg(initiator_config(env, exp, workload));
    c.args([
        "-q",
        "16",
        "-o",
        "4096",
        "-w",
        workload,
        "-t",
        &secs.to_string(),
    ]);
    c
}

/// bdevperf (QD16, 4 KiB) against an export; returns its output.
pub fn bdevperf(env: &Env, exp: &Export, workload: &str, secs: u32) -> Result<String, String> {
    run(bdevperf_cmd(env, exp, workload, secs), "bdevperf")
}

/// bdevperf in the background; its output goes to `bdevperf-<workload>.log` in the tmp dir.
pub fn bdevperf_spawn(env: &Env, exp: &Export, workload: &str, secs: u32) -> Child {
    bdevperf_spawn_on(env, exp, workload, secs, "0x1")
}

pub fn bdevperf_spawn_on(env: &Env, exp: &Export, workload: &str, secs: u32, mask: &str) -> Child {
    let mut c = bdevperf_cmd(env, exp, workload, secs);
    c.args(["-m", mask]);
    let log = env.tmp.path().join(format!("bdevperf-{workload}.log"));
    c.stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null());
    c.spawn().expect("bdevperf")
}

/// Asserts that `data` consists of the given (length, byte) runs, naming the first mismatch.
pub fn assert_runs(data: &[u8], runs: &[(u64, u8)], what: &str) {
    let total: u64 = runs.iter().map(|r| r.0).sum();
    assert_eq!(data.len() as u64, total, "{what}: length");
    let mut pos = 0usize;
    for &(len, byte) in runs {
        if let Some(i) = data[pos..pos + len as usize]
            .iter()
            .position(|&b| b != byte)
        {
            panic!(
                "{what}: byte {} is {:#04x}, expected {byte:#04x}",
                pos + i,
                data[pos + i]
            );
        }
        pos += len as usize;
    }
}

pub fn fill(len: u64, byte: u8) -> Vec<u8> {
    vec![byte; len as usize]
}

/// bdevperf's `Total` line: (IOPS, failed I/O per second, timed-out I/O per second).
pub fn bdevperf_total(out: &str) -> (f64, f64, f64) {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("Total"))
        .unwrap_or_else(|| panic!("no Total line in bdevperf output:\n{out}"));
    let f: Vec<f64> = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0], f[2], f[3])
}
