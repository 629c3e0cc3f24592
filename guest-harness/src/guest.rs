//! One QEMU guest: builder, background supervisor, output capture.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::env::HostEnv;
use crate::output::{GuestError, GuestOutput};

/// Line the guest's `/init` prints on the script output port after the script ends.
const RESULT_MARKER: &str = "GUEST-HARNESS-RESULT: rc=";
/// Largest script passed through fw_cfg.
const MAX_SCRIPT: usize = 256 << 10;
/// How often the supervisor looks at the serial log files and QEMU's status.
const TICK: Duration = Duration::from_millis(20);

/// Configures a guest; see [`Guest::builder`].
#[derive(Debug, Clone)]
pub struct GuestBuilder {
    script: String,
    append: Vec<String>,
    hostfwd: Vec<(u16, u16)>,
    vhost_user_blk: Vec<PathBuf>,
    timeout: Duration,
    memory_mib: u32,
    network: bool,
    qemu_args: Vec<String>,
}

impl Default for GuestBuilder {
    fn default() -> Self {
        GuestBuilder {
            script: String::new(),
            append: Vec::new(),
            hostfwd: Vec::new(),
            vhost_user_blk: Vec::new(),
            timeout: Duration::from_secs(180),
            memory_mib: 256,
            network: true,
            qemu_args: Vec::new(),
        }
    }
}

impl GuestBuilder {
    /// Shell script run as root by busybox `sh` inside the guest, with the helpers of
    /// `guest-harness.sh` already sourced. Keep it small (it travels by fw_cfg, which is slow
    /// under TCG for large blobs): generate bulk data inside the guest.
    pub fn script(mut self, script: impl Into<String>) -> Self {
        self.script = script.into();
        self
    }
    /// Extra kernel command line arguments, e.g. `nvme_core.admin_timeout=10`.
    pub fn append(mut self, arg: impl Into<String>) -> Self {
        self.append.push(arg.into());
        self
    }
    /// Forwards host `127.0.0.1:host_port` to the guest's TCP `guest_port`.
    pub fn hostfwd(mut self, host_port: u16, guest_port: u16) -> Self {
        self.hostfwd.push((host_port, guest_port));
        self
    }
    /// Adds a vhost-user-blk-pci disk served by the backend listening on `socket` (the guest
    /// sees `/dev/vda`, `/dev/vdb`, ... in call order). Switches guest RAM to a shared memfd,
    /// which vhost-user needs.
    pub fn vhost_user_blk(mut self, socket: impl Into<PathBuf>) -> Self {
        self.vhost_user_blk.push(socket.into());
        self
    }
    /// Upper bound on the guest's whole life (default 180 s); QEMU is killed when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Guest RAM (default 256 MiB).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
    /// No NIC at all (default: virtio-net on QEMU user networking, 10.0.2.15, host = 10.0.2.2).
    pub fn no_network(mut self) -> Self {
        self.network = false;
        self
    }
    /// Raw extra QEMU arguments.
    pub fn qemu_arg(mut self, arg: impl Into<String>) -> Self {
        self.qemu_args.push(arg.into());
        self
    }

