#!/usr/bin/env python3
"""Instructions per I/O (issue 9, items 1 and 2): what each bdev costs the reactor, as a
count that does not move with the machine.

IOPS on the 2-core VM move by 14-31 % between rounds, more than the 3 % margins of items 1
and 2, so the time-based ratios cannot show where the last cycles go. Valgrind's callgrind
counts the instructions the reactor executes: the same binary, config and workload give
the same count whatever else the machine does. Each setup of `run.py` (and, with
`--remote`, of `remote.py`) runs in its own bdevperf process under callgrind; the counted
window is bdevperf's timed run itself, from the moment its job starts submitting
(`--zero-before=bdevperf_job_run`) to the moment its timer ends it
(`--dump-before=bdevperf_job_drain_timer`), so start-up, set-up and RPC traffic are
outside it. Instructions per I/O = the window's count / the I/Os the target completed in
it (`bdev_get_iostat`; up to QD I/Os in flight at either edge, < 0.2 % at the window's
I/O counts). Per ELF object too: our module's own instructions against passthru's or
raid's, the bdev layer's, memcpy's (libc), so a difference has an address.

Valgrind cannot decode AVX-512, and an SPDK built with `-march=native` on an AVX-512 CPU
uses it, so this needs an SPDK (and DPDK) built for a generic x86-64 target, e.g.
`./configure --target-arch=x86-64-v2 --prefix=/opt/spdk-generic ...` (`--spdk-dir`,
default `/opt/spdk-generic`). The module itself is the one `cargo build --release`
makes against the ordinary SPDK: same version, same ABI.

    python3 benches/bdevperf/instructions.py                 # bdev level (item 2)
    python3 benches/bdevperf/instructions.py --remote        # with a real remote leg

Counts under valgrind are of the instructions, not their speed: a memcpy of 4 KiB is a
few hundred instructions whose time depends on the memory bus. At QD1 over NVMe/TCP the
window also holds the reactor's idle polls while it waits for the network (the count per
I/O then depends on the network's latency); the per-object figures of the module, raid
and the bdev layer do not.

Python 3.11, stdlib only.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as rb  # noqa: E402
import remote as rm  # noqa: E402  (sets rb's disks to 64 MiB: a short COW prefill)

ZERO_AT = "bdevperf_job_run"
DUMP_AT = "bdevperf_job_drain_timer"
LOCAL = [("top", "passthru"), ("ingress", "passthru"), ("primary", "raid1")]
REMOTE = [("primary", "raid1")]


def resized(setup: rb.Setup) -> rb.Setup:
    """`setup` with its mallocs at the current `rb.NUM_BLOCKS`."""
    s = copy.deepcopy(setup)
    for c in s.bdev_config:
        if c["method"] == "bdev_malloc_create":
            c["params"]["num_blocks"] = rb.NUM_BLOCKS
    return s


# --------------------------------------------------------------------------- callgrind

NAMED = re.compile(r"^\((\d+)\)(?: (.*))?$")


def parse_callgrind(path: Path) -> tuple[int, dict[str, int], dict[tuple[str, str], int]]:
    """(total Ir, self Ir per ELF object, self Ir per (object, function)) of one dump."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}

    def name(kind: str, v: str) -> str:
        m = NAMED.match(v)
        if not m:
            return v
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), f"({m.group(1)})")

    per_ob: dict[str, int] = defaultdict(int)
    per_fn: dict[tuple[str, str], int] = defaultdict(int)
    ob = fn = "?"
    total = None
    skip_next = False
    with open(path, errors="replace") as f:
        for line in f:
            c = line[0] if line else ""
            if c.isdigit() or c in "+-*":
                if skip_next:  # the inclusive cost of a call: not this function's own
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    ir = int(parts[-1])
                    per_ob[ob] += ir
                    per_fn[(ob, fn)] += ir
                continue
            key, _, val = line.rstrip("\n").partition("=")
            if key == "ob":
                ob = name("ob", val)
            elif key == "cob":
                name("ob", val)  # may define a name used later
            elif key == "fn":
                fn = name("fn", val)
            elif key == "cfn":
                name("fn", val)
            elif key == "calls":
                skip_next = True
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    if total is None:
        raise rb.BenchError(f"{path}: no summary line (was the dump cut short?)")
    return total, dict(per_ob), dict(per_fn)


