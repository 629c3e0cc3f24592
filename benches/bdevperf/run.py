#!/usr/bin/env python3
"""bdevperf comparison of the replication bdevs against stock SPDK bdevs.

Each (configuration, workload) runs in its own bdevperf process (`-z`, one core,
`--no-huge -s 1024 --no-pci`), with libreplication_module.so preloaded into every one of
them (baselines included), its bdevs built from a JSON config and the measured bdev
selected with `-T`. The measurement itself is a `perform_tests` JSON-RPC, whose reply
carries bdevperf's per-job results.

    configuration   measured bdev            compared with
    top             secondary top, running   passthru over one malloc
    ingress         <name>_ingress, COW done passthru over one malloc
    primary         primary, running         raid1 over two mallocs

Targets: top and ingress >= 0.90 of passthru, primary >= 0.95 of raid1.

Before every measured run, every setup is warmed the same way (`--no-huge` mallocs are
only faulted in on first touch): a 1 s sequential 128 KiB write pass over each malloc
(through a passthru named like the target, before the measured bdev is built), then one
over the measured bdev, then its precondition is restored (top: a checkpoint, overlays
checked empty; ingress: the pass is its COW prefill).

`--cow-sweep` instead measures the ingress at several COW granularities: 4 KiB random and
128 KiB sequential writes, with COW armed (checkpoints keep re-arming it during the run)
and with COW done, next to passthru, and what one copy costs beyond the two I/Os it makes
(a plain malloc's random read and write of one cluster).

Python 3.11, stdlib only. See README.md next to this file.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
MALLOC_MIB = 256
BLOCK = 4096
NUM_BLOCKS = MALLOC_MIB * 1024 * 1024 // BLOCK
COW_GRANULARITY = 16384
WORKLOADS = ("randread", "randwrite")
MIN_CPU_SHARE = 0.97

# Every process gets the same framework options, baselines included. The iobuf pools are
# shrunk so three 256 MiB mallocs fit in `-s 1024` (the bdev layer only takes iobuf
# buffers for reads submitted without one, and bdevperf always brings its own);
# auto-examine is off so no GPT/raid probe reads hit a bdev whose stage is still `none`.
FRAMEWORK = [
    {"subsystem": "iobuf", "config": [
        {"method": "iobuf_set_options",
         "params": {"small_pool_count": 2048, "large_pool_count": 256}}]},
]
BDEV_OPTIONS = {"method": "bdev_set_options", "params": {"bdev_auto_examine": False}}


def malloc(name: str) -> dict:
    return {"method": "bdev_malloc_create",
            "params": {"name": name, "num_blocks": NUM_BLOCKS, "block_size": BLOCK}}


@dataclass
class Setup:
    """A bdevperf process's bdevs: its JSON config and the bdev measured."""
    key: str
    label: str
    target: str
    bdev_config: list[dict]
    node: str | None = None  # our replication node (checked to be `running` first)
    prefill_ingress: bool = False  # write the ingress until COW is done, then measure
    # bdev -> why: in randwrite it must see at least as many writes as the measured bdev
    expect_writes_on: dict[str, str] = field(default_factory=dict)


SETUPS = {
    "passthru": Setup("passthru", "passthru(malloc)", "pt", [
        malloc("m0"),
        {"method": "bdev_passthru_create", "params": {"base_bdev_name": "m0", "name": "pt"}},
    ]),
    "raid1": Setup("raid1", "raid1(malloc,malloc)", "r1", [
        malloc("m0"), malloc("m1"),
        {"method": "bdev_raid_create",
         "params": {"name": "r1", "raid_level": "raid1", "strip_size_kb": 0,
                    "base_bdevs": ["m0", "m1"]}},
    ], expect_writes_on={"m1": "raid1 mirrors"}),
    "top": Setup("top", "secondary top (running)", "sec", [
        malloc("base"), malloc("hidden"), malloc("active"),
        {"method": "bdev_replication_create",
         "params": {"name": "sec", "mode": "secondary", "base_bdev": "base",
                    "hidden_bdev": "hidden", "active_bdev": "active",
                    "cow_granularity": COW_GRANULARITY}},
        {"method": "bdev_replication_start", "params": {"name": "sec"}},
    ], node="sec", expect_writes_on={"active": "top writes go to active when running"}),
    "ingress": Setup("ingress", "secondary ingress (COW done)", "sec_ingress", [
        malloc("base"), malloc("hidden"), malloc("active"),
        {"method": "bdev_replication_create",
         "params": {"name": "sec", "mode": "secondary", "base_bdev": "base",
                    "hidden_bdev": "hidden", "active_bdev": "active",
                    "cow_granularity": COW_GRANULARITY}},
        {"method": "bdev_replication_start", "params": {"name": "sec"}},
    ], node="sec", prefill_ingress=True,
       expect_writes_on={"base": "ingress writes go to base"}),
    "primary": Setup("primary", "primary (malloc,malloc)", "pri", [
        malloc("m0"), malloc("m1"),
        {"method": "bdev_replication_create",
         "params": {"name": "pri", "mode": "primary", "local_bdev": "m0",
                    "remote_bdev": "m1"}},
        {"method": "bdev_replication_start", "params": {"name": "pri"}},
    ], node="pri", expect_writes_on={"m1": "primary writes must reach the remote leg"}),
}

# (ours, baseline, target ratio)
COMPARISONS = [("top", "passthru", 0.90), ("ingress", "passthru", 0.90),
               ("primary", "raid1", 0.95)]


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- JSON-RPC

class Rpc:
    def __init__(self, path: Path):
        self.path = path
        self.next_id = 0

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0):
        self.next_id += 1
        req = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            req["params"] = params
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.path))
            s.sendall(json.dumps(req).encode())
            dec = json.JSONDecoder()
            buf = ""
            while True:
                try:
                    chunk = s.recv(1 << 16)
                except socket.timeout:
                    raise BenchError(f"RPC {method}: no reply in {timeout:.0f} s") from None
                if not chunk:
                    raise BenchError(f"RPC {method}: connection closed before a reply")
                buf += chunk.decode()
                try:
                    resp, _ = dec.raw_decode(buf.lstrip())
                    break
                except ValueError:
                    continue
        if "error" in resp:
            raise BenchError(f"RPC {method} failed: {json.dumps(resp['error'])}")
        return resp.get("result")