    /// Builds (or reuses) the initramfs and starts QEMU in the background.
    pub fn spawn(self) -> Result<Guest> {
        // fw_cfg is read byte by byte under TCG: a few MiB take minutes (see README.md)
        if self.script.len() > MAX_SCRIPT {
            anyhow::bail!(
                "guest script is {} bytes (max {MAX_SCRIPT}): generate data inside the guest",
                self.script.len()
            );
        }
        let env = HostEnv::load()?;
        let initrd = crate::initramfs::initramfs(&env)?;
        let dir = tempfile::Builder::new()
            .prefix("guest-harness-")
            .tempdir()
            .context("creating the guest's temp folder")?;
        let script = dir.path().join("script.sh");
        std::fs::write(&script, &self.script).context("writing the script")?;
        let console = dir.path().join("console.log");
        let output = dir.path().join("output.log");
        let qemu_err = dir.path().join("qemu.stderr");
        let mut cmd = self.command(&env, &initrd, &script, &console, &output)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&qemu_err).context("creating qemu.stderr")?);
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        unsafe {
            // QEMU dies with the supervisor thread that forks it (i.e. with this Guest, or
            // with the test process if that is killed): no stray guests after a crashed test.
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let sup = Supervisor {
            shared: shared.clone(),
            console,
            output,
            qemu_err,
            deadline: Instant::now() + self.timeout,
        };
        let thread = std::thread::Builder::new()
            .name("guest-harness".into())
            .spawn(move || sup.run(cmd, tx))
            .context("spawning the guest supervisor thread")?;
        let pid = match rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e).context(format!("starting {}", env.qemu.display()));
            }
            Err(_) => anyhow::bail!("guest supervisor thread died"),
        };
        Ok(Guest {
            pid,
            shared,
            thread: Some(thread),
            timeout: self.timeout,
            started: Instant::now(),
            _dir: dir,
        })
    }

    fn command(
        &self,
        env: &HostEnv,
        initrd: &Path,
        script: &Path,
        console: &Path,
        output: &Path,
    ) -> Result<Command> {
        let mut cmd = Command::new(&env.qemu);
        for d in &env.qemu_datadirs {
            cmd.arg("-L").arg(d);
        }
        // /dev/kvm on these hosts cannot run stock kernels; GUEST_HARNESS_ACCEL=kvm for real KVM.
        match std::env::var("GUEST_HARNESS_ACCEL").as_deref() {
            Ok("kvm") => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            _ => cmd.args(["-accel", "tcg"]),
        };
        let mut append = vec!["console=ttyS0", "quiet", "loglevel=4", "panic=-1"];
        if !self.network {
            append.push("guest_harness.net=0");
        }
        let append = append
            .into_iter()
            .map(String::from)
            .chain(self.append.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        cmd.args(["-nodefaults", "-no-user-config", "-no-reboot", "-smp", "1"])
            .args(["-m", &format!("{}M", self.memory_mib)])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-kernel")
            .arg(env.vmlinuz())
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &append])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-serial")
            .arg(format!("file:{}", output.display()))
            .arg("-fw_cfg")
            .arg(format!(
                "name=opt/guest-harness/script,file={}",
                script.display()
            ));
        if self.network {
            let mut netdev = "user,id=n0".to_string();
            for (h, g) in &self.hostfwd {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
            }
            cmd.args(["-netdev", &netdev])
                .args(["-device", "virtio-net-pci,netdev=n0,romfile="]);
        } else if !self.hostfwd.is_empty() {
            anyhow::bail!("hostfwd needs the network (no_network was set)");
        }
        if !self.vhost_user_blk.is_empty() {
            let mem = format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                self.memory_mib
            );
            cmd.args(["-object", &mem, "-numa", "node,memdev=mem"]);
            for (i, sock) in self.vhost_user_blk.iter().enumerate() {
                cmd.arg("-chardev")
                    .arg(format!("socket,id=vub{i},path={}", sock.display()))
                    .arg("-device")
                    .arg(format!("vhost-user-blk-pci,chardev=vub{i},num-queues=1"));
            }
        }
        cmd.args(&self.qemu_args);
        Ok(cmd)
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    console: String,
    output: String,
    qemu_stderr: String,
    /// Set once QEMU has exited (or was killed) and the logs are fully read.
    finished: Option<Finish>,
    stop: bool,
}

#[derive(Clone)]
enum Finish {
    Exited(ExitStatus),
    TimedOut,
    Stopped,
}

struct Supervisor {
    shared: Arc<Shared>,
    console: PathBuf,
    output: PathBuf,
    qemu_err: PathBuf,
    deadline: Instant,
}

impl Supervisor {
    fn run(self, mut cmd: Command, started: mpsc::Sender<Result<u32>>) {
        let mut child: Child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = started.send(Err(e.into()));
                return;
            }
        };
        let _ = started.send(Ok(child.id()));
        let mut logs = [Tail::new(&self.console), Tail::new(&self.output)];
        let finish = loop {
            let status = child.try_wait().ok().flatten();
            let stop = self.lock().stop;
            let finish = match status {
                Some(s) => Some(Finish::Exited(s)),
                None if stop => Some(Finish::Stopped),
                None if Instant::now() >= self.deadline => Some(Finish::TimedOut),
                None => None,
            };
            if finish
                .as_ref()
                .is_some_and(|f| !matches!(f, Finish::Exited(_)))
            {
                let _ = child.kill();
                let _ = child.wait();
            }
            // read after the exit check so everything QEMU wrote before exiting is seen
            let new = [logs[0].read_new(), logs[1].read_new()];
            if new.iter().any(|s| !s.is_empty()) {
                let mut st = self.lock();
                st.console.push_str(&new[0]);
                st.output.push_str(&new[1]);
                drop(st);
                self.shared.changed.notify_all();
            }
            if let Some(f) = finish {
                break f;
            }
            // bounded poll: QEMU writes the serial ports into plain files
            let st = self.lock();
            let _ = self.shared.changed.wait_timeout(st, TICK);
        };
        let stderr = std::fs::read_to_string(&self.qemu_err).unwrap_or_default();
        let mut st = self.lock();
        st.qemu_stderr = stderr;
        st.finished = Some(finish);
        drop(st);
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Incremental reader of a growing log file.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    pending: Vec<u8>,
}