def short_ob(ob: str) -> str:
    b = os.path.basename(ob)
    return re.sub(r"\.so(\.[\d.]+)?$", "", b)


def window_dump(d: Path) -> Path:
    """The dump taken as the measured run's timer fired (the last such one)."""
    hits = []
    for p in d.glob("callgrind.out*"):
        with open(p, errors="replace") as f:
            head = "".join(next(f, "") for _ in range(40))
        if DUMP_AT in head:
            hits.append((int(re.search(r"\.(\d+)$", p.name).group(1))
                         if re.search(r"\.(\d+)$", p.name) else 0, p))
    if not hits:
        raise rb.BenchError(f"no callgrind dump at {DUMP_AT} in {d}")
    return max(hits)[1]


def prefill(bp: rb.Bdevperf, node: str) -> None:
    """`rb.Bdevperf.prefill_ingress` with passes long enough to cover the disk under
    valgrind (bdevperf's sequential offsets restart at 0 with every run)."""
    clusters = rb.NUM_BLOCKS * rb.BLOCK // rb.COW_GRANULARITY
    for _ in range(10):
        bp.perform("write", 4, 131072)
        done = bp.status(node)["allocated"]["hidden_clusters"]
        if done >= clusters:
            return
    raise bp.fail(f"COW not done after 10 write passes ({done}/{clusters} clusters)")


def count(env: rb.Env, setup: rb.Setup, workload: str, tag: str, qd: int) -> dict:
    bp = rb.Bdevperf(env, setup, tag)
    try:
        bp.wait_ready(timeout=900)
        if setup.prefill_ingress:
            prefill(bp, setup.node)
        if setup.node:
            bp.check_running(setup.node)
        io0 = bp.iostat()
        j = bp.perform(workload, env.secs, env.io_size, qd=qd)
        io1 = bp.iostat()
    finally:
        bp.close()
    key = "writes" if "write" in workload else "reads"
    ios = io1[setup.target][key] - io0.get(setup.target, {}).get(key, 0)
    total, per_ob, per_fn = parse_callgrind(window_dump(bp.dir))
    if ios < 1000:
        raise rb.BenchError(f"{setup.label} {workload}: only {ios} I/Os in the window")
    return {"ios": ios, "ir": total, "ir_per_io": total / ios,
            "per_object": {short_ob(o): v / ios for o, v in per_ob.items()},
            "per_function": {f"{short_ob(o)}:{fn}": v / ios for (o, fn), v in per_fn.items()},
            "iops_under_valgrind": j["iops"]}