# --------------------------------------------------------------------------- bdevperf

LIVE: set[subprocess.Popen] = set()
KEEP_TMP = False


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGINT (bdevperf shuts SPDK down cleanly), then SIGKILL."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    LIVE.discard(proc)


def stop_all() -> None:
    for p in list(LIVE):
        stop(p, grace=5.0)


@dataclass
class Env:
    bdevperf: Path
    spdk_lib: Path
    module: Path
    tmp: Path
    core_mask: str
    mem_mb: int
    qd: int
    io_size: int
    secs: int
    extra: list[str] = field(default_factory=list)
    # Reactors driving the measured bdev: above 1, bdevperf's `-C` runs one job per core
    # of `core_mask`, each on its own slice of the disk, and their results are added up.
    jobs: int = 1
    # False: no `-T`, bdevperf runs a job on every unclaimed bdev (callers parse the jobs).
    only_target: bool = True
    # Run bdevperf under this command (instructions.py: valgrind's callgrind).
    wrapper: list[str] = field(default_factory=list)


def malloc_names(setup: Setup) -> list[str]:
    return [c["params"]["name"] for c in setup.bdev_config
            if c["method"] == "bdev_malloc_create"]


class Bdevperf:
    """One bdevperf process in `-z` mode with `setup`'s bdevs. With `mallocs_only`, the
    JSON config creates only the mallocs; `build()` then adds the rest over RPC."""

    def __init__(self, env: Env, setup: Setup, tag: str, mallocs_only: bool = False):
        self.env, self.setup = env, setup
        d = env.tmp / tag
        d.mkdir()
        self.dir = d
        self.sock = d / "rpc.sock"
        self.logfile = d / "bdevperf.log"
        self.mallocs_only = mallocs_only
        at_start = [c for c in setup.bdev_config
                    if not mallocs_only or c["method"] == "bdev_malloc_create"]
        cfg = {"subsystems": FRAMEWORK + [
            {"subsystem": "bdev",
             "config": [BDEV_OPTIONS] + at_start
                       + [{"method": "bdev_wait_for_examine"}]}]}
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        cmd = [*env.wrapper, str(env.bdevperf), "--no-huge", "-s", str(env.mem_mb), "--no-pci",
               "-m", env.core_mask, "-r", str(self.sock), "--json", str(d / "config.json"),
               "-z", *(["-T", setup.target] if env.only_target else []),
               "-q", str(env.qd), "-o", str(env.io_size),
               "-w", "randread", "-t", str(env.secs), *(["-C"] if env.jobs > 1 else []),
               *env.extra]
        (d / "cmd").write_text(" ".join(cmd) + "\n")
        e = dict(os.environ)
        e["LD_LIBRARY_PATH"] = ":".join(
            [str(env.spdk_lib)] + [p for p in e.get("LD_LIBRARY_PATH", "").split(":") if p])
        e["LD_PRELOAD"] = " ".join([str(env.module)] + e.get("LD_PRELOAD", "").split())
        self.out = open(self.logfile, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=e, cwd=d)
        LIVE.add(self.proc)
        self.rpc = Rpc(self.sock)
        self.failed = False

    def fail(self, why: str) -> BenchError:
        global KEEP_TMP
        KEEP_TMP = True  # the log named in the message stays
        self.failed = True
        stop(self.proc)
        self.out.close()
        text = self.logfile.read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-60:])
        return BenchError(f"{self.setup.label}: {why}\n"
                          f"--- command: {(self.dir / 'cmd').read_text().strip()}\n"
                          f"--- bdevperf log ({self.logfile}), last lines:\n{tail}\n---")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise self.fail(f"bdevperf exited with status {self.proc.returncode} at start-up")
            if self.sock.exists():
                try:
                    self.rpc.call("framework_wait_init", timeout=timeout)
                    break
                except (ConnectionError, FileNotFoundError):
                    pass
                except BenchError as e:
                    raise self.fail(str(e)) from None
            if time.monotonic() > deadline:
                raise self.fail(f"not ready after {timeout:.0f} s")
            time.sleep(0.1)
        if not self.mallocs_only:
            self.check_target()

    def call(self, method: str, params: dict | None = None):
        try:
            return self.rpc.call(method, params)
        except (BenchError, OSError) as e:
            raise self.fail(f"{method} {json.dumps(params)}: {e}") from None

    def build(self) -> None:
        """After a `mallocs_only` start: the rest of the setup's bdev config, over RPC."""
        for c in self.setup.bdev_config:
            if c["method"] != "bdev_malloc_create":
                self.call(c["method"], c.get("params"))
        self.call("bdev_wait_for_examine")
        self.check_target()

    def check_target(self) -> None:
        try:
            bdevs = self.rpc.call("bdev_get_bdevs", {"name": self.setup.target})
        except BenchError as e:
            raise self.fail(f"bdev {self.setup.target} missing: {e}") from None
        if not bdevs:
            raise self.fail(f"bdev {self.setup.target} missing")

    def reactor_cpu(self) -> tuple[float, float]:
        """(CPU seconds of bdevperf's reactor threads, steal seconds of their cores)."""
        cpu, cores = 0.0, set()
        for t in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                st = (t / "stat").read_text()
            except OSError:
                continue
            name = st[st.index("(") + 1:st.rindex(")")]
            f = st[st.rindex(")") + 2:].split()
            if name.startswith("reactor_"):
                cpu += (int(f[11]) + int(f[12])) / CLK_TCK
                cores.add(int(f[36]))
        steal = 0.0
        for line in Path("/proc/stat").read_text().splitlines():
            head, *vals = line.split()
            if head.startswith("cpu") and head[3:].isdigit() and int(head[3:]) in cores:
                steal += int(vals[7]) / CLK_TCK
        return cpu, steal

    def perform(self, workload: str, secs: int, io_size: int, qd: int | None = None,
                ticker: CheckpointTicker | None = None) -> dict:
        """One `perform_tests`; with `ticker`, checkpoints keep coming while it runs."""
        params = {"workload_type": workload, "time_in_sec": secs, "io_size": str(io_size),
                  "queue_depth": qd or self.env.qd}
        try:
            cpu0, steal0 = self.reactor_cpu()
            t0 = time.monotonic()
            if ticker:
                ticker.start()
            try:
                res = self.rpc.call("perform_tests", params, timeout=secs + 60)
            finally:
                if ticker:
                    ticker.stop()
            wall = time.monotonic() - t0
            cpu1, steal1 = self.reactor_cpu()
        except (BenchError, OSError) as e:
            raise self.fail(f"perform_tests {workload}: {e}") from None
        jobs = [j for j in (res or {}).get("results", []) if j.get("job") == self.setup.target]
        if len(jobs) != self.env.jobs:
            raise self.fail(f"perform_tests {workload}: not {self.env.jobs} result(s) for "
                            f"{self.setup.target} in {json.dumps(res)}")
        for j in jobs:
            if (j.get("status") != "finished" or j.get("io_failed", 0)
                    or j.get("io_timeout", 0)):
                raise self.fail(f"perform_tests {workload}: job did not finish cleanly: "
                                f"{json.dumps(j)}")
        iops = sum(j["iops"] for j in jobs)
        j = {"iops": iops, "mibps": sum(j["mibps"] for j in jobs),
             "avg_latency_us": sum(j["avg_latency_us"] * j["iops"] for j in jobs) / iops,
             "max_latency_us": max(j["max_latency_us"] for j in jobs),
             "runtime": max(j["runtime"] for j in jobs)}
        if self.env.jobs > 1:
            j["per_job_iops"] = [round(j["iops"]) for j in jobs]
        # Share of the run each reactor actually had its core: below ~0.97, something else
        # on the machine (or the hypervisor: steal) took a core and the IOPS are low.
        j["reactor_cpu_share"] = round((cpu1 - cpu0) / wall / self.env.jobs, 3)
        j["steal_share"] = round((steal1 - steal0) / wall / self.env.jobs, 3)
        return j

    def iostat(self) -> dict[str, dict[str, int]]:
        try:
            st = self.rpc.call("bdev_get_iostat")
        except (BenchError, OSError) as e:
            raise self.fail(f"bdev_get_iostat: {e}") from None
        return {b["name"]: {"reads": b["num_read_ops"], "writes": b["num_write_ops"]}
                for b in st["bdevs"]}

    def bytes_written(self) -> dict[str, int]:
        try:
            st = self.rpc.call("bdev_get_iostat")
        except (BenchError, OSError) as e:
            raise self.fail(f"bdev_get_iostat: {e}") from None
        return {b["name"]: b["bytes_written"] for b in st["bdevs"]}

    def write_pass(self, what: str) -> dict:
        """A 1 s sequential 128 KiB write run on the target (bdevperf's `-T`), which must
        have written all of it: bdevperf's sequential offsets start at 0 and wrap."""
        w0 = self.bytes_written().get(self.setup.target, 0)
        # QD32 whatever the measured depth: a QD1 pass cannot cover a disk in 1 s.
        j = self.perform("write", 1, 131072, qd=32)
        written = self.bytes_written().get(self.setup.target, 0) - w0
        if written < NUM_BLOCKS * BLOCK:
            raise self.fail(f"warm-up of {what}: only {written} bytes written in 1 s, "
                            f"less than the {NUM_BLOCKS * BLOCK}-byte disk")
        return {"mibps": round(j["mibps"]), "bytes_written": written,
                "reactor_cpu_share": j["reactor_cpu_share"]}

    def status(self, name: str) -> dict:
        try:
            st = self.rpc.call("bdev_replication_get_status", {"name": name})
        except (BenchError, OSError) as e:
            raise self.fail(f"bdev_replication_get_status: {e}") from None
        return st[0] if isinstance(st, list) else st

    def check_running(self, node: str, when: str = "") -> dict:
        """`node`'s status, which must be stage `running` with no error."""
        st = self.status(node)
        if st.get("stage") != "running" or st.get("error"):
            raise self.fail(f"{node}{when}: stage {st.get('stage')!r}, error {st.get('error')!r}")
        return st

    def prefill_ingress(self, name: str, granularity: int = COW_GRANULARITY) -> dict:
        """Sequential 128 KiB writes over the ingress until every cluster is copied."""
        clusters = NUM_BLOCKS * BLOCK // granularity
        t0 = time.monotonic()
        passes = []
        for _ in range(30):
            j = self.perform("write", 1, 131072)
            passes.append({"iops_128k": round(j["iops"]), "avg_lat_us": j["avg_latency_us"]})
            st = self.status(name)
            done = st["allocated"]["hidden_clusters"]
            if done >= clusters:
                return {"seconds": round(time.monotonic() - t0, 2), "passes": passes,
                        "cow_copies": st["counters"]["cow_copies"],
                        "cow_bytes": st["counters"]["cow_bytes"]}
        raise self.fail(f"COW not done after 30 write passes ({done}/{clusters} clusters)")

    def close(self) -> None:
        stop(self.proc)
        self.out.close()
        if not self.failed and self.proc.returncode not in (0, -signal.SIGINT):
            log(f"note: {self.setup.label} bdevperf exited with {self.proc.returncode} "
                f"(log: {self.logfile})")