impl Tail {
    fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_path_buf(),
            file: None,
            pending: Vec::new(),
        }
    }

    /// New complete text since the last call (serial `\r` dropped, invalid UTF-8 replaced).
    fn read_new(&mut self) -> String {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.read_to_end(&mut self.pending);
        }
        // keep an incomplete UTF-8 sequence for the next read
        let cut = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let chunk: Vec<u8> = self.pending.drain(..cut).filter(|b| *b != b'\r').collect();
        String::from_utf8_lossy(&chunk).into_owned()
    }
}

/// A running guest. Dropping it kills QEMU.
pub struct Guest {
    pid: u32,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Guest {
    pub fn builder() -> GuestBuilder {
        GuestBuilder::default()
    }

    /// Waits until a line of the script output contains `needle` and returns that line.
    /// Fails when the guest finishes or `timeout` passes first.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if let Some(line) = st.output.lines().find(|l| l.contains(needle)) {
                // only complete lines: the supervisor appends whole reads, which may end mid-line
                let complete = st.output.contains(&format!("{line}\n"));
                if complete {
                    return Ok(line.to_string());
                }
            }
            let now = Instant::now();
            if st.finished.is_some() || now >= deadline {
                let tail = describe_tail(&st);
                if st.finished.is_some() {
                    anyhow::bail!("guest finished before printing {needle:?}\n{tail}");
                }
                return Err(GuestError::LineTimeout {
                    needle: needle.to_string(),
                    timeout,
                    tail,
                }
                .into());
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Script output so far.
    pub fn output(&self) -> String {
        self.lock().output.clone()
    }

    /// Console (kernel + init) output so far.
    pub fn console(&self) -> String {
        self.lock().console.clone()
    }

    /// Waits for the guest to power off (bounded by the builder's timeout) and returns the
    /// script's exit code and output. Errors: timeout, or QEMU/the kernel died without a result.
    pub fn wait(mut self) -> Result<GuestOutput> {
        let mut st = self.lock();
        while st.finished.is_none() {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        let finish = st.finished.clone();
        let tail = describe_tail(&st);
        let rc = st
            .output
            .lines()
            .find_map(|l| l.strip_prefix(RESULT_MARKER))
            .and_then(|v| v.trim().parse::<i32>().ok());
        let output = st
            .output
            .lines()
            .filter(|l| !l.starts_with(RESULT_MARKER))
            .fold(String::new(), |acc, l| acc + l + "\n");
        let out = GuestOutput {
            rc: rc.unwrap_or(-1),
            output,
            console: st.console.clone(),
            qemu_stderr: st.qemu_stderr.clone(),
            elapsed: self.started.elapsed(),
        };
        drop(st);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match (finish, rc) {
            (Some(Finish::TimedOut), _) => Err(GuestError::Timeout {
                timeout: self.timeout,
                tail,
            }
            .into()),
            (_, Some(_)) => Ok(out),
            (Some(Finish::Exited(s)), None) => Err(GuestError::NoResult {
                status: s.to_string(),
                tail,
            }
            .into()),
            (_, None) => Err(GuestError::NoResult {
                status: "stopped".into(),
                tail,
            }
            .into()),
        }
    }

    /// Kills QEMU now (same as dropping the guest).
    pub fn kill(self) {}

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.lock().stop = true;
            self.shared.changed.notify_all();
            let _ = t.join();
        }
    }
}

/// The last lines of each stream, for error messages.
fn describe_tail(st: &State) -> String {
    fn tail(s: &str, n: usize) -> String {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
    format!(
        "--- script output (tail) ---\n{}\n--- console (tail) ---\n{}\n--- qemu stderr ---\n{}",
        tail(&st.output, 30),
        tail(&st.console, 30),
        tail(&st.qemu_stderr, 10)
    )
}
