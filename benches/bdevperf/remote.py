#!/usr/bin/env python3
"""The primary with a real remote leg (issue 9, item 1), next to SPDK's raid1 over the
same two bdevs, in the same run.

Two processes on two cores: a secondary `replication_tgt` (SPDK host, core 0) exports its
ingress over NVMe/TCP on 127.0.0.1 (stage `none`: ingress writes go straight to its
malloc base, the same for every configuration); on the other core, `bdevperf` with the
module preloaded drives, each in its own process:

    local     passthru over the local malloc                 (the local leg alone)
    remote    passthru over the NVMe/TCP bdev of the ingress (the remote leg alone)
    raid1     raid1 over local malloc + NVMe/TCP bdev        (the baseline)
    primary   our primary over the same two                  (ours)

4 KiB random write at QD1 and QD32. Targets: primary >= 0.97x raid1's IOPS (QD32 and QD1)
and <= 1.03x raid1's QD1 latency. The QD1 breakdown: local leg, remote leg, and our
overhead (primary - max(local, remote), next to raid1's).

Reuses run.py's bdevperf driver (warm-up, sanity checks, CPU-share checks). Python 3.11,
stdlib only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as rb  # noqa: E402

# Smaller disks than run.py's: the secondary holds three of them, and a warm-up pass over
# NVMe/TCP must write a whole disk in one second.
rb.MALLOC_MIB = 64
rb.NUM_BLOCKS = rb.MALLOC_MIB * 1024 * 1024 // rb.BLOCK
INGRESS_NQN = "nqn.2016-06.io.spdk:bench-ingress"
TARGETS = {"iops": 0.97, "qd1_latency": 1.03}


def attach(port: int) -> dict:
    return {"method": "bdev_nvme_attach_controller",
            "params": {"name": "rem", "trtype": "TCP", "adrfam": "IPv4",
                       "traddr": "127.0.0.1", "trsvcid": str(port), "subnqn": INGRESS_NQN}}


def setups(port: int) -> dict[str, rb.Setup]:
    m0 = rb.malloc("m0")
    return {
        "local": rb.Setup("local", "local leg (passthru over malloc)", "pt", [
            m0, {"method": "bdev_passthru_create",
                 "params": {"base_bdev_name": "m0", "name": "pt"}}]),
        "remote": rb.Setup("remote", "remote leg (passthru over NVMe/TCP)", "pt", [
            attach(port), {"method": "bdev_passthru_create",
                           "params": {"base_bdev_name": "remn1", "name": "pt"}}]),
        "raid1": rb.Setup("raid1", "raid1(malloc, NVMe/TCP)", "r1", [
            m0, attach(port),
            {"method": "bdev_raid_create",
             "params": {"name": "r1", "raid_level": "raid1", "strip_size_kb": 0,
                        "base_bdevs": ["m0", "remn1"]}}],
            expect_writes_on={"remn1": "raid1 mirrors"}),
        "primary": rb.Setup("primary", "primary(malloc, NVMe/TCP)", "pri", [
            m0, attach(port),
            {"method": "bdev_replication_create",
             # raid1 has no timeout: a stall of the secondary's core (another process on
             # it) must not break the link mid-run and leave raid1 the only one mirroring.
             "params": {"name": "pri", "mode": "primary", "local_bdev": "m0",
                        "remote_bdev": "remn1", "remote_timeout_ms": 30000}},
            {"method": "bdev_replication_start", "params": {"name": "pri"}}],
            node="pri", expect_writes_on={"remn1": "primary writes must reach the remote"}),
    }


def export(nqn: str, bdev: str, port: int) -> list[dict]:
    """An NVMe-oF/TCP subsystem with `bdev` as its namespace, listening on `port`."""
    return [
        {"method": "nvmf_create_subsystem", "params": {"nqn": nqn, "allow_any_host": True}},
        {"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn, "namespace": {
            "bdev_name": bdev}}},
        {"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address": {
            "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(port)}}}]


class Tgt:
    """`replication_tgt --host spdk` on `core_mask` with the SPDK JSON config `cfg`, its RPC
    socket ready (`framework_wait_init` answered)."""

    def __init__(self, tgt: Path, spdk_lib: Path, d: Path, core_mask: str, cfg: dict,
                 extra: list[str] | None = None):
        d.mkdir()
        self.sock = d / "rpc.sock"
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        self.log = d / "tgt.log"
        e = dict(os.environ)
        e["LD_LIBRARY_PATH"] = ":".join(
            [str(spdk_lib)] + [p for p in e.get("LD_LIBRARY_PATH", "").split(":") if p])
        cmd = [str(tgt), "--host", "spdk", "--no-huge", "-s", "1024", "--no-pci",
               "--disable-cpumask-locks", "-m", core_mask, "-r", str(self.sock),
               "--json", str(d / "config.json"), *(extra or [])]
        self.out = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=e, cwd=d)
        rb.LIVE.add(self.proc)
        self.rpc = rpc = rb.Rpc(self.sock)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise rb.BenchError(f"{d.name} exited ({self.proc.returncode}); log: "
                                    f"{self.log}\n{self.log.read_text(errors='replace')[-3000:]}")
            if self.sock.exists():
                try:
                    rpc.call("framework_wait_init")
                    break
                except (ConnectionError, FileNotFoundError, rb.BenchError):
                    pass
            if time.monotonic() > deadline:
                raise rb.BenchError(f"{d.name} not ready after 60 s; log: {self.log}")
            time.sleep(0.2)

    def close(self) -> None:
        rb.stop(self.proc)
        self.out.close()


class Secondary(Tgt):
    """A `Tgt` with a secondary node `sec` (stage `none`: ingress writes go straight to its
    malloc base) exporting `exports` (bdev -> (NQN, port); by default its ingress), started
    with `extra` arguments."""

    def __init__(self, tgt: Path, spdk_lib: Path, tmp: Path, core_mask: str, port: int,
                 exports: dict[str, tuple[str, int]] | None = None,
                 extra: list[str] | None = None, name: str = "secondary"):
        exports = exports or {"ingress": (INGRESS_NQN, port)}
        cfg = {"subsystems": rb.FRAMEWORK + [
            {"subsystem": "bdev", "config": [
                rb.malloc("base"), rb.malloc("hidden"), rb.malloc("active"),
                {"method": "bdev_replication_create",
                 "params": {"name": "sec", "mode": "secondary", "base_bdev": "base",
                            "hidden_bdev": "hidden", "active_bdev": "active",
                            "ingress_name": "ingress"}}]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}]
                + [c for bdev, (nqn, p) in exports.items() for c in export(nqn, bdev, p)]}]}
        super().__init__(tgt, spdk_lib, tmp / name, core_mask, cfg, extra)


def require_built(module: Path, tgt: Path) -> None:
    for p, what in ((module, "cargo build -p replication-module --release"),
                    (tgt, "cargo build --release --bin replication_tgt")):
        if not p.is_file():
            raise rb.BenchError(f"{p} not found: build it with `{what}` (needs SPDK)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=10, help="seconds per measurement (10)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per (configuration, queue depth), interleaved; median (3)")
    ap.add_argument("--module", type=Path,
                    default=rb.REPO / "target/release/libreplication_module.so")
    ap.add_argument("--tgt", type=Path, default=rb.REPO / "target/release/replication_tgt",
                    help="the secondary's replication_tgt (target/release/replication_tgt)")
    ap.add_argument("--spdk-dir", default=os.environ.get("SPDK_DIR"))
    ap.add_argument("--secondary-core", default="0x1", help="secondary -m (0x1)")
    ap.add_argument("--bdevperf-core", default="0x2", help="bdevperf -m (0x2)")
    ap.add_argument("--port", type=int, default=4790)
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    bdevperf, spdk_lib = rb.find_bdevperf(a.spdk_dir)
    require_built(a.module, a.tgt)
    rb.KEEP_TMP = a.keep
    tmp = rb.bench_tmp("repl-remote-")
    sec = Secondary(a.tgt.resolve(), spdk_lib, tmp, a.secondary_core, a.port)
    base = rb.Env(bdevperf, spdk_lib, a.module.resolve(), tmp, a.bdevperf_core, 1024,
                  32, rb.BLOCK, a.time)
    envs = {qd: dataclasses.replace(base, qd=qd) for qd in (1, 32)}
    cfgs = setups(a.port)
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        for rep in range(a.repeat):
            for qd, env in envs.items():
                for key, setup in cfgs.items():
                    for attempt in range(3):
                        r = rb.measure(env, setup, "randwrite", f"{qd}.{rep}.{attempt}")
                        rb.log(f"  {setup.label:36} QD{qd:<3} {r['iops']:>10,.0f} IOPS  "
                               f"avg {r['avg_lat_us']:8.2f} us  reactor cpu "
                               f"{r['reactor_cpu_share']:.2f}"
                               + ("  (disturbed, again)" if rb.disturbed_run(r) else ""))
                        if not rb.disturbed_run(r):
                            break
                    runs.setdefault((key, qd), []).append(r)
    finally:
        sec.close()

    def med(key: str, qd: int, m: str) -> float:
        return statistics.median(r[m] for r in runs[(key, qd)])

    def spread(key: str, qd: int) -> float:
        v = [r["iops"] for r in runs[(key, qd)]]
        return (max(v) - min(v)) / statistics.median(v)

    print(f"{'configuration':38} {'QD':>3} {'IOPS':>10} {'avg us':>9} {'spread':>7}")
    for (key, qd) in sorted(runs, key=lambda k: (k[1], list(cfgs).index(k[0]))):
        print(f"{cfgs[key].label:38} {qd:>3} {med(key, qd, 'iops'):>10,.0f} "
              f"{med(key, qd, 'avg_lat_us'):>9.2f} {spread(key, qd):>6.1%}")
    ok = True
    result = {"runs": {f"{k}-qd{q}": v for (k, q), v in runs.items()}, "ratios": {}}
    def rounds(qd: int, m: str) -> str:
        """The ratio in each round (primary and raid1 run back to back in a round)."""
        v = [p[m] / r[m] for p, r in zip(runs[("primary", qd)], runs[("raid1", qd)])]
        result["ratio_rounds"][f"{m}_qd{qd}"] = v
        return f"rounds {min(v):.3f}-{max(v):.3f}"

    result["ratio_rounds"] = {}
    for qd in (1, 32):
        r = med("primary", qd, "iops") / med("raid1", qd, "iops")
        result["ratios"][f"iops_qd{qd}"] = r
        good = r >= TARGETS["iops"]
        ok &= good
        print(f"primary/raid1 IOPS QD{qd}: {r:.3f} ({rounds(qd, 'iops')}; target >= "
              f"{TARGETS['iops']}) {'PASS' if good else 'FAIL'}")
    lat = med("primary", 1, "avg_lat_us") / med("raid1", 1, "avg_lat_us")
    result["ratios"]["qd1_latency"] = lat
    good = lat <= TARGETS["qd1_latency"]
    ok &= good
    print(f"primary/raid1 QD1 latency: {lat:.3f} ({rounds(1, 'avg_lat_us')}; target <= "
          f"{TARGETS['qd1_latency']}) {'PASS' if good else 'FAIL'}")
    loc, rem = med("local", 1, "avg_lat_us"), med("remote", 1, "avg_lat_us")
    legs = max(loc, rem)
    print(f"QD1 breakdown: local leg {loc:.2f} us, remote leg {rem:.2f} us; over the slower "
          f"leg: primary +{med('primary', 1, 'avg_lat_us') - legs:.2f} us, "
          f"raid1 +{med('raid1', 1, 'avg_lat_us') - legs:.2f} us")
    result["qd1_breakdown_us"] = {"local": loc, "remote": rem,
                                  "primary": med("primary", 1, "avg_lat_us"),
                                  "raid1": med("raid1", 1, "avg_lat_us")}
    if a.json_out:
        a.json_out.write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    rb.run_main(main)
