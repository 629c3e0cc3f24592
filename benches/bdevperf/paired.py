#!/usr/bin/env python3
"""Our bdevs and their baselines in the same bdevperf process, over the same mallocs,
taking turns (issue 9, item 2: ratios whose spread is smaller than the margin).

`run.py` gives every (setup, workload) its own process. On this VM a setup's IOPS move by
up to 30 % between processes, and part of that is the process: which physical pages its
`--no-huge` mallocs landed on. Here one process holds the mallocs for the whole run and
the measured bdev is rebuilt over them for every turn, under one name (`dut`, bdevperf's
`-T`), so ours and the baseline read and write the very same memory:

    mirror      mallocs m0, m1                 raid1(m0, m1)  vs  primary(m0, m1)
    secondary   mallocs base, hidden, active   passthru(base) vs  top, and vs ingress

A round is one turn of the baseline and one of ours, back to back, the order alternating
between rounds (ABBA) so a slow drift does not favour either; the figure is the median
of the per-round ratios, reported with their range and a distribution-free 95 %
confidence interval of the median (`run.median_ci`, from 6 rounds on). A verdict is robust
when that interval lies on the target's side: the rounds' range never narrows with more
rounds, the median's interval does, so "enough rounds" means enough for the interval to
fit inside the margin. Each turn starts from the state
`run.py` measures: the top running with empty overlays (a new node), the ingress with
every cluster copied (a prefill after each create), the primary running. Every malloc
gets `run.py`'s warm-up pass once, before the first turn.

    python3 benches/bdevperf/paired.py --time 5 --repeat 7

Python 3.11, stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as rb  # noqa: E402

DUT = "dut"
GRAN = rb.COW_GRANULARITY
TARGETS = {"top": 0.97, "ingress": 0.97, "primary": 1.0}

# Each family: its mallocs, and per setup: the RPCs that build it (named DUT), the RPCs
# that remove it, its replication node (None for baselines), and the bdev that must see
# the writes.
SEC_CREATE = {"mode": "secondary", "base_bdev": "base", "hidden_bdev": "hidden",
              "active_bdev": "active", "cow_granularity": GRAN}
FAMILIES = {
    "mirror": {
        "mallocs": ["m0", "m1"],
        "setups": {
            "raid1": ([("bdev_raid_create", {"name": DUT, "raid_level": "raid1",
                                             "strip_size_kb": 0, "base_bdevs": ["m0", "m1"]})],
                      [("bdev_raid_delete", {"name": DUT})], None, "m1"),
            "primary": ([("bdev_replication_create", {"name": DUT, "mode": "primary",
                                                      "local_bdev": "m0", "remote_bdev": "m1"}),
                         ("bdev_replication_start", {"name": DUT})],
                        [("bdev_replication_delete", {"name": DUT})], DUT, "m1"),
        },
        "comparisons": [("primary", "raid1")],
        "workloads": [(w, 32) for w in rb.WORKLOADS],
    },
    "secondary": {
        "mallocs": ["base", "hidden", "active"],
        "setups": {
            "passthru": ([("bdev_passthru_create", {"base_bdev_name": "base", "name": DUT})],
                         [("bdev_passthru_delete", {"name": DUT})], None, "base"),
            "top": ([("bdev_replication_create",
                      {"name": DUT, "ingress_name": "sec_in", **SEC_CREATE}),
                     ("bdev_replication_start", {"name": DUT})],
                    [("bdev_replication_delete", {"name": DUT})], DUT, "active"),
            "ingress": ([("bdev_replication_create",
                          {"name": "sec", "ingress_name": DUT, **SEC_CREATE}),
                         ("bdev_replication_start", {"name": "sec"})],
                        [("bdev_replication_delete", {"name": "sec"})], "sec", "base"),
        },
        "comparisons": [("top", "passthru"), ("ingress", "passthru")],
        "workloads": [(w, 32) for w in rb.WORKLOADS],
    },
}


def remote_family(port: int) -> dict:
    """Item 1: the local malloc and the NVMe/TCP bdev of a secondary's ingress."""
    return {
        "mallocs": ["m0"],
        "attach": rm.attach(port),
        "setups": {
            "raid1": ([("bdev_raid_create", {"name": DUT, "raid_level": "raid1",
                                             "strip_size_kb": 0,
                                             "base_bdevs": ["m0", "remn1"]})],
                      [("bdev_raid_delete", {"name": DUT})], None, "remn1"),
            # raid1 has no timeout: a stall of the secondary's core must not break the link
            # mid-run and leave raid1 the only one mirroring (as in remote.py).
            "primary": ([("bdev_replication_create",
                          {"name": DUT, "mode": "primary", "local_bdev": "m0",
                           "remote_bdev": "remn1", "remote_timeout_ms": 30000}),
                         ("bdev_replication_start", {"name": DUT})],
                        [("bdev_replication_delete", {"name": DUT})], DUT, "remn1"),
        },
        "comparisons": [("primary", "raid1")],
        "workloads": [("randwrite", 1), ("randwrite", 32)],
    }


