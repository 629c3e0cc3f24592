//! The native `replication_tgt`: SPDK's application options, reactors from the `-m`
//! mask, the `--json` config, the JSON-RPC socket (`-r`), and a clean exit on SIGINT /
//! SIGTERM. [`NativeNode`] is the same node in-process, for tests.

use super::host::App;
use super::reactor::{Reactor, Reactors, spawn_local};
use crate::control::RpcError;
use clap::Parser;
use serde_json::Value;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

/// SPDK's standard application options. Those that tune SPDK's memory and PCI handling
/// are accepted and ignored: the native host has no use for them.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "replication_tgt",
    about = "COLO block replication node (native host)"
)]
pub struct Opts {
    /// Core mask (hex, e.g. 0x3) or list ([0,1]): one reactor per core.
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    pub cpumask: String,
    /// JSON-RPC socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/spdk.sock")]
    pub rpc_socket: PathBuf,
    /// The SPDK host's RPC poll period. Accepted for the same command lines on both hosts:
    /// the native server answers each request as soon as its method finishes.
    #[arg(long = "rpc-poll-us", value_name = "US")]
    pub rpc_poll_us: Option<u64>,
    /// JSON config file, SPDK's format.
    #[arg(short = 'c', long = "json", alias = "config")]
    pub json: Option<PathBuf>,
    /// Log flags (`-L bdev`): raise those targets to debug.
    #[arg(short = 'L', long = "logflag")]
    pub logflag: Vec<String>,
    /// Directory of vhost-user sockets.
    #[arg(short = 'S', long = "vhost-dir", default_value = ".")]
    pub vhost_dir: PathBuf,
    /// Start the RPC server before initialising (framework_start_init continues).
    #[arg(long = "wait-for-rpc")]
    pub wait_for_rpc: bool,
    #[arg(short = 's', long = "mem-size", hide = true)]
    pub mem_size: Option<String>,
    #[arg(long = "no-huge", hide = true)]
    pub no_huge: bool,
    #[arg(short = 'u', long = "no-pci", hide = true)]
    pub no_pci: bool,
    #[arg(long = "disable-cpumask-locks", hide = true)]
    pub disable_cpumask_locks: bool,
    #[arg(short = 'i', long = "shm-id", hide = true)]
    pub shm_id: Option<String>,
    #[arg(short = 'e', long = "tpoint-group", hide = true)]
    pub tpoint_group: Option<String>,
    #[arg(short = 'p', long = "main-core", hide = true)]
    pub main_core: Option<String>,
    #[arg(long = "silence-noticelog", hide = true)]
    pub silence_noticelog: bool,
    #[arg(short = 'n', long = "mem-channels", hide = true)]
    pub mem_channels: Option<String>,
    /// Go on loading the --json config after a failing call (logged).
    #[arg(long = "json-ignore-init-errors")]
    pub json_ignore_init_errors: bool,
    #[arg(short = 'g', long = "single-file-segments", hide = true)]
    pub single_file_segments: bool,
    #[arg(short = 'R', long = "huge-unlink", hide = true)]
    pub huge_unlink: bool,
    #[arg(long = "huge-dir", hide = true)]
    pub huge_dir: Option<String>,
    #[arg(long = "iova-mode", hide = true)]
    pub iova_mode: Option<String>,
    #[arg(long = "base-virtaddr", hide = true)]
    pub base_virtaddr: Option<String>,
    #[arg(short = 'd', long = "limit-coredump", hide = true)]
    pub limit_coredump: bool,
    #[arg(long = "num-trace-entries", hide = true)]
    pub num_trace_entries: Option<String>,
    #[arg(short = 'B', long = "pci-blocked", hide = true)]
    pub pci_blocked: Vec<String>,
    #[arg(short = 'A', long = "pci-allowed", hide = true)]
    pub pci_allowed: Vec<String>,
    #[arg(long = "rpcs-allowed", hide = true)]
    pub rpcs_allowed: Option<String>,
    #[arg(long = "interrupt-mode", hide = true)]
    pub interrupt_mode: bool,
}

