#!/usr/bin/env python3
"""Native host vs SPDK host, the same roles over NVMe/TCP on loopback, measured by SPDK's
bdevperf (issue 8's benchmark). Stdlib only.

For each host (`replication_tgt --host spdk`, `--host native`), on core 1: a node holding a
secondary `svm0` in `running` over three mallocs (exports: its top and its ingress), then,
once those rows are measured, a primary `pvm0` in `running` (local malloc; remote leg: a
malloc of a second node of the same host, started only then, attached over loopback
NVMe/TCP), each exported over NVMe/TCP. bdevperf runs on core 0.
A plain malloc `m0` is exported too: its rows measure the NVMe/TCP transport alone.
Then one bdevperf per (role, workload) attaches to the export and runs 4 KiB random
read / random write at QD32, and a QD1 random read gives the plain malloc's latency. The
ratio native/SPDK per row is what the README reports.

The machine may be shared: `--rounds N` runs both hosts N times, alternating, and
reports each row's median (rounds of one host never overlap the other's).

Usage: benches/hosts/run.py [--secs 5] [--rounds 1] [--bin target/release/replication_tgt]
                             [--spdk /opt/spdk]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BS = 4096
BLOCKS = 16384  # 64 MiB each; the SPDK host holds them in -s 1024


def call(sock: Path, method: str, params=None, timeout=120.0):
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(json.dumps(req).encode())
        buf, dec = b"", json.JSONDecoder()
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise RuntimeError(f"{method}: connection closed")
            buf += chunk
            try:
                resp, _ = dec.raw_decode(buf.decode())
                break
            except ValueError:
                continue
    if "error" in resp:
        raise RuntimeError(f"{method} {json.dumps(params)}: {resp['error']}")
    return resp["result"]


def wait_sock(sock: Path, proc, timeout=60.0):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited during start-up ({sock})")
        if sock.exists():
            try:
                call(sock, "spdk_get_version", timeout=2)
                return
            except (OSError, RuntimeError):
                pass
        time.sleep(0.05)
    raise RuntimeError(f"{sock} did not come up")


def malloc(name):
    return {"method": "bdev_malloc_create",
            "params": {"name": name, "num_blocks": BLOCKS, "block_size": BS}}


def export(nqn, bdev, port):
    ns = {"bdev_name": bdev}
    return [
        {"method": "nvmf_create_subsystem", "params": {"nqn": nqn, "allow_any_host": True}},
        {"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn, "namespace": ns}},
        {"method": "nvmf_subsystem_add_listener", "params": {"nqn": nqn, "listen_address": {
            "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(port)}}},
    ]


def start(binary, host, d: Path, name, cfg, mask):
    (d / f"{name}.json").write_text(json.dumps(cfg))
    sock = d / f"{name}.sock"
    log = open(d / f"{name}.log", "wb")
    p = subprocess.Popen([str(binary), "--host", host, "--no-huge", "-s", "1024", "--no-pci",
                          "--disable-cpumask-locks", "-m", mask, "-r", str(sock), "--json", str(d / f"{name}.json")],
                         stdout=log, stderr=subprocess.STDOUT, cwd=d)
    wait_sock(sock, p)
    call(sock, "framework_wait_init")
    return p, sock


def bdevperf(spdk: Path, d: Path, port, nqn, workload, secs, qd=32):
    """(IOPS, average latency in µs) of one bdevperf run."""
    cfg = {"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_attach_controller", "params": {
            "name": "t", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
            "trsvcid": str(port), "subnqn": nqn}},
        {"method": "bdev_wait_for_examine"}]}]}
    f = d / "bdevperf.json"
    f.write_text(json.dumps(cfg))
    out = subprocess.run([str(spdk / "bin/bdevperf"), "--no-huge", "-s", "1024", "--no-pci",
                          "--disable-cpumask-locks", "-m", "0x1", "--json", str(f), "-q", str(qd), "-o", str(BS),
                          "-w", workload, "-t", str(secs)],
                         capture_output=True, text=True, timeout=secs + 120)
    for line in out.stdout.splitlines():
        # "   Total    :  IOPS  MiB/s  Fail/s  TO/s  Average  min  max"
        if line.strip().startswith("Total"):
            v = line.split(":")[1].split()
            return float(v[0]), float(v[4])
    raise RuntimeError(f"bdevperf gave no total:\n{out.stdout}\n{out.stderr}")


def run_host(binary, host, spdk, secs, base_port):
    d = Path(tempfile.mkdtemp(prefix=f"hosts-{host}-"))
    procs = []
    try:
        rport, ing, top, pri, plain = (base_port + i for i in range(5))
        node_cfg = {"subsystems": [
            {"subsystem": "bdev", "config": [
                malloc("b0"), malloc("h0"), malloc("a0"), malloc("l0"), malloc("m0"),
                {"method": "bdev_replication_create", "params": {
                    "name": "svm0", "mode": "secondary", "base_bdev": "b0",
                    "hidden_bdev": "h0", "active_bdev": "a0"}}]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}]
             + export("nqn.2016-06.io.spdk:svm0-ingress", "svm0_ingress", ing)
             + export("nqn.2016-06.io.spdk:svm0", "svm0", top)
             + export("nqn.2016-06.io.spdk:m0", "m0", plain)}]}
        p, sock = start(binary, host, d, "node", node_cfg, "0x2")
        procs.append(p)
        call(sock, "bdev_replication_start", {"name": "svm0", "mode": "secondary"})
        rows = {}

        def measure(role, port, nqn):
            for w in ["randread", "randwrite"]:
                rows[(role, w)] = bdevperf(spdk, d, port, nqn, w, secs)[0]
                print(f"  {host:6} {role:14} {w:9} {rows[(role, w)]:10.0f} IOPS", flush=True)

        # The node alone on core 1 first: a second SPDK process there would take half of
        # the core from the node being measured (SPDK reactors busy-poll), so the remote
        # leg only comes for the primary's rows.
        measure("secondary top", top, "nqn.2016-06.io.spdk:svm0")
        measure("ingress", ing, "nqn.2016-06.io.spdk:svm0-ingress")
        measure("plain malloc", plain, "nqn.2016-06.io.spdk:m0")
        iops, lat = bdevperf(spdk, d, plain, "nqn.2016-06.io.spdk:m0", "randread", secs, qd=1)
        rows[("plain malloc", "QD1 randread")] = iops
        rows[("plain malloc", "QD1 latency us")] = lat
        print(f"  {host:6} plain malloc   QD1 read  {iops:10.0f} IOPS {lat:7.1f} us", flush=True)
        # The primary's remote leg: a malloc of a second node of the same host, on the same
        # core (this machine has two: bdevperf has the other). Two SPDK processes
        # busy-poll that core, so the SPDK host's primary rows are pessimistic here.
        remote_cfg = {"subsystems": [
            {"subsystem": "bdev", "config": [malloc("r0")]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}]
             + export("nqn.2016-06.io.spdk:r0", "r0", rport)}]}
        p, _ = start(binary, host, d, "remote", remote_cfg, "0x2")
        procs.append(p)
        call(sock, "bdev_nvme_attach_controller", {
            "name": "rem", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
            "trsvcid": str(rport), "subnqn": "nqn.2016-06.io.spdk:r0"})
        call(sock, "bdev_replication_create", {
            "name": "pvm0", "mode": "primary", "local_bdev": "l0", "remote_bdev": "remn1"})
        for c in export("nqn.2016-06.io.spdk:pvm0", "pvm0", pri):
            call(sock, c["method"], c["params"])
        call(sock, "bdev_replication_start", {"name": "pvm0", "mode": "primary"})
        measure("primary", pri, "nqn.2016-06.io.spdk:pvm0")
        order = [("primary", "randread"), ("primary", "randwrite")]
        rows = {k: rows[k] for k in order} | {k: v for k, v in rows.items() if k not in order}
        return rows
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--bin", default="target/release/replication_tgt")
    ap.add_argument("--spdk", default=os.environ.get("SPDK_DIR", "/opt/spdk"))
    a = ap.parse_args()
    spdk = Path(a.spdk)
    if not (spdk / "bin/bdevperf").exists():
        sys.exit(f"no bdevperf under {spdk}/bin: SPDK is needed for this benchmark")
    runs = {"spdk": [], "native": []}
    for r in range(a.rounds):
        for i, h in enumerate(["spdk", "native"]):
            print(f"round {r + 1}/{a.rounds}: {h}", flush=True)
            runs[h].append(run_host(Path(a.bin).resolve(), h, spdk, a.secs, 7100 + 10 * i))
    res = {h: {k: statistics.median(x[k] for x in v) for k in v[0]} for h, v in runs.items()}
    print("\n| role | workload | SPDK host IOPS | native host IOPS | native/SPDK |")
    print("|---|---|---|---|---|")
    for k in res["spdk"]:
        s, n = res["spdk"][k], res["native"][k]
        # Latency: lower is better, so the ratio is SPDK/native like the others' sense.
        ratio = s / n if k[1].endswith("latency us") else n / s
        print(f"| {k[0]} | {k[1]} | {s:.0f} | {n:.0f} | {ratio:.2f} |")
    if a.rounds > 1:
        print(f"\n(medians of {a.rounds} rounds; per round:)")
        for k in res["spdk"]:
            print(f"  {k[0]:14} {k[1]:15} spdk {[round(x[k]) for x in runs['spdk']]}"
                  f"  native {[round(x[k]) for x in runs['native']]}")


if __name__ == "__main__":
    main()