class CheckpointTicker:
    """Keeps COW armed during a run: `bdev_replication_checkpoint` every `period` s on one
    connection of its own, pipelined (at most two unanswered), from a thread pinned off the
    reactor's cores. SPDK serves RPCs from a 4 ms poller, so ~250/s is the ceiling."""

    def __init__(self, sock: Path, node: str, period: float, avoid_cores: set[int]):
        self.sock, self.node, self.period = sock, node, period
        self.avoid_cores = avoid_cores
        self.sent = self.answered = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.error:
            raise BenchError(f"checkpoint ticker: {self.error}")

    def _run(self) -> None:
        try:
            free = os.sched_getaffinity(0) - self.avoid_cores
            if free:  # this thread only (Linux: pid 0 is the calling thread)
                os.sched_setaffinity(0, free)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(self.sock))
                dec = json.JSONDecoder()
                buf = ""
                due = time.monotonic()
                deadline = None
                while True:
                    now = time.monotonic()
                    if self._stop.is_set():
                        if self.answered == self.sent:
                            return
                        deadline = deadline or now + 30
                        if now > deadline:
                            raise BenchError(f"{self.sent - self.answered} checkpoint "
                                             "replies missing after 30 s")
                    elif now >= due and self.sent - self.answered < 2:
                        self.sent += 1
                        s.sendall(json.dumps(
                            {"jsonrpc": "2.0", "id": self.sent,
                             "method": "bdev_replication_checkpoint",
                             "params": {"name": self.node}}).encode())
                        due = now + self.period
                    wait = min(max(due - time.monotonic(), 0.0005), 0.01)
                    if not select.select([s], [], [], wait)[0]:
                        continue
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        raise BenchError("connection closed")
                    buf += chunk.decode()
                    while buf.strip():
                        try:
                            resp, end = dec.raw_decode(buf.lstrip())
                        except ValueError:
                            break
                        buf = buf.lstrip()[end:]
                        if "error" in resp:
                            raise BenchError(f"checkpoint failed: {json.dumps(resp['error'])}")
                        self.answered += 1
        except (BenchError, OSError) as e:
            self.error = str(e)


