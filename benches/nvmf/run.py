#!/usr/bin/env python3
"""The project's NVMe/TCP target and initiator against SPDK's (issue 7's benchmark). Stdlib
only; needs SPDK (`spdk_nvme_perf`) under /opt/spdk or $SPDK_DIR and `cargo build --release
&& cargo build --release -p nvmf --example perf`.

Targets, on core 1, each serving a 64 MiB RAM disk: SPDK's NVMe-oF target (an SPDK app:
`replication_tgt --host spdk`, whose nvmf target is SPDK's own) and the project's
(`replication_tgt --host native`, the io_uring reactor driver guests use). The initiator,
on core 0: SPDK's `spdk_nvme_perf` for the target rows; for the initiator rows, against
SPDK's target, `spdk_nvme_perf` vs the project's (`nvmf/examples/perf.rs --poll`: its
thread polls the sockets as SPDK's does, through an `RxDriver`), and the project's with a
reader thread per queue (the driver's default) for reference.

4 KiB random read and random write at QD1 and QD32, `--secs` each. `--rounds N` repeats
everything N times; each figure is the median, with the spread (max-min)/median.

Usage: benches/nvmf/run.py [--secs 5] [--rounds 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hosts"))
from run import call, export, malloc, start  # noqa: E402

NQN = "nqn.2016-06.io.spdk:m0"
WORKLOADS = [(w, qd) for w in ("randread", "randwrite") for qd in (1, 32)]


def spdk_perf(spdk: Path, port, w, qd, secs):
    """(IOPS, mean latency µs) of spdk_nvme_perf on core 0."""
    trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"
    out = subprocess.run([str(spdk / "bin/spdk_nvme_perf"), "--no-huge", "-s", "1024", "-c", "0x1",
                          "-q", str(qd), "-o", "4096", "-w", w, "-t", str(secs), "-r", trid],
                         capture_output=True, text=True, timeout=secs + 60)
    for line in out.stdout.splitlines():
        # "Total    :  IOPS  MiB/s  Average  min  max"
        if line.strip().startswith("Total"):
            v = line.split(":")[1].split()
            return float(v[0]), float(v[2])
    raise RuntimeError(f"spdk_nvme_perf gave no total:\n{out.stdout}\n{out.stderr}")


def our_perf(perf: Path, port, w, qd, secs, poll):
    cmd = ["taskset", "-c", "0", str(perf), "--addr", f"127.0.0.1:{port}", "--nqn", NQN,
           "--rw", w, "--qd", str(qd), "--secs", str(secs)] + (["--poll"] if poll else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60)
    if out.returncode != 0:
        raise RuntimeError(f"perf failed: {out.stderr}")
    r = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    return r["iops"], r["mean_lat_us"]


def node(binary, host, d, port):
    cfg = {"subsystems": [
        {"subsystem": "bdev", "config": [malloc("m0")]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}]
         + export(NQN, "m0", port)}]}
    return start(binary, host, d, f"{host}-target", cfg, "0x2")


def one_round(binary, perf, spdk, secs, port):
    rows = {}
    for host in ("spdk", "native"):
        d = Path(tempfile.mkdtemp(prefix=f"nvmf-bench-{host}-"))
        p, sock = node(binary, host, d, port)
        try:
            for w, qd in WORKLOADS:
                rows[(f"target: {host}", w, qd)] = spdk_perf(spdk, port, w, qd, secs)
                print(f"  target {host:6} {w:9} QD{qd:<2} {rows[(f'target: {host}', w, qd)]}",
                      flush=True)
            if host == "spdk":
                for name, f in [("initiator: spdk", lambda w, qd: spdk_perf(spdk, port, w, qd, secs)),
                                ("initiator: ours, polled", lambda w, qd: our_perf(perf, port, w, qd, secs, True)),
                                ("initiator: ours, reader threads", lambda w, qd: our_perf(perf, port, w, qd, secs, False))]:
                    for w, qd in WORKLOADS:
                        rows[(name, w, qd)] = f(w, qd)
                        print(f"  {name:32} {w:9} QD{qd:<2} {rows[(name, w, qd)]}", flush=True)
            call(sock, "spdk_get_version")  # still alive
        finally:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        port += 1
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default="target/release/replication_tgt")
    ap.add_argument("--perf", default="target/release/examples/perf")
    ap.add_argument("--spdk", default=os.environ.get("SPDK_DIR", "/opt/spdk"))
    a = ap.parse_args()
    spdk = Path(a.spdk)
    if not (spdk / "bin/spdk_nvme_perf").exists():
        sys.exit(f"no spdk_nvme_perf under {spdk}/bin: SPDK is needed for this benchmark")
    runs = []
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        runs.append(one_round(Path(a.bin).resolve(), Path(a.perf).resolve(), spdk, a.secs,
                              7300 + 10 * r))

    def med(k, i):
        xs = [x[k][i] for x in runs]
        m = statistics.median(xs)
        return m, (max(xs) - min(xs)) / m if m else 0.0

    print("\n| compared | workload | SPDK IOPS | ours IOPS | ratio | SPDK µs | ours µs | "
          "ratio | spread (ours) |")
    print("|---|---|---|---|---|---|---|---|---|")
    pairs = [("target", "target: spdk", "target: native"),
             ("initiator (polled)", "initiator: spdk", "initiator: ours, polled"),
             ("initiator (reader threads)", "initiator: spdk", "initiator: ours, reader threads")]
    for label, base, ours in pairs:
        for w, qd in WORKLOADS:
            (bi, _), (bl, _) = med((base, w, qd), 0), med((base, w, qd), 1)
            (oi, sp), (ol, _) = med((ours, w, qd), 0), med((ours, w, qd), 1)
            print(f"| {label} | {w} QD{qd} | {bi:.0f} | {oi:.0f} | {oi / bi:.2f} | {bl:.1f} | "
                  f"{ol:.1f} | {ol / bl:.2f} | {sp * 100:.0f} % |")
    print(f"\n(medians of {a.rounds} rounds; latency ratio ours/SPDK, lower is better)")


if __name__ == "__main__":
    main()