def family_setup(fam: dict) -> rb.Setup:
    return rb.Setup(key="family", label="mallocs", target=DUT,
                    bdev_config=[rb.malloc(m) for m in fam["mallocs"]])


def warm_remote(bp: rb.Bdevperf) -> None:
    """The secondary's base, faulted in the way `rb.warm_up` does a malloc's."""
    bp.call("bdev_passthru_create", {"base_bdev_name": "remn1", "name": DUT})
    bp.write_pass("the remote leg")
    bp.call("bdev_passthru_delete", {"name": DUT})


def turn(bp: rb.Bdevperf, fam: dict, key: str, workload: str, qd: int, secs: int) -> dict:
    """Builds `key` as DUT, measures one run, removes it."""
    create, delete, node, write_leg = fam["setups"][key]
    for m, p in create:
        bp.call(m, p)
    bp.call("bdev_wait_for_examine")
    try:
        if node:
            st = bp.check_running(node, f" ({key})")
            if st.get("mode") == "secondary" and any(st["allocated"].values()):
                raise bp.fail(f"{key}: overlays not empty on a new node: {st['allocated']}")
            if key == "ingress":
                bp.prefill_ingress(node, GRAN)
        io0 = bp.iostat()
        j = bp.perform(workload, secs, rb.BLOCK, qd=qd)
        io1 = bp.iostat()
        if workload == "randwrite":
            got = io1.get(write_leg, {}).get("writes", 0) - io0.get(write_leg, {}).get("writes", 0)
            top = io1[DUT]["writes"] - io0.get(DUT, {}).get("writes", 0)
            if got < top:
                raise bp.fail(f"{key}: {write_leg} got {got} writes, {DUT} {top}")
        if node:
            after = bp.status(node)
            if after.get("error"):
                raise bp.fail(f"{key}: {node} reports an error: {after['error']}")
    finally:
        for m, p in delete:
            bp.call(m, p)
    return j


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=5, help="seconds per turn (5)")
    ap.add_argument("--repeat", type=int, default=7, help="rounds per comparison (7)")
    ap.add_argument("--module", type=Path,
                    default=rb.REPO / "target/release/libreplication_module.so")
    ap.add_argument("--spdk-dir", default=os.environ.get("SPDK_DIR"))
    ap.add_argument("--core-mask", default=None,
                    help="bdevperf -m (0x1; with --remote 0x2)")
    ap.add_argument("--only", choices=list(TARGETS), action="append",
                    help="run only this comparison (repeatable)")
    ap.add_argument("--remote", action="store_true",
                    help="item 1 instead: the primary and raid1 over a local malloc and the "
                         "NVMe/TCP bdev of a secondary replication_tgt on --secondary-core, "
                         "4 KiB random write at QD1 and QD32")
    ap.add_argument("--tgt", type=Path, default=rb.REPO / "target/release/replication_tgt")
    ap.add_argument("--secondary-core", default="0x1")
    ap.add_argument("--port", type=int, default=4792)
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.time < 1 or a.repeat < 1:
        ap.error("--time and --repeat must be >= 1")
    bdevperf, spdk_lib = rb.find_bdevperf(a.spdk_dir)
    module = rb.find_module(a.module)
    rb.KEEP_TMP = a.keep
    tmp = rb.bench_tmp("repl-paired-")
    core = a.core_mask or ("0x2" if a.remote else "0x1")
    env = rb.Env(bdevperf, spdk_lib, module, tmp, core, 1024, 32, rb.BLOCK, a.time)
    sec = None
    if a.remote:
        global rm
        import remote as rm  # noqa: E402  (64 MiB disks: a pass over TCP covers one in 1 s)
        if not a.tgt.is_file():
            raise rb.BenchError(f"{a.tgt} not found: `cargo build --release --bin replication_tgt`")
        families = {"remote": remote_family(a.port)}
        sec = rm.Secondary(a.tgt.resolve(), spdk_lib, tmp, a.secondary_core, a.port)
    else:
        families = FAMILIES
    rb.log(f"bdevperf {bdevperf} on {core}, module {module}, {a.time} s turns, "
           f"{a.repeat} rounds, temp {tmp}")
    rounds: dict[tuple[str, str, int], list[dict]] = {}
    try:
        for fname, fam in families.items():
            comps = [c for c in fam["comparisons"] if not a.only or c[0] in a.only]
            if not comps:
                continue
            bp = rb.Bdevperf(env, family_setup(fam), fname, mallocs_only=True)
            try:
                bp.wait_ready()
                if "attach" in fam:
                    bp.call(fam["attach"]["method"], fam["attach"]["params"])
                rb.warm_up(bp)
                if "attach" in fam:
                    warm_remote(bp)
                for wl, qd in fam["workloads"]:
                    for rep in range(a.repeat):
                        for ours, base in comps:
                            order = (base, ours) if rep % 2 == 0 else (ours, base)
                            got = {k: turn(bp, fam, k, wl, qd, a.time) for k in order}
                            r = {"iops": got[ours]["iops"] / got[base]["iops"],
                                 "latency": got[ours]["avg_latency_us"]
                                 / got[base]["avg_latency_us"]}
                            bad = [k for k in order if rb.disturbed_run(got[k])]
                            rb.log(f"  {wl:9} QD{qd:<2} round {rep + 1}: {ours} "
                                   f"{got[ours]['iops']:,.0f}, {base} {got[base]['iops']:,.0f} "
                                   f"IOPS: {r['iops']:.3f}, latency {r['latency']:.3f}"
                                   + (f"  (disturbed: {', '.join(bad)})" if bad else ""))
                            rounds.setdefault((ours, base, wl, qd), []).append(
                                {**r, "ours": got[ours], "base": got[base],
                                 "order": list(order), "disturbed": bad})
            finally:
                bp.close()
    finally:
        if sec:
            sec.close()

    print(f"\nbdevperf 4 KiB, 1 core ({core}), {a.time} s turns, ours and the baseline in "
          f"one process over the same bdevs, {a.repeat} rounds; per-round ratios")
    hdr = (f"{'ratio':16} {'workload':9} {'QD':>3} {'metric':8} {'median':>7} {'95% CI':>13} "
           f"{'rounds':>13} {'spread':>7} {'target':>8}  verdict")
    print(hdr)
    print("-" * len(hdr))
    out, ok_all = {}, True
    for (ours, base, wl, qd), rs in rounds.items():
        checks = [("iops", ">=", 0.97 if a.remote else TARGETS[ours])]
        if a.remote and qd == 1:
            checks.append(("latency", "<=", 1.03))
        for metric, op, target in checks:
            v = [r[metric] for r in rs]
            med = statistics.median(v)
            spr = rb.spread(v)
            meets = (lambda x: x >= target) if op == ">=" else (lambda x: x <= target)
            ok = meets(med)
            ok_all &= ok
            ci = rb.median_ci(v)
            # Robust: the whole interval on the target's side (the median's uncertainty
            # inside the margin); "not robust" when the interval straddles the target.
            robust = ci is not None and meets(ci[0]) == meets(ci[1]) == ok
            ci_txt = f"{ci[0]:6.3f}-{ci[1]:.3f}" if ci else f"{'(<6 rounds)':>13}"
            print(f"{ours + '/' + base:16} {wl:9} {qd:3} {metric:8} {med:7.3f} {ci_txt} "
                  f"{min(v):6.3f}-{max(v):.3f} {spr:6.1%} {op}{target:6.2f}  "
                  f"{'PASS' if ok else 'FAIL'}"
                  + ("" if robust else "  (not robust: CI crosses the target)" if ci
                     else "  (too few rounds for a CI)"))
            out[f"{ours}/{base} {wl} qd{qd} {metric}"] = {
                "median": med, "ci95": ci, "rounds": v, "spread": spr, "target": target,
                "pass": ok, "robust": robust}
    if a.json_out:
        a.json_out.write_text(json.dumps({"summary": out, "rounds": {
            f"{o}/{b} {w} qd{q}": rs for (o, b, w, q), rs in rounds.items()}}, indent=1) + "\n")
    return 0 if ok_all else 1


if __name__ == "__main__":
    rb.run_main(main)