def table(results: dict, comps: list[tuple[str, str]], labels: dict[str, str],
          workloads: list[tuple[str, int]], top_n: int) -> dict:
    out = {}
    for wl, qd in workloads:
        print(f"\n{wl} 4 KiB QD{qd}: instructions per I/O")
        for ours, base in comps:
            a, b = results[(ours, wl, qd)], results[(base, wl, qd)]
            ratio = a["ir_per_io"] / b["ir_per_io"]
            print(f"  {labels[ours]:34} {a['ir_per_io']:9.0f}   {labels[base]:26} "
                  f"{b['ir_per_io']:9.0f}   ratio {ratio:.3f}  (+{a['ir_per_io'] - b['ir_per_io']:.0f})")
            obs = set(a["per_object"]) | set(b["per_object"])
            rows = sorted(((a["per_object"].get(o, 0.0), b["per_object"].get(o, 0.0), o)
                           for o in obs), key=lambda r: -abs(r[0] - r[1]))
            for x, y, o in rows[:top_n]:
                if abs(x - y) >= 1:
                    print(f"      {o:40} {x:9.0f} {y:9.0f} {x - y:+9.0f}")
            mod = sorted(((v, f) for f, v in a["per_function"].items()
                          if f.startswith("libreplication_module:")), reverse=True)
            if mod:
                print(f"      ours by function: " + ", ".join(
                    f"{f.split(':', 1)[1][:60]} {v:.0f}" for v, f in mod[:top_n]))
            out[f"{ours}/{base} {wl} qd{qd}"] = {
                "ours": a["ir_per_io"], "base": b["ir_per_io"], "ratio": ratio}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=3,
                    help="seconds of bdevperf's timed run under valgrind (3)")
    ap.add_argument("--module", type=Path,
                    default=rb.REPO / "target/release/libreplication_module.so")
    ap.add_argument("--spdk-dir", default="/opt/spdk-generic",
                    help="an SPDK built for a generic x86-64 (no AVX-512): bdevperf and "
                         "its libraries (/opt/spdk-generic)")
    ap.add_argument("--remote", action="store_true",
                    help="the primary and raid1 over local malloc + NVMe/TCP, QD1 and QD32 "
                         "randwrite, against a secondary replication_tgt on --secondary-core")
    ap.add_argument("--tgt", type=Path, default=rb.REPO / "target/release/replication_tgt")
    ap.add_argument("--secondary-spdk-dir", default=os.environ.get("SPDK_DIR"),
                    help="the secondary's SPDK libraries ($SPDK_DIR, else /opt/spdk)")
    ap.add_argument("--secondary-core", default="0x1")
    ap.add_argument("--bdevperf-core", default="0x2")
    ap.add_argument("--port", type=int, default=4791)
    ap.add_argument("--only", action="append", help="setup keys to count (repeatable)")
    ap.add_argument("--top", type=int, default=6, help="objects/functions listed (6)")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        raise rb.BenchError("valgrind not found (Debian: apt-get install valgrind)")
    bdevperf, spdk_lib = rb.find_bdevperf(a.spdk_dir)
    module = rb.find_module(a.module)
    rb.KEEP_TMP = a.keep
    tmp = rb.bench_tmp("repl-instr-")
    wrapper = ["valgrind", "--tool=callgrind", "--collect-atstart=yes",
               f"--zero-before={ZERO_AT}", f"--dump-before={DUMP_AT}",
               "--callgrind-out-file=callgrind.out"]
    # Counts do not depend on the core: two of these may run at once.
    env = rb.Env(bdevperf, spdk_lib, module, tmp, "0x1", 1024, 32, rb.BLOCK, a.time,
                 extra=["--disable-cpumask-locks"], wrapper=wrapper)
    sec = None
    if a.remote:
        if not a.tgt.is_file():
            raise rb.BenchError(f"{a.tgt} not found: `cargo build --release --bin replication_tgt`")
        _, sec_lib = rb.find_bdevperf(a.secondary_spdk_dir)
        sec = rm.Secondary(a.tgt.resolve(), sec_lib, tmp, a.secondary_core, a.port)
        env = dataclasses.replace(env, core_mask=a.bdevperf_core)
        setups = rm.setups(a.port)
        comps, workloads = REMOTE, [("randwrite", 1), ("randwrite", 32)]
    else:
        setups = {k: resized(s) for k, s in rb.SETUPS.items()}
        comps, workloads = LOCAL, [(w, 32) for w in rb.WORKLOADS]
    keys = list(dict.fromkeys(k for c in comps for k in c))
    if a.only:
        keys = [k for k in keys if k in a.only]
        comps = [c for c in comps if c[0] in keys and c[1] in keys]
    rb.log(f"bdevperf {bdevperf} under callgrind, module {module}, {a.time} s windows, "
           f"temp {tmp}")
    results = {}
    try:
        for wl, qd in workloads:
            for key in keys:
                r = count(env, setups[key], wl, f"{key}-{wl}-qd{qd}", qd)
                results[(key, wl, qd)] = r
                rb.log(f"  {setups[key].label:36} {wl:9} QD{qd:<3} {r['ir_per_io']:9.0f} Ir/IO "
                       f"({r['ios']:,} I/Os, {r['iops_under_valgrind']:,.0f} IOPS under valgrind)")
    finally:
        if sec:
            sec.close()
    labels = {k: s.label for k, s in setups.items()}
    summary = table(results, comps, labels, workloads, a.top)
    if a.json_out:
        a.json_out.write_text(json.dumps({
            "summary": summary,
            "results": {f"{k} {w} qd{q}": {**v, "per_function": dict(sorted(
                v["per_function"].items(), key=lambda kv: -kv[1])[:60])}
                for (k, w, q), v in results.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    rb.run_main(main)