/// Cores of a mask: `0x3`, `3`, `[0,1]`, `[0-3]`.
pub fn parse_cpumask(s: &str) -> Result<Vec<usize>, String> {
    let s = s.trim();
    let bad = || format!("-m: invalid core mask {s:?}");
    let cores: Vec<usize> =
        if let Some(list) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            let mut v = Vec::new();
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b): (usize, usize) =
                            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                        if b < a || b >= 1024 {
                            return Err(bad());
                        }
                        v.extend(a..=b);
                    }
                    None => v.push(part.parse().map_err(|_| bad())?),
                }
            }
            v
        } else {
            let hex = s.trim_start_matches("0x").trim_start_matches("0X");
            let m = u128::from_str_radix(hex, 16).map_err(|_| bad())?;
            (0..128).filter(|i| m & (1u128 << i) != 0).collect()
        };
    if cores.is_empty() {
        return Err(format!("-m: core mask {s:?} selects no core"));
    }
    let mut c = cores;
    c.sort_unstable();
    c.dedup();
    Ok(c)
}

thread_local! {
    /// The app state, on reactor 0 only.
    static APP: RefCell<Option<Rc<App>>> = const { RefCell::new(None) };
}

fn app() -> Option<Rc<App>> {
    APP.with(|a| a.borrow().clone())
}

/// A running native node: reactors and the app state on reactor 0.
pub struct NativeNode {
    reactors: Option<Reactors>,
    main: Reactor,
}

impl NativeNode {
    /// Starts an initialised node (no config file), ready for runtime calls.
    pub fn start(cores: &[usize], vhost_dir: PathBuf) -> std::io::Result<Self> {
        let node = Self::start_paused(cores, vhost_dir)?;
        node.boot(None, false, false)
            .map_err(std::io::Error::other)?;
        Ok(node)
    }

    /// Starts the reactors with the framework in its startup state; [`NativeNode::boot`]
    /// goes on.
    pub fn start_paused(cores: &[usize], vhost_dir: PathBuf) -> std::io::Result<Self> {
        let reactors = Reactors::start(cores)?;
        let main = reactors.get(0).clone();
        let handles = reactors.handles();
        let cores = cores.to_vec();
        let (tx, rx) = std::sync::mpsc::channel();
        main.send(move || {
            APP.with(|a| *a.borrow_mut() = Some(App::new(handles, cores, vhost_dir)));
            let _ = tx.send(());
        });
        rx.recv()
            .map_err(|_| std::io::Error::other("reactor 0 did not start"))?;
        Ok(Self {
            reactors: Some(reactors),
            main,
        })
    }

    /// Calls a method on the app reactor; the future is Send (JSON-RPC server threads).
    pub fn call_async(
        &self,
        method: String,
        params: Option<Value>,
    ) -> impl std::future::Future<Output = Result<Value, RpcError>> + Send + use<> {
        let f = self.main.run(move || async move {
            match app() {
                Some(a) => super::framework::call_client(&a, &method, params).await,
                None => Err(RpcError::new(-32603, "the node is shutting down")),
            }
        });
        async move {
            f.await
                .unwrap_or_else(|| Err(RpcError::new(-32603, "the node is shutting down")))
        }
    }

    /// Calls a method on the app reactor as an RPC client did (SPDK's startup/runtime state
    /// rules apply) and hands the answer to `done` there; the caller does not wait.
    pub fn call_with_reply(
        &self,
        method: String,
        params: Option<Value>,
        done: impl FnOnce(Result<Value, RpcError>) + Send + 'static,
    ) {
        self.main.send(move || {
            spawn_local(async move {
                let r = match app() {
                    Some(a) => super::framework::call_client(&a, &method, params).await,
                    None => Err(RpcError::new(-32603, "the node is shutting down")),
                };
                done(r)
            })
        });
    }

