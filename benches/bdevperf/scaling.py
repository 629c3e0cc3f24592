#!/usr/bin/env python3
"""Multi-core scaling (issue 9, item 6): one reactor vs two serving the same bdev.

Each of the secondary's top and ingress (set up as in `run.py`), and passthru over one
malloc as the baseline, is driven by bdevperf on one core (`-m 0x1`) and on two (`-m 0x3
-C`: one job per core, each on its own half of the disk, so both reactors submit to the
same bdev at once), 4 KiB random read and write at QD32 per job. Scaling is a setup's
two-core IOPS over its one-core IOPS in the same round; the figure that matters is our
scaling over passthru's, which shares nothing between reactors and so shows what the
machine gives (malloc I/O is memcpy-bound and both cores share one memory bus). A
cache line written per I/O by both reactors (before the gate was sharded: its in-flight
count) shows up as our scaling falling below passthru's.

    python3 benches/bdevperf/scaling.py --time 5 --repeat 3

Rounds are interleaved (every setup and core count once, then again); medians and the
spread of the per-round ratios are printed. Python 3.11, stdlib only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as rb  # noqa: E402

KEYS = ("passthru", "top", "ingress")
CORES = {1: "0x1", 2: "0x3"}


def spread(vals: list[float]) -> float:
    return (max(vals) - min(vals)) / statistics.median(vals) if vals else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", type=int, default=5, help="seconds per run (5)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (3)")
    ap.add_argument("--module", type=Path,
                    default=rb.REPO / "target/release/libreplication_module.so")
    ap.add_argument("--spdk-dir", default=os.environ.get("SPDK_DIR"))
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    if a.time < 1 or a.repeat < 1:
        ap.error("--time and --repeat must be >= 1")
    if len(os.sched_getaffinity(0)) < 2:
        raise rb.BenchError("needs two cores")
    bdevperf, spdk_lib = rb.find_bdevperf(a.spdk_dir)
    module = a.module.resolve()
    if not module.is_file():
        raise rb.BenchError(f"{module} not found: `cargo build -p replication-module --release`")
    tmp = rb.bench_tmp("repl-scaling-")
    base = rb.Env(bdevperf, spdk_lib, module, tmp, "0x1", 1024, 32, 4096, a.time)
    envs = {n: dataclasses.replace(base, core_mask=m, jobs=n) for n, m in CORES.items()}

    runs: dict[tuple[str, str, int], list[dict]] = {}
    for rep in range(a.repeat):
        for key in KEYS:
            for wl in rb.WORKLOADS:
                for n, env in envs.items():
                    r = rb.measure(env, rb.SETUPS[key], wl, f"{key}-{n}c-{rep}")
                    rb.log(f"  round {rep + 1} {rb.SETUPS[key].label:30} {wl:9} {n} core(s) "
                           f"{r['iops']:12,.0f} IOPS  per job {r.get('per_job_iops', '-')}"
                           f"  reactor cpu {r['reactor_cpu_share']:.2f}"
                           + ("  (disturbed)" if rb.disturbed_run(r) else ""))
                    runs.setdefault((key, wl, n), []).append(r)

    def per_round(key: str, wl: str) -> list[float]:
        return [two["iops"] / one["iops"]
                for one, two in zip(runs[(key, wl, 1)], runs[(key, wl, 2)])]

    print(f"\nbdevperf 4 KiB QD32 per job, {a.time} s per run, {a.repeat} round(s); "
          "IOPS medians, scaling = 2 reactors / 1 (median of rounds, spread)")
    hdr = (f"{'bdev':30} {'workload':9} {'1 reactor':>11} {'2 reactors':>11} "
           f"{'scaling':>8} {'spread':>7} {'vs passthru':>12}")
    print(hdr)
    print("-" * len(hdr))
    out: dict = {"time_s": a.time, "repeat": a.repeat, "results": {}}
    for key in KEYS:
        for wl in rb.WORKLOADS:
            sc = per_round(key, wl)
            rel = [s / p for s, p in zip(sc, per_round("passthru", wl))]
            one = statistics.median(r["iops"] for r in runs[(key, wl, 1)])
            two = statistics.median(r["iops"] for r in runs[(key, wl, 2)])
            print(f"{rb.SETUPS[key].label:30} {wl:9} {one:11,.0f} {two:11,.0f} "
                  f"{statistics.median(sc):8.3f} {spread(sc):6.1%} "
                  + (f"{statistics.median(rel):12.3f}" if key != "passthru" else f"{'':12}"))
            out["results"][f"{key}/{wl}"] = {
                "iops_1": one, "iops_2": two, "scaling": statistics.median(sc),
                "scaling_rounds": sc, "vs_passthru": statistics.median(rel),
                "vs_passthru_rounds": rel,
                "runs": {n: runs[(key, wl, n)] for n in CORES}}
    if a.json_out:
        a.json_out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    rb.run_main(main)
