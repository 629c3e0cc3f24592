#!/usr/bin/env python3
"""Checkpoint under load on the SPDK host (issue 9, item 5).

A secondary in one bdevperf process (our module preloaded, `-m 0x1` by default: one
reactor serves the node, its RPCs and the load) takes 4 KiB random writes at QD32 on both
of its bdevs at once: the top (the SVM's disk) and the ingress (the PVM's writes as the
primary forwards them), bdevperf running one job on each (no `-T`). Each round is a fresh
process: warm-up, a run without checkpoints, then a run with `bdev_replication_checkpoint`
every `--period-ms` from a client that times each call (one at a time, so every
checkpoint re-arms copy-before-write for the ingress).

Reported per round: the RPC's latency as the client sees it (p50/p99/max), how long the
module held guest I/O per checkpoint (`checkpoint_hold_ns_total / checkpoints` and
`checkpoint_hold_ns_max` from `bdev_replication_get_status`), and both jobs' IOPS and
latency with and without checkpoints. The round shown is the median by RPC p99; the
spread is over rounds.

SPDK's RPC server polls its socket every 4 ms (`RPC_SELECT_INTERVAL` in `lib/init/rpc.c`),
so the client's figure includes up to 4 ms of waiting for that poller; the hold is the
module's own part.

    python3 benches/bdevperf/checkpoint.py --time 5 --repeat 3

Python 3.11, stdlib only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as rb  # noqa: E402

NODE = "sec"
JOBS = ("sec", "sec_ingress")


class TimedTicker(rb.CheckpointTicker):
    """`bdev_replication_checkpoint` every `period` s, one call at a time, each timed."""

    def __init__(self, sock: Path, period: float, fifo: bool = False):
        super().__init__(sock, NODE, period, set())
        self.fifo = fifo
        self.latencies_us: list[float] = []

    def _run(self) -> None:
        try:
            if self.fifo:
                # This thread only (pid 0): woken by the reply, it preempts the busy-polling
                # reactors at once instead of waiting for a CFS slice, as a caller on a core
                # of its own would.
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            rpc = rb.Rpc(self.sock)
            due = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if now < due:
                    time.sleep(min(due - now, 0.01))
                    continue
                due = now + self.period
                t0 = time.perf_counter()
                rpc.call("bdev_replication_checkpoint", {"name": self.node})
                self.latencies_us.append((time.perf_counter() - t0) * 1e6)
        except (rb.BenchError, OSError) as e:
            self.error = str(e)


def perform(bp: rb.Bdevperf, secs: int, ticker: TimedTicker | None = None,
            jobs_expected: tuple[str, ...] = JOBS) -> dict:
    """One randwrite run over both bdevs (bdevperf's jobs `jobs_expected`); per job IOPS
    and latencies."""
    params = {"workload_type": "randwrite", "time_in_sec": secs, "io_size": "4096",
              "queue_depth": bp.env.qd}
    if ticker:
        ticker.start()
    try:
        res = bp.rpc.call("perform_tests", params, timeout=secs + 60)
    except (rb.BenchError, OSError) as e:
        raise bp.fail(f"perform_tests: {e}") from None
    finally:
        if ticker:
            ticker.stop()
    jobs = {j["job"]: j for j in (res or {}).get("results", []) if "job" in j}
    if sorted(jobs) != sorted(jobs_expected):
        raise bp.fail(f"perform_tests: jobs {sorted(jobs)}, want {sorted(jobs_expected)}")
    for j in jobs.values():
        if j.get("status") != "finished" or j.get("io_failed", 0) or j.get("io_timeout", 0):
            raise bp.fail(f"perform_tests: job did not finish cleanly: {json.dumps(j)}")
    return {k: {"iops": j["iops"], "avg_lat_us": j["avg_latency_us"],
                "max_lat_us": j["max_latency_us"]} for k, j in jobs.items()}


def pct(v: list[float], p: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def round_once(env: rb.Env, period: float, tag: str) -> dict:
    setup = rb.SETUPS["top"]
    bp = rb.Bdevperf(env, setup, tag, mallocs_only=True)
    try:
        bp.wait_ready()
        # Before the node exists the three mallocs are the only bdevs, each a job: one 1 s
        # sequential pass faults all of them in (see run.py's warm-up).
        bp.call("perform_tests", {"workload_type": "write", "time_in_sec": 1,
                                  "io_size": "131072", "queue_depth": 32})
        bp.build()
        # One pass over the node itself (top writes to active, ingress copies), then a
        # checkpoint: back to `running` with empty overlays.
        perform(bp, 1)
        bp.call("bdev_replication_checkpoint", {"name": NODE})
        quiet = perform(bp, env.secs)
        before = bp.status(NODE)["counters"]
        ticker = TimedTicker(bp.sock, period)
        loaded = perform(bp, env.secs, ticker)
        after = bp.status(NODE)
        if after.get("error") or after.get("stage") != "running":
            raise bp.fail(f"{NODE}: stage {after.get('stage')!r}, error {after.get('error')!r}")
        c = {k: after["counters"][k] - before[k] for k in before
             if isinstance(before[k], int)}
        lat = ticker.latencies_us
        if c["checkpoints"] != len(lat) or not lat:
            raise bp.fail(f"{len(lat)} checkpoint replies, {c['checkpoints']} counted")
        return {"quiet": quiet, "loaded": loaded,
                "rpc_us": {"calls": len(lat), "p50": pct(lat, 50), "p99": pct(lat, 99),
                           "max": max(lat)},
                "hold_us": {"mean": c["checkpoint_hold_ns_total"] / c["checkpoints"] / 1e3,
                            "max": after["counters"]["checkpoint_hold_ns_max"] / 1e3},
                "cow_copies": c["cow_copies"]}
    finally:
        bp.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", type=int, default=5, help="seconds per run (5)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (3)")
    ap.add_argument("--period-ms", type=float, default=10.0,
                    help="checkpoint period (10)")
    ap.add_argument("--core-mask", default="0x1", help="bdevperf -m (0x1)")
    ap.add_argument("--module", type=Path,
                    default=rb.REPO / "target/release/libreplication_module.so")
    ap.add_argument("--spdk-dir", default=os.environ.get("SPDK_DIR"))
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    if a.time < 1 or a.repeat < 1 or a.period_ms <= 0:
        ap.error("--time and --repeat must be >= 1, --period-ms > 0")
    bdevperf, spdk_lib = rb.find_bdevperf(a.spdk_dir)
    module = a.module.resolve()
    if not module.is_file():
        raise rb.BenchError(f"{module} not found: `cargo build -p replication-module --release`")
    tmp = rb.bench_tmp("repl-ckpt-")
    env = dataclasses.replace(
        rb.Env(bdevperf, spdk_lib, module, tmp, a.core_mask, 1024, 32, 4096, a.time),
        only_target=False)
    rounds = []
    for rep in range(a.repeat):
        r = round_once(env, a.period_ms / 1000, f"round-{rep}")
        rb.log(f"  round {rep + 1}: rpc p50 {r['rpc_us']['p50']:.0f} p99 {r['rpc_us']['p99']:.0f}"
               f" us, hold mean {r['hold_us']['mean']:.1f} max {r['hold_us']['max']:.1f} us")
        rounds.append(r)
    p99s = [r["rpc_us"]["p99"] for r in rounds]
    mid = sorted(rounds, key=lambda r: r["rpc_us"]["p99"])[len(rounds) // 2]
    holds = [r["hold_us"]["mean"] for r in rounds]
    spread = (max(p99s) - min(p99s)) / statistics.median(p99s)
    print(f"SPDK host, core mask {a.core_mask}: checkpoint every {a.period_ms:g} ms for "
          f"{a.time} s while the top and the ingress take 4 KiB random writes at QD32 "
          f"(the median round of {a.repeat} by RPC p99):")
    rpc = mid["rpc_us"]
    print(f"  checkpoint RPC ({rpc['calls']} calls): p50 {rpc['p50']:.0f} us, p99 "
          f"{rpc['p99']:.0f} us (spread {spread:.1%}), max {rpc['max']:.0f} us")
    print(f"  guest I/O held per checkpoint: mean {mid['hold_us']['mean']:.1f} us, max "
          f"{mid['hold_us']['max']:.1f} us (means over rounds {min(holds):.1f}-"
          f"{max(holds):.1f} us); {mid['cow_copies']} copies before write")
    for job, what in (("sec", "top (SVM)"), ("sec_ingress", "ingress (PVM)")):
        q, ld = mid["quiet"][job], mid["loaded"][job]
        print(f"  {what:14} without / with checkpoints: {q['iops']:,.0f} / {ld['iops']:,.0f}"
              f" IOPS; latency avg {q['avg_lat_us']:.0f} / {ld['avg_lat_us']:.0f} us, max "
              f"{q['max_lat_us']:.0f} / {ld['max_lat_us']:.0f} us")
    if a.json_out:
        a.json_out.write_text(json.dumps({"rounds": rounds, "period_ms": a.period_ms,
                                          "core_mask": a.core_mask}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    rb.run_main(main)