    /// Calls a method and waits for its answer.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let p = (!params.is_null()).then_some(params);
        futures::executor::block_on(self.call_async(method.to_owned(), p))
    }

    /// SPDK's start-up: the `--json` file's startup pass, then initialisation and its runtime
    /// pass, unless `wait_for_rpc` leaves those to `framework_start_init`. `keep_going` logs
    /// failed calls instead of stopping.
    pub fn boot(
        &self,
        json: Option<String>,
        keep_going: bool,
        wait_for_rpc: bool,
    ) -> Result<(), String> {
        let f = self.main.run(move || async move {
            match app() {
                Some(a) => super::framework::boot(&a, json, keep_going, wait_for_rpc).await,
                None => Err("the node is shutting down".into()),
            }
        });
        futures::executor::block_on(f).unwrap_or_else(|| Err("the node stopped".into()))
    }

    /// Runs `f` with the app state on the app reactor (benchmarks, tests).
    pub fn with_app<F, Fut, T>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Rc<App>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let r = self.main.run(move || async move {
            match app() {
                Some(a) => Some(f(a).await),
                None => None,
            }
        });
        futures::executor::block_on(r).flatten()
    }

    /// Shuts down exports when other handles to the node remain (RPC threads finishing).
    pub fn request_shutdown(&self) {
        let done = self.main.run(|| async {
            if let Some(a) = APP.with(|a| a.borrow_mut().take()) {
                a.nvmf.shutdown();
                a.vhost.shutdown();
            }
        });
        let _ = futures::executor::block_on(done);
    }

    pub fn main_reactor(&self) -> &Reactor {
        &self.main
    }

    /// Closes exports and stops the reactors.
    pub fn shutdown(&mut self) {
        let Some(r) = self.reactors.take() else {
            return;
        };
        let done = self.main.run(|| async {
            if let Some(a) = APP.with(|a| a.borrow_mut().take()) {
                a.nvmf.shutdown();
                a.vhost.shutdown();
            }
        });
        let _ = futures::executor::block_on(done);
        r.stop();
    }
}

impl Drop for NativeNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs the native `replication_tgt` until SIGINT/SIGTERM; returns the exit code.
pub fn run(args: Vec<String>) -> i32 {
    let opts = match Opts::try_parse_from(&args) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    init_logging(&opts.logflag);
    match run_node(&opts) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("replication_tgt: {e:#}");
            1
        }
    }
}

fn init_logging(flags: &[String]) {
    let mut filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    for f in flags {
        // SPDK's log flags name components; ours are module paths.
        let target = match f.as_str() {
            "all" => "spdk_replication".to_owned(),
            "nvmf" | "nvmf_tcp" | "nvme" => "nvmf".to_owned(),
            other => format!("spdk_replication::native::{other}"),
        };
        filter.push_str(&format!(",{target}=debug"));
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run_node(opts: &Opts) -> anyhow::Result<()> {
    use anyhow::Context;
    let cores = parse_cpumask(&opts.cpumask).map_err(anyhow::Error::msg)?;
    // Register for the signals first, so a signal during start-up still stops us cleanly.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let node = std::sync::Arc::new(
        NativeNode::start_paused(&cores, opts.vhost_dir.clone()).context("starting reactors")?,
    );
    tracing::info!(
        reactors = cores.len(),
        "replication_tgt (native host) starting"
    );
    let json = match &opts.json {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --json {}", path.display()))?,
        ),
        None => None,
    };
    // The RPC socket serves from the start (SPDK's pauses it while the config loads;
    // framework_wait_init answers once it is loaded, the same for a client).
    let server = super::rpc_server::serve(node.clone(), &opts.rpc_socket)?;
    node.boot(json, opts.json_ignore_init_errors, opts.wait_for_rpc)
        .map_err(|e| match &opts.json {
            Some(p) => anyhow::anyhow!("--json {}: {e}", p.display()),
            None => anyhow::anyhow!("{e}"),
        })?;
    tracing::info!(socket = %opts.rpc_socket.display(), "replication_tgt started");
    let sig = signals.forever().next();
    tracing::info!(?sig, "shutting down");
    drop(server);
    match std::sync::Arc::try_unwrap(node) {
        Ok(mut n) => n.shutdown(),
        Err(n) => n.request_shutdown(),
    }
    Ok(())
}
