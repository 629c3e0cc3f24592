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
Python 3.11, stdlib only. See README.md next to this file.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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


class Bdevperf:
    """One bdevperf process in `-z` mode with `setup`'s bdevs."""

    def __init__(self, env: Env, setup: Setup, tag: str):
        self.env, self.setup = env, setup
        d = env.tmp / tag
        d.mkdir()
        self.dir = d
        self.sock = d / "rpc.sock"
        self.logfile = d / "bdevperf.log"
        cfg = {"subsystems": FRAMEWORK + [
            {"subsystem": "bdev",
             "config": [BDEV_OPTIONS] + setup.bdev_config
                       + [{"method": "bdev_wait_for_examine"}]}]}
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        cmd = [str(env.bdevperf), "--no-huge", "-s", str(env.mem_mb), "--no-pci",
               "-m", env.core_mask, "-r", str(self.sock), "--json", str(d / "config.json"),
               "-z", "-T", setup.target, "-q", str(env.qd), "-o", str(env.io_size),
               "-w", "randread", "-t", str(env.secs), *env.extra]
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

    def perform(self, workload: str, secs: int, io_size: int) -> dict:
        params = {"workload_type": workload, "time_in_sec": secs, "io_size": str(io_size),
                  "queue_depth": self.env.qd}
        try:
            cpu0, steal0 = self.reactor_cpu()
            t0 = time.monotonic()
            res = self.rpc.call("perform_tests", params, timeout=secs + 60)
            wall = time.monotonic() - t0
            cpu1, steal1 = self.reactor_cpu()
        except (BenchError, OSError) as e:
            raise self.fail(f"perform_tests {workload}: {e}") from None
        jobs = [j for j in (res or {}).get("results", []) if j.get("job") == self.setup.target]
        if len(jobs) != 1:
            raise self.fail(f"perform_tests {workload}: no single result for "
                            f"{self.setup.target} in {json.dumps(res)}")
        j = jobs[0]
        if j.get("status") != "finished" or j.get("io_failed", 0) or j.get("io_timeout", 0):
            raise self.fail(f"perform_tests {workload}: job did not finish cleanly: "
                            f"{json.dumps(j)}")
        # Share of the run the reactor actually had its core: below ~0.97, something else
        # on the machine (or the hypervisor: steal) took the core and the IOPS are low.
        j["reactor_cpu_share"] = round((cpu1 - cpu0) / wall, 3)
        j["steal_share"] = round((steal1 - steal0) / wall, 3)
        return j

    def iostat(self) -> dict[str, dict[str, int]]:
        try:
            st = self.rpc.call("bdev_get_iostat")
        except (BenchError, OSError) as e:
            raise self.fail(f"bdev_get_iostat: {e}") from None
        return {b["name"]: {"reads": b["num_read_ops"], "writes": b["num_write_ops"]}
                for b in st["bdevs"]}

    def status(self, name: str) -> dict:
        try:
            st = self.rpc.call("bdev_replication_get_status", {"name": name})
        except (BenchError, OSError) as e:
            raise self.fail(f"bdev_replication_get_status: {e}") from None
        return st[0] if isinstance(st, list) else st

    def prefill_ingress(self, name: str) -> dict:
        """Sequential 128 KiB writes over the ingress until every cluster is copied."""
        clusters = NUM_BLOCKS * BLOCK // COW_GRANULARITY
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


def disturbed_run(r: dict) -> bool:
    return r["reactor_cpu_share"] < MIN_CPU_SHARE or r["steal_share"] > 0.02


def measure(env: Env, setup: Setup, workload: str, rep: str) -> dict:
    bp = Bdevperf(env, setup, f"{setup.key}-{workload}-{rep}")
    try:
        bp.wait_ready()
        extra = {}
        if setup.node:
            st = bp.status(setup.node)
            if st.get("stage") != "running":
                raise bp.fail(f"{setup.node} is in stage {st.get('stage')!r}, not running")
            if setup.prefill_ingress:
                extra["prefill"] = bp.prefill_ingress(setup.node)
            elif st.get("mode") == "secondary" and any(st["allocated"].values()):
                raise bp.fail(f"overlays not empty at start: {st['allocated']}")
            before = bp.status(setup.node)
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
            **extra}


# --------------------------------------------------------------------------- main

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
    ap.add_argument("--time", type=int, default=10, help="seconds per measurement (10)")
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
    a = ap.parse_args()
    if a.time < 1 or a.repeat < 1 or a.retries < 0:
        ap.error("--time and --repeat must be >= 1, --retries >= 0")

    bdevperf, spdk_lib = find_bdevperf(a.spdk_dir)
    module = a.module.resolve()
    if not module.is_file():
        raise BenchError(f"{module} not found: build it with "
                         "`cargo build -p replication-module --release` (needs SPDK)")
    tmp = Path(tempfile.mkdtemp(prefix="repl-bdevperf-"))
    KEEP_TMP = a.keep

    def cleanup() -> None:
        if KEEP_TMP:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, True)
    atexit.register(cleanup)
    atexit.register(stop_all)  # runs before the rmtree (LIFO)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))

    env = Env(bdevperf, spdk_lib, module, tmp, a.core_mask, a.mem, 32, 4096, a.time)
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


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