def disturbed_run(r: dict) -> bool:
    return r["reactor_cpu_share"] < MIN_CPU_SHARE or r["steal_share"] > 0.02


def warm_up(bp: Bdevperf) -> dict:
    """Faults in every malloc before the measured run, the same way for every setup.

    With --no-huge the mallocs' memory comes zeroed from the kernel and is not touched at
    create: the first write to each 4 KiB page faults, and a read of a never-written page
    maps the kernel's shared zero page (one physical page, always in cache). A cold 1 s run
    measures ~40 % low and 10 s is still skewed, so before the measured bdev exists each
    malloc gets a 1 s sequential 128 KiB write run through a passthru over it that takes
    the target's name (bdevperf only ever runs on its `-T` bdev), which writes all of it.
    `measure` then builds the setup and makes one more write pass over the measured bdev
    itself (for the ingress: its COW prefill) before restoring the precondition."""
    target = bp.setup.target
    out = {}
    for m in malloc_names(bp.setup):
        bp.call("bdev_passthru_create", {"base_bdev_name": m, "name": target})
        out[m] = bp.write_pass(f"malloc {m}")
        bp.call("bdev_passthru_delete", {"name": target})
    return out


def measure(env: Env, setup: Setup, workload: str, rep: str) -> dict:
    bp = Bdevperf(env, setup, f"{setup.key}-{workload}-{rep}", mallocs_only=True)
    try:
        bp.wait_ready()
        extra: dict = {"warmup": {"mallocs": warm_up(bp)}}
        bp.build()
        secondary = False
        if setup.node:
            st = bp.status(setup.node)
            if st.get("stage") != "running":
                raise bp.fail(f"{setup.node} is in stage {st.get('stage')!r}, not running")
            secondary = st.get("mode") == "secondary"
            if secondary and any(st["allocated"].values()):
                raise bp.fail(f"overlays not empty at start: {st['allocated']}")
        # The write pass over the measured bdev (warms its path too; the primary's and
        # raid1's writes reach both legs). For the ingress it is the COW prefill, which
        # leaves the measured state: every cluster copied.
        if setup.prefill_ingress:
            extra["prefill"] = bp.prefill_ingress(setup.node)
        else:
            extra["warmup"]["target"] = bp.write_pass(setup.target)
            if secondary:
                # The top's writes went to active: a checkpoint empties both overlays
                # (O(1)), back to `running` with empty overlays, reads falling to base.
                bp.call("bdev_replication_checkpoint", {"name": setup.node})
                st = bp.status(setup.node)
                if any(st["allocated"].values()):
                    raise bp.fail(f"overlays not empty after the warm-up's checkpoint: "
                                  f"{st['allocated']}")
        if setup.node:
            before = bp.check_running(setup.node, " after the warm-up")
        io0 = bp.iostat()
        j = bp.perform(workload, env.secs, env.io_size)
        io1 = bp.iostat()
        extra["ops_during_run"] = {
            b: {k: v - io0.get(b, {}).get(k, 0) for k, v in c.items()} for b, c in io1.items()}
        for b, want in setup.expect_writes_on.items():
            if workload == "randwrite":
                got = extra["ops_during_run"].get(b, {}).get("writes", 0)
                top = extra["ops_during_run"][setup.target]["writes"]
                if got < top:
                    raise bp.fail(f"{b} got {got} writes, {setup.target} {top}: {want}")
        if setup.node:
            after = bp.status(setup.node)
            if "counters" in after:
                extra["counters_during_run"] = {
                    k: v - before["counters"].get(k, 0)
                    for k, v in after["counters"].items() if isinstance(v, (int, float))}
            if after.get("error"):
                raise bp.fail(f"{setup.node} reports an error: {after['error']}")
    finally:
        bp.close()
    return {"iops": j["iops"], "mibps": j["mibps"], "avg_lat_us": j["avg_latency_us"],
            "max_lat_us": j["max_latency_us"], "runtime": j["runtime"],
            "reactor_cpu_share": j["reactor_cpu_share"], "steal_share": j["steal_share"],
            **({"per_job_iops": j["per_job_iops"]} if "per_job_iops" in j else {}), **extra}


# --------------------------------------------------------------------------- COW sweep

SWEEP_GRANULARITIES = (4096, 16384, 65536, 262144)
# (key, label, bdevperf workload, io size)
SWEEP_WORKLOADS = (("rand4k", "4 KiB random write", "randwrite", 4096),
                   ("seq128k", "128 KiB sequential write", "write", 131072))


# The baseline for a copy's cost: the two I/Os a copy-before-write makes (read a cluster
# of base, write it to hidden), as bdevperf's own random reads and writes of one cluster
# on a malloc like those, measured in the same round.
COPY_IO = Setup("copyio", "malloc (a copy's I/Os)", "m0", [malloc("m0")])


def sweep_setup(gran: int) -> Setup:
    return Setup(f"cow{gran}", f"ingress, COW {gran // 1024} KiB", "sec_ingress", [
        malloc("base"), malloc("hidden"), malloc("active"),
        {"method": "bdev_replication_create",
         "params": {"name": "sec", "mode": "secondary", "base_bdev": "base",
                    "hidden_bdev": "hidden", "active_bdev": "active",
                    "cow_granularity": gran}},
        {"method": "bdev_replication_start", "params": {"name": "sec"}},
    ], node="sec")


def cores_of(mask: str) -> set[int]:
    try:
        m = int(mask, 16)
    except ValueError:
        return set()
    return {i for i in range(m.bit_length()) if m >> i & 1}


