#!/usr/bin/env python3
"""The SPDK host's full sync over NVMe/TCP against SPDK's own `spdk_dd` copying the same
bytes over the same link: what a primary storage node's initial sync or `resync --full`
takes, next to a raw copy.

Two processes on two cores, as in `remote.py`: a secondary `replication_tgt` on
`--secondary-core` exporting its ingress over NVMe/TCP (stage `none`: writes go straight
to its malloc base), and on `--primary-core`, in turns (one process at a time, since
every SPDK app polls its core):

    sync   `replication_tgt` with a primary over a local malloc and the NVMe/TCP bdev
           attached to that ingress: the initial sync (`bdev_replication_start
           {"sync": "full"}` in a fresh process), then `bdev_replication_resync
           {"full": true}` in the same process; each timed by the job itself (its
           "sync complete" log line; the status is polled only every `--poll-ms` to
           see the end, since a client polling often enough to time the job would take
           turns on the two busy cores).
    raw    `spdk_dd --ib <local malloc> --ob <NVMe/TCP bdev>` at the sync's region size
           and depth (64 KiB, 16 in flight: the sync keeps ~1 MiB in flight), its own
           reported average.

Rounds alternate (sync, raw, raw, sync, ...); the results are the medians of the
per-round ratios to spdk_dd's copy, with the median's 95 % confidence interval. The
verdict is the resync's: `--no-huge` malloc pages are faulted in on first touch, and
spdk_dd's local malloc is resident before its copy starts (its page faults do not change
with the bytes copied), where our initial sync takes one fault per 4 KiB page of the
local malloc (65,536 for 256 MiB) as it reads it; by the resync both copy from resident
pages. The initial sync's ratio is reported beside it.
Target: >= 0.8 (issue 10).

Python 3.11, stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import remote as rm
import run as rb

SYNC_GRANULARITY = 64 * 1024
DEPTH = 16
TARGET = 0.8


def local_config(port: int) -> list[dict]:
    return [rb.BDEV_OPTIONS, rb.malloc("m0"), rm.attach(port)]


def wait_job(p: rm.Tgt, poll_ms: float, n: int) -> float:
    """Waits for the end of the process's `n`th sync job; its seconds, as the job logged
    them (a client polling the status often enough to time the job itself would take
    turns on the two busy cores)."""
    size = rb.NUM_BLOCKS * rb.BLOCK
    while True:
        st = p.rpc.call("bdev_replication_get_status", {"name": "pri"})[0]
        if st["sync"]["state"] != "syncing":
            break
        time.sleep(poll_ms / 1000)
    if st["sync"]["state"] != "in_sync" or st["link_broken"]:
        raise rb.BenchError(f"sync ended {st['sync']['state']}, link_broken "
                            f"{st['link_broken']}: {st}")
    m = re.findall(r"sync complete: remote in sync bytes=(\d+) secs=([0-9.e+-]+)",
                   p.log.read_text(errors="replace"))
    if len(m) < n:
        raise rb.BenchError(f"{len(m)} 'sync complete' lines in {p.log}, expected {n}")
    copied, secs = int(m[n - 1][0]), float(m[n - 1][1])
    if copied != size:
        raise rb.BenchError(f"the sync copied {copied} of {size} bytes: {st}")
    return secs


def sync_once(tgt: Path, spdk_lib: Path, d: Path, core: str, port: int,
              poll_ms: float) -> dict:
    """A fresh primary's initial sync (`start` with `sync: "full"`), then a
    `resync {"full": true}` in the same process."""
    cfg = {"subsystems": rb.FRAMEWORK + [{"subsystem": "bdev", "config": local_config(port) + [
        {"method": "bdev_replication_create",
         "params": {"name": "pri", "mode": "primary", "local_bdev": "m0",
                    "remote_bdev": "remn1", "remote_timeout_ms": 30000,
                    "sync_granularity": SYNC_GRANULARITY}}]}]}
    p = rm.Tgt(tgt, spdk_lib, d, core, cfg)
    mib = rb.NUM_BLOCKS * rb.BLOCK / (1 << 20)
    try:
        p.rpc.call("bdev_replication_start", {"name": "pri", "sync": "full"})
        first = wait_job(p, poll_ms, 1)
        p.rpc.call("bdev_replication_resync", {"name": "pri", "full": True})
        again = wait_job(p, poll_ms, 2)
    finally:
        p.close()
    return {"initial": {"mib_s": mib / first, "secs": first},
            "resync": {"mib_s": mib / again, "secs": again}}


def raw_once(dd: Path, spdk_lib: Path, d: Path, core: str, port: int) -> dict:
    d.mkdir()
    cfg = {"subsystems": rb.FRAMEWORK + [{"subsystem": "bdev",
                                          "config": local_config(port)}]}
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    e = dict(os.environ)
    e["LD_LIBRARY_PATH"] = ":".join(
        [str(spdk_lib)] + [x for x in e.get("LD_LIBRARY_PATH", "").split(":") if x])
    cmd = [str(dd), "--no-huge", "-s", "1024", "--no-pci", "--disable-cpumask-locks",
           "-m", core, "--json", str(d / "config.json"), "--ib", "m0", "--ob", "remn1",
           "--bs", str(SYNC_GRANULARITY), "--qd", str(DEPTH)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=d, timeout=300)
    out = r.stdout + r.stderr
    (d / "dd.log").write_text(out)
    m = re.findall(r"average (\d+(?:\.\d+)?) MBps", out)
    if r.returncode != 0 or not m:
        raise rb.BenchError(f"spdk_dd failed ({r.returncode}):\n{out[-3000:]}")
    return {"mib_s": float(m[-1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=8, help="rounds (8)")
    ap.add_argument("--mib", type=int, default=256, help="disk size in MiB (256)")
    ap.add_argument("--poll-ms", type=float, default=50.0,
                    help="status poll period during a sync (50 ms)")
    ap.add_argument("--tgt", type=Path, default=rb.REPO / "target/release/replication_tgt")
    ap.add_argument("--spdk-dir", default=os.environ.get("SPDK_DIR"),
                    help="SPDK's install prefix (spdk_dd, libraries): $SPDK_DIR, else /opt/spdk")
    ap.add_argument("--secondary-core", default="0x1")
    ap.add_argument("--primary-core", default="0x2")
    ap.add_argument("--port", type=int, default=4793)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    rb.MALLOC_MIB = a.mib
    rb.NUM_BLOCKS = a.mib * 1024 * 1024 // rb.BLOCK
    bdevperf, spdk_lib = rb.find_bdevperf(a.spdk_dir)
    dd = bdevperf.parent / "spdk_dd"
    if not dd.is_file():
        raise rb.BenchError(f"{dd} not found (SPDK's spdk_dd, built with SPDK's apps)")
    if not a.tgt.is_file():
        raise rb.BenchError(f"{a.tgt} not found: `cargo build --release --bin replication_tgt`")
    rb.KEEP_TMP = a.keep
    tmp = rb.bench_tmp("repl-sync-")
    rb.log(f"full sync of {a.mib} MiB over NVMe/TCP ({SYNC_GRANULARITY >> 10} KiB regions) "
           f"vs spdk_dd --bs {SYNC_GRANULARITY} --qd {DEPTH}, {a.repeat} rounds, temp {tmp}")
    sec = rm.Secondary(a.tgt.resolve(), spdk_lib, tmp, a.secondary_core, a.port)
    rates: dict[str, list[float]] = {k: [] for k in ("initial", "resync", "raw")}
    try:
        for i in range(a.repeat):
            order = ("sync", "raw") if i % 2 == 0 else ("raw", "sync")
            got = {}
            for kind in order:
                d = tmp / f"{kind}-{i}"
                if kind == "sync":
                    got.update(sync_once(a.tgt.resolve(), spdk_lib, d, a.primary_core,
                                         a.port, a.poll_ms))
                else:
                    got["raw"] = raw_once(dd, spdk_lib, d, a.primary_core, a.port)
            for k in rates:
                rates[k].append(got[k]["mib_s"])
            rb.log(f"  round {i + 1}: initial sync {got['initial']['mib_s']:5.0f} MiB/s, "
                   f"resync {got['resync']['mib_s']:5.0f} MiB/s, spdk_dd "
                   f"{got['raw']['mib_s']:5.0f} MiB/s")
    finally:
        sec.close()
    raw = rates["raw"]
    for k, what, target in (
            ("resync", "resync/spdk_dd (local pages resident in both)", TARGET),
            ("initial", "initial sync/spdk_dd (first touch of the local pages)", None)):
        vals = [x / y for x, y in zip(rates[k], raw)]
        med = statistics.median(vals)
        ci = rb.median_ci(vals)
        ci_s = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "n/a (under 6 rounds)"
        verdict = ""
        if target is not None:
            if ci and ci[0] >= target:
                verdict = ", met, robustly"
            elif ci and ci[1] < target:
                verdict = ", not met, robustly"
            else:
                verdict = ", met" if med >= target else ", not met"
        tgt_s = f"target >= {target}; " if target is not None else ""
        print(f"{what}: {med:.3f}x ({tgt_s}95 % CI {ci_s}; rounds {min(vals):.3f}-"
              f"{max(vals):.3f}): {statistics.median(rates[k]):.0f} vs "
              f"{statistics.median(raw):.0f} MiB/s{verdict}")
    return 0


if __name__ == "__main__":
    rb.run_main(main)