def sweep_run(bp: Bdevperf, workload: str, io_size: int, qd: int,
              ticker: CheckpointTicker | None) -> dict:
    """One run on the measured bdev, with the writes and (ours) COW counters it caused."""
    setup, node = bp.setup, bp.setup.node
    before = bp.status(node) if node else None
    io0 = bp.iostat()
    j = bp.perform(workload, bp.env.secs, io_size, qd, ticker)
    io1 = bp.iostat()

    def delta(bdev: str, k: str) -> int:
        return io1.get(bdev, {}).get(k, 0) - io0.get(bdev, {}).get(k, 0)
    writes = delta(setup.target, "writes")
    if writes <= 0:
        raise bp.fail(f"{workload}: {setup.target} saw no writes")
    r = {"iops": j["iops"], "mibps": j["mibps"], "avg_lat_us": j["avg_latency_us"],
         "runtime": j["runtime"], "reactor_cpu_share": j["reactor_cpu_share"],
         "steal_share": j["steal_share"], "writes": writes}
    if node:
        after = bp.status(node)
        c = {k: after["counters"][k] - before["counters"][k]
             for k in ("cow_copies", "cow_bytes", "cow_failures", "checkpoints")}
        if after.get("error") or c["cow_failures"]:
            raise bp.fail(f"{workload}: {node} error {after.get('error')!r}, "
                          f"{c['cow_failures']} COW failures")
        # Every copy is one cluster-sized write to hidden, and nothing else writes hidden.
        if delta("hidden", "writes") != c["cow_copies"]:
            raise bp.fail(f"{workload}: hidden got {delta('hidden', 'writes')} writes for "
                          f"{c['cow_copies']} copies")
        if delta("base", "writes") < writes:
            raise bp.fail(f"{workload}: base got {delta('base', 'writes')} writes, "
                          f"{setup.target} {writes}: ingress writes go to base")
        r.update(c)
        r["cow_bytes_per_write"] = c["cow_bytes"] / writes
        r["copies_per_write"] = c["cow_copies"] / writes
        # The regime check. Random 4 KiB writes sit in one cluster each: the share of writes
        # that needed a copy. Sequential: the share of the bytes written whose cluster was
        # still armed (a 256 KiB cluster copied by one 128 KiB write covers the next one).
        r["copied_share"] = (c["cow_copies"] / writes if workload == "randwrite"
                             else c["cow_bytes"] / (writes * io_size))
        r["checkpoints_per_s"] = c["checkpoints"] / j["runtime"] if j["runtime"] else 0.0
    return r


def measure_copy_io(env: Env, grans: list[int], tag: str) -> dict:
    """One bdevperf process on a plain malloc: per granularity, random reads and random
    writes of one cluster (QD as the sweep). Written all over first, so reads do not map
    the kernel's zero page."""
    bp = Bdevperf(env, COPY_IO, tag)
    out: dict = {"copy_io": {}}
    try:
        bp.wait_ready()
        out["warmup"] = bp.write_pass("malloc m0")
        for g in grans:
            per = out["copy_io"][str(g)] = {}
            for wl in ("randread", "randwrite"):
                j = bp.perform(wl, env.secs, g, env.qd)
                per[wl] = {k: j[k] for k in ("iops", "reactor_cpu_share", "steal_share")}
    finally:
        bp.close()
    return out


def measure_sweep(env: Env, setup: Setup, gran: int | None, tag: str, ckpt_ms: float,
                  seq_qd: int) -> dict:
    """One bdevperf process: warm up, then each workload with COW armed and COW done
    (ours), or plainly (the passthru baseline)."""
    bp = Bdevperf(env, setup, tag)
    node = setup.node
    out: dict = {}
    try:
        bp.wait_ready()
        # Warm-up. With --no-huge the mallocs' memory comes zeroed from the kernel and is
        # not touched at create, so the first pass over it pays a page fault per 4 KiB
        # (a cold first 1 s run measures ~40 % low); the prefill writes all of base and
        # copies every cluster, i.e. touches all of hidden.
        if node:
            st = bp.status(node)
            if st.get("stage") != "running":
                raise bp.fail(f"{node} is in stage {st.get('stage')!r}, not running")
            if any(st["allocated"].values()):
                raise bp.fail(f"overlays not empty at start: {st['allocated']}")
            if st.get("cow_granularity") != gran:
                raise bp.fail(f"cow_granularity {st.get('cow_granularity')}, wanted {gran}")
            out["warmup"] = bp.prefill_ingress(node, gran)
        else:
            bp.perform("write", 1, 131072)
        for key, _, wl, io in SWEEP_WORKLOADS:
            qd = seq_qd if wl == "write" else env.qd
            if not node:
                out[key] = {"plain": sweep_run(bp, wl, io, qd, None)}
                continue
            try:
                bp.rpc.call("bdev_replication_checkpoint", {"name": node})
            except (BenchError, OSError) as e:
                raise bp.fail(f"bdev_replication_checkpoint: {e}") from None
            ticker = (CheckpointTicker(bp.sock, node, ckpt_ms / 1000, cores_of(env.core_mask))
                      if ckpt_ms > 0 else None)
            out[key] = {"armed": sweep_run(bp, wl, io, qd, ticker)}
        if node:
            out["prefill"] = bp.prefill_ingress(node, gran)
            for key, _, wl, io in SWEEP_WORKLOADS:
                qd = seq_qd if wl == "write" else env.qd
                r = sweep_run(bp, wl, io, qd, None)
                if r["cow_copies"]:
                    raise bp.fail(f"{wl}: {r['cow_copies']} copies with COW done")
                out[key]["done"] = r
    finally:
        bp.close()
    return out


def sweep_runs(out: dict) -> list[dict]:
    if "copy_io" in out:
        return [r for per in out["copy_io"].values() for r in per.values()]
    return [r for key, *_ in SWEEP_WORKLOADS for r in out[key].values()]


def spread(vals: list[float]) -> float:
    """(max - min) / median: how far apart the rounds are."""
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / abs(m) if m else 0.0


def median_ci(vals: list[float], conf: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median: the order statistics
    x(j) and x(n+1-j) for the largest j whose coverage, 1 - 2 P(Binomial(n, 1/2) < j), is
    still >= `conf`. Unlike the rounds' range it narrows as rounds are added, so "enough
    rounds" can bring it inside a margin. None below 6 values (the widest interval,
    min..max, covers only 1 - 2^(1-n), under 95 % for n <= 5)."""
    n = len(vals)
    xs = sorted(vals)
    below = 0.0  # P(B < j), B ~ Binomial(n, 1/2)
    best = None
    for j in range(1, n // 2 + 1):
        below += math.comb(n, j - 1) / 2**n
        if 1 - 2 * below < conf:
            break
        best = (xs[j - 1], xs[n - j])
    return best


def run_sweep(a: argparse.Namespace, env: Env, bdevperf: Path, module: Path) -> int:
    grans = a.granularities
    setups: list[tuple[str, Setup, int | None]] = [("passthru", SETUPS["passthru"], None)]
    setups += [(str(g), sweep_setup(g), g) for g in grans]
    setups.append(("copyio", COPY_IO, None))
    ck = (f"checkpoint every {a.ckpt_ms:g} ms during armed runs" if a.ckpt_ms > 0
          else "one checkpoint before each armed run")
    log(f"COW sweep: bdevperf {bdevperf}, module {module}, {a.time} s x {a.repeat} per run, "
        f"granularities {', '.join(map(str, grans))}, {ck}, core mask {a.core_mask}, "
        f"temp {env.tmp}")

    runs: dict[str, list[dict]] = {}
    for rep in range(a.repeat):
        for key, setup, gran in setups:
            for attempt in range(a.retries + 1):
                tag = f"{setup.key}-{rep}.{attempt}"
                out = (measure_copy_io(env, grans, tag) if setup is COPY_IO
                       else measure_sweep(env, setup, gran, tag, a.ckpt_ms, a.seq_qd))
                bad = any(disturbed_run(r) for r in sweep_runs(out))
                parts = []
                if setup is COPY_IO:
                    parts = [f"{int(g) // 1024} KiB read {p['randread']['iops']:,.0f} / "
                             f"write {p['randwrite']['iops']:,.0f} IOPS"
                             for g, p in out["copy_io"].items()]
                for wk, _, wl, io in (() if setup is COPY_IO else SWEEP_WORKLOADS):
                    for phase, r in out[wk].items():
                        v = (f"{r['iops']:,.0f} IOPS" if wl == "randwrite"
                             else f"{r['mibps']:,.0f} MiB/s")
                        if "copied_share" in r:
                            v += f" ({r['copied_share']:.0%} copied)"
                        parts.append(f"{wk} {phase} {v}")
                worst = min(r["reactor_cpu_share"] for r in sweep_runs(out))
                log(f"  {setup.label:22} " + ", ".join(parts)
                    + f"; reactor cpu >= {worst:.2f}"
                    + ("  (disturbed" + (", again)" if attempt < a.retries else ")")
                       if bad else ""))
                if not bad:
                    break
            runs.setdefault(key, []).append(out)

    def med(key: str, wk: str, phase: str, metric: str) -> float | None:
        vals = [o[wk][phase][metric] for o in runs[key]
                if phase in o[wk] and metric in o[wk][phase]]
        return statistics.median(vals) if vals else None

    sweeps = [t for t in setups if t[1] is not COPY_IO]
    summary: dict[str, dict] = {}
    for key, _, _ in sweeps:
        summary[key] = {}
        for wk, *_ in SWEEP_WORKLOADS:
            phases = ("plain",) if key == "passthru" else ("armed", "done")
            summary[key][wk] = {
                ph: {m: med(key, wk, ph, m)
                     for m in ("iops", "mibps", "avg_lat_us", "copied_share",
                               "cow_bytes_per_write", "copies_per_write",
                               "checkpoints_per_s")
                     if med(key, wk, ph, m) is not None}
                for ph in phases}

    print()
    print(f"COW granularity sweep: {SETUPS['passthru'].label} and sec_ingress over malloc "
          f"{MALLOC_MIB} MiB/{BLOCK} B, 1 core ({a.core_mask}), {a.time} s per run"
          + (f", median of {a.repeat}" if a.repeat > 1 else ""))
    print("armed: COW re-armed by a checkpoint before the run"
          + (f" and every {a.ckpt_ms:g} ms during it" if a.ckpt_ms > 0 else "")
          + "; done: every cluster already copied")
    gl = {str(g): f"{g // 1024} KiB" for g in grans}
    gl["passthru"] = "passthru"
    for wk, label, wl, io in SWEEP_WORKLOADS:
        qd = a.seq_qd if wl == "write" else env.qd
        unit = "IOPS" if wl == "randwrite" else "MiB/s"
        metric = "iops" if wl == "randwrite" else "mibps"
        print()
        print(f"{label}, QD{qd}")
        hdr = (f"{'granularity':11} {'armed ' + unit:>12} {'done ' + unit:>12} "
               f"{'armed/done':>10} {'+us/write':>9} {'+us/copy':>8} {'COW B/write':>11} "
               f"{'copied':>7} {'ckpt/s':>6}")
        print(hdr)
        print("-" * len(hdr))
        for key, _, _ in sweeps:
            s = summary[key][wk]
            if key == "passthru":
                print(f"{gl[key]:11} {'-':>12} {s['plain'][metric]:12,.0f}")
                continue
            ar, dn = s["armed"], s["done"]
            # Extra reactor time per write that COW costs (one core, CPU-bound), and per
            # cluster copied.
            extra_us = 1e6 / ar["iops"] - 1e6 / dn["iops"]
            per_copy = (f"{extra_us / ar['copies_per_write']:8.2f}"
                        if ar["copies_per_write"] else f"{'-':>8}")
            print(f"{gl[key]:11} {ar[metric]:12,.0f} {dn[metric]:12,.0f} "
                  f"{ar[metric] / dn[metric]:10.3f} {extra_us:9.2f} {per_copy} "
                  f"{ar['cow_bytes_per_write']:11,.0f} {ar['copied_share']:7.1%} "
                  f"{ar.get('checkpoints_per_s', 0):6.0f}")
    print()
    print("armed, us per write (1e6 / IOPS): a PVM writing small random and larger "
          "sequential blocks")
    hdr = f"{'granularity':11} {'4K rand':>8} {'128K seq':>9} {'1:1 mix':>8} {'3:1 mix':>8}"
    print(hdr)
    print("-" * len(hdr))
    for g in grans:
        r = 1e6 / summary[str(g)]["rand4k"]["armed"]["iops"]
        q = 1e6 / summary[str(g)]["seq128k"]["armed"]["iops"]
        print(f"{gl[str(g)]:11} {r:8.2f} {q:9.2f} {(r + q) / 2:8.2f} {(3 * r + q) / 4:8.2f}")

    # Per round (each round measures every process once, so the rounds pair up): what a
    # copy adds to the 4 KiB random writes, the two I/Os it makes, and the rest.
    print()
    print("per copy, 4 KiB random writes (us; median over rounds, spread = (max-min)/median):"
          " added = the armed write's extra time per cluster copied; I/Os = a random read"
          " plus a random write of one cluster on malloc (bdevperf, same round);"
          " fixed = added - I/Os")
    hdr = (f"{'granularity':11} {'added':>7} {'spread':>6} {'I/Os':>7} {'spread':>6} "
           f"{'fixed':>7} {'spread':>6} {'fixed 95% CI':>13}")
    print(hdr)
    print("-" * len(hdr))
    copy_cost: dict[str, dict] = {}
    for g in grans:
        added, ios = [], []
        for o, c in zip(runs[str(g)], runs["copyio"]):
            ar, dn = o["rand4k"]["armed"], o["rand4k"]["done"]
            if not ar["copies_per_write"]:
                continue
            added.append((1e6 / ar["iops"] - 1e6 / dn["iops"]) / ar["copies_per_write"])
            p = c["copy_io"][str(g)]
            ios.append(1e6 / p["randread"]["iops"] + 1e6 / p["randwrite"]["iops"])
        if not added:
            continue
        fixed = [x - y for x, y in zip(added, ios)]
        ci = median_ci(fixed)
        copy_cost[str(g)] = {"added_us": added, "io_us": ios, "fixed_us": fixed,
                             "fixed_ci95": ci}
        print(f"{gl[str(g)]:11} {statistics.median(added):7.2f} {spread(added):6.0%} "
              f"{statistics.median(ios):7.2f} {spread(ios):6.0%} "
              f"{statistics.median(fixed):7.2f} {spread(fixed):6.0%} "
              + (f"{ci[0]:6.2f}-{ci[1]:.2f}" if ci else f"{'(<6 rounds)':>13}"))

    disturbed = [(SETUPS["passthru"].label if key == "passthru"
                  else COPY_IO.label if key == "copyio" else gl[key], r)
                 for key, outs in runs.items() for o in outs for r in sweep_runs(o)
                 if disturbed_run(r)]
    low = [(gl[str(g)], wk, summary[str(g)][wk]["armed"]["copied_share"])
           for g in grans for wk, *_ in SWEEP_WORKLOADS
           if summary[str(g)][wk]["armed"]["copied_share"] < 0.5]
    if disturbed or low:
        print()
    for label, r in disturbed:
        print(f"warning: {label}: a run's reactor had only {r['reactor_cpu_share']:.0%} of "
              f"its core (steal {r['steal_share']:.0%}); numbers are not trustworthy")
    for label, wk, share in low:
        print(f"warning: {label} {wk}: only {share:.0%} copied; the armed run left the "
              "COW regime (" + ("shorter --ckpt-ms)" if a.ckpt_ms > 0 else "use --ckpt-ms)"))

    if a.json_out:
        doc = {"mode": "cow-sweep", "time_s": a.time, "repeat": a.repeat,
               "queue_depth": env.qd, "seq_queue_depth": a.seq_qd,
               "checkpoint_interval_ms": a.ckpt_ms, "core_mask": a.core_mask,
               "bdevperf": str(bdevperf), "module": str(module), "malloc_mib": MALLOC_MIB,
               "block_size": BLOCK, "granularities": list(grans),
               "workloads": {wk: {"workload": wl, "io_size": io}
                             for wk, _, wl, io in SWEEP_WORKLOADS},
               "median": summary, "copy_cost": copy_cost, "runs": runs,
               "disturbed_runs": len(disturbed)}
        a.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------- main

def find_module(path: Path) -> Path:
    """The preloaded module, which must have been built."""
    module = path.resolve()
    if not module.is_file():
        raise BenchError(f"{module} not found: build it with "
                         "`cargo build -p replication-module --release` (needs SPDK)")
    return module


def find_bdevperf(spdk_dir: str | None) -> tuple[Path, Path]:
    cands = [Path(spdk_dir)] if spdk_dir else []
    cands.append(Path("/opt/spdk"))
    for d in cands:
        for b in (d / "bin/bdevperf", d / "build/examples/bdevperf"):
            if b.is_file() and os.access(b, os.X_OK):
                lib = d / "lib" if (d / "lib").is_dir() else d / "build/lib"
                return b, lib
    raise BenchError(f"bdevperf not found in {', '.join(str(c / 'bin') for c in cands)} "
                     "(set SPDK_DIR or --spdk-dir)")


def main() -> int:
    global KEEP_TMP
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int,
                    help="seconds per measurement (10; 2 with --cow-sweep)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per (configuration, workload); the median IOPS is used (3)")
    ap.add_argument("--module", type=Path,
                    default=REPO / "target/release/libreplication_module.so",
                    help="the preloaded module (target/release/libreplication_module.so)")
    ap.add_argument("--spdk-dir", default=os.environ.get("SPDK_DIR"),
                    help="SPDK prefix holding bin/bdevperf ($SPDK_DIR, else /opt/spdk)")
    ap.add_argument("--retries", type=int, default=2,
                    help="re-run a measurement whose reactor did not have its core (2)")
    ap.add_argument("--core-mask", default="0x1", help="bdevperf -m (0x1)")
    ap.add_argument("--mem", type=int, default=1024, help="bdevperf -s, MiB (1024)")
    ap.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    ap.add_argument("--only", choices=[c[0] for c in COMPARISONS], action="append",
                    help="run only this comparison (repeatable)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir (configs, logs) and print its path")
    sw = ap.add_argument_group(
        "COW granularity sweep",
        "the secondary ingress at each granularity: 4 KiB random and 128 KiB sequential "
        "writes with COW armed and with COW done, next to passthru")
    sw.add_argument("--cow-sweep", action="store_true",
                    help="run the sweep instead of the comparisons")
    sw.add_argument("--granularities", default=",".join(map(str, SWEEP_GRANULARITIES)),
                    help="cow_granularity values in bytes (4096,16384,65536,262144)")
    sw.add_argument("--ckpt-ms", type=float, default=4.0,
                    help="checkpoint period during armed runs, keeping COW armed; 0: only "
                         "one checkpoint before each run (4; SPDK polls RPCs every 4 ms)")
    sw.add_argument("--seq-qd", type=int, default=32,
                    help="queue depth of the 128 KiB sequential writes (32)")
    a = ap.parse_args()
    if a.time is None:
        a.time = 2 if a.cow_sweep else 10
    if a.time < 1 or a.repeat < 1 or a.retries < 0:
        ap.error("--time and --repeat must be >= 1, --retries >= 0")
    if a.cow_sweep:
        if a.only:
            ap.error("--only does not apply to --cow-sweep")
        try:
            a.granularities = [int(g) for g in a.granularities.split(",")]
        except ValueError:
            ap.error("--granularities: comma-separated byte counts")
        if any(g < BLOCK or g & (g - 1) or g > MALLOC_MIB << 20 for g in a.granularities):
            ap.error(f"--granularities: powers of two from {BLOCK} to the disk size")
        if a.ckpt_ms < 0 or a.seq_qd < 1:
            ap.error("--ckpt-ms must be >= 0, --seq-qd >= 1")

    bdevperf, spdk_lib = find_bdevperf(a.spdk_dir)
    module = find_module(a.module)
    KEEP_TMP = a.keep
    tmp = bench_tmp("repl-bdevperf-")

    env = Env(bdevperf, spdk_lib, module, tmp, a.core_mask, a.mem, 32, 4096, a.time)
    if a.cow_sweep:
        return run_sweep(a, env, bdevperf, module)
    comps = [c for c in COMPARISONS if not a.only or c[0] in a.only]
    keys = list(dict.fromkeys(k for c in comps for k in c[:2]))
    log(f"bdevperf {bdevperf}, module {module}, {a.time} s x {a.repeat} per run, "
        f"4 KiB QD32, core mask {a.core_mask}, temp {tmp}")

    # Interleaved (every configuration once, then again) so slow drifts spread evenly.
    runs: dict[tuple[str, str], list[dict]] = {}
    for rep in range(a.repeat):
        for key in keys:
            for wl in WORKLOADS:
                for attempt in range(a.retries + 1):
                    r = measure(env, SETUPS[key], wl, f"{rep}.{attempt}")
                    bad = disturbed_run(r)
                    log(f"  {SETUPS[key].label:30} {wl:9} {r['iops']:12,.0f} IOPS  "
                        f"avg {r['avg_lat_us']:8.2f} us  reactor cpu "
                        f"{r['reactor_cpu_share']:.2f}  steal {r['steal_share']:.2f}"
                        + ("  (disturbed" + (", again)" if attempt < a.retries else ")")
                           if bad else ""))
                    if not bad:
                        break
                runs.setdefault((key, wl), []).append(r)
    results: dict[str, dict[str, dict]] = {}
    for (key, wl), rs in runs.items():
        results.setdefault(key, {})[wl] = {
            "iops": statistics.median(r["iops"] for r in rs), "runs": rs}
    disturbed = [(SETUPS[k].label, wl, r["reactor_cpu_share"], r["steal_share"])
                 for (k, wl), rs in runs.items() for r in rs
                 if disturbed_run(r)]

    print()
    print(f"bdevperf 4 KiB, QD32, 1 core ({a.core_mask}), {a.time} s per run, "
          f"malloc {MALLOC_MIB} MiB/{BLOCK} B"
          + (f", median of {a.repeat}" if a.repeat > 1 else ""))
    hdr = f"{'bdev':30} {'randread IOPS':>14} {'randwrite IOPS':>15}"
    print(hdr)
    print("-" * len(hdr))
    for key in keys:
        r = results[key]
        print(f"{SETUPS[key].label:30} {r['randread']['iops']:14,.0f} "
              f"{r['randwrite']['iops']:15,.0f}")
    print()
    hdr = f"{'ratio':22} {'randread':>9} {'randwrite':>10} {'target':>7}  verdict"
    print(hdr)
    print("-" * len(hdr))
    verdicts = []
    ok_all = True
    for ours, base, target in comps:
        rr = {wl: results[ours][wl]["iops"] / results[base][wl]["iops"] for wl in WORKLOADS}
        ok = all(v >= target for v in rr.values())
        ok_all &= ok
        print(f"{ours + '/' + base:22} {rr['randread']:9.3f} {rr['randwrite']:10.3f} "
              f"{target:7.2f}  {'PASS' if ok else 'FAIL'}")
        verdicts.append({"name": f"{ours}/{base}", "target": target, "ratios": rr,
                         "pass": ok})
    print()
    for v in verdicts:
        worst = min(v["ratios"], key=v["ratios"].get)
        print(f"{'PASS' if v['pass'] else 'FAIL'}: {v['name']} >= {v['target']:.2f} "
              f"(worst {worst} {v['ratios'][worst]:.3f})")
    if disturbed:
        print()
        for label, wl, share, steal in disturbed:
            print(f"warning: {label} {wl}: the reactor had only {share:.0%} of its core "
                  f"(steal {steal:.0%}); other load on core(s) {a.core_mask}, "
                  "numbers are not trustworthy")

    if a.json_out:
        doc = {"time_s": a.time, "repeat": a.repeat, "io_size": 4096, "queue_depth": 32,
               "core_mask": a.core_mask, "bdevperf": str(bdevperf), "module": str(module),
               "malloc_mib": MALLOC_MIB, "block_size": BLOCK,
               "cow_granularity": COW_GRANULARITY,
               "results": {k: {"label": SETUPS[k].label, **v} for k, v in results.items()},
               "comparisons": verdicts, "pass": ok_all,
               "disturbed_runs": len(disturbed)}
        a.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if ok_all else 1


def bench_tmp(prefix: str) -> Path:
    """A temp dir removed at exit (kept, and named, with `KEEP_TMP`), every bdevperf
    stopped before, and SIGTERM/SIGHUP turned into a clean exit."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))

    def cleanup() -> None:
        if KEEP_TMP:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, True)
    atexit.register(cleanup)
    atexit.register(stop_all)  # runs before the rmtree (LIFO)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    return tmp


def run_main(main) -> None:
    """Exit status of `main`; 2 with the message on a failed run, 130 on ^C."""
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    run_main(main)
