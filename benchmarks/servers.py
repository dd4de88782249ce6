"""Which ASGI server runs Berth best: the same app under granian and under uvicorn (httptools + uvloop), two workers
each, measured in alternating rounds (A B A B ...) on this machine. Not a test: run it by hand.

    .venv/bin/python -m benchmarks.servers [--rounds 3] [--seconds 5]

Figures: manifest GET by tag at 16 connections (wrk: req/s and p99), a 256 MiB monolithic upload and a 256 MiB blob
GET (MiB/s), and the server's CPU seconds per phase (so a figure that only moved because the machine was busy shows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks.harness import procfs
from tests.serving import ROOT, free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BIG = 256 << 20


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (the workers)."""
    return procfs.cpu_seconds(procfs.tree(pid))


SERVERS: dict[str, Callable[[Path, int], list[str]]] = {
    "granian": lambda data, port: [sys.executable, "-m", "adapters.cli", "serve", "--data", str(data),
                                   "--listen", f"127.0.0.1:{port}", "--workers", "2"],
    "uvicorn": lambda data, port: [sys.executable, "-m", "uvicorn", "--factory", "adapters.http:app_from_env",
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--http", "httptools",
                                   "--loop", "uvloop", "--no-access-log", "--log-level", "warning"],
}


@contextmanager
def running(kind: str, data: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = dict(os.environ, BERTH_DATA=str(data), PYTHONPATH=str(ROOT))
    process = subprocess.Popen(SERVERS[kind](data, port), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        yield url, process
    finally:
        process.terminate()
        process.wait(20)


def seed(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        config = b'{"architecture":"amd64","os":"linux"}'
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        http.post("/v2/syn1/bench/blobs/uploads/", params={"digest": digest}, content=config).raise_for_status()
        layers = []
        for i in range(5):
            data = os.urandom(1024) + bytes([i])
            d = "sha256:" + hashlib.sha256(data).hexdigest()
            http.post("/v2/syn1/bench/blobs/uploads/", params={"digest": d}, content=data).raise_for_status()
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d,
                           "size": len(data)})
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": len(config)},
            "layers": layers}).encode()
        http.put("/v2/syn1/bench/manifests/latest", content=body,
                 headers={"Content-Type": OCI_MANIFEST}).raise_for_status()


def wrk(url: str, seconds: int, connections: int = 16) -> tuple[float, float]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"{url}/v2/syn1/bench/manifests/latest"], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return rate, float(p99.group(1)) * scale


def upload(url: str, blob: bytes, digest: str) -> float:
    def chunks() -> Iterator[bytes]:
        view = memoryview(blob)
        for i in range(0, len(blob), 1 << 20):
            yield bytes(view[i:i + (1 << 20)])

    with httpx.Client(base_url=url, timeout=300) as http:
        started = time.perf_counter()
        r = http.post("/v2/syn1/bench/blobs/uploads/", params={"digest": digest}, content=chunks(),
                      headers={"Content-Length": str(len(blob))})
        elapsed = time.perf_counter() - started
        r.raise_for_status()
    return len(blob) / elapsed / 2**20


def download(url: str, digest: str) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", "/dev/null", f"{url}/v2/syn1/bench/blobs/{digest}"], check=True)
    return BIG / (time.perf_counter() - started) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[float]]] = {k: {} for k in SERVERS}
    for round_ in range(args.rounds):
        for kind in SERVERS:
            # data on the disk the registry would use (beside the checkout), not on a tmpfs
            with tempfile.TemporaryDirectory(dir=ROOT.parent) as tmp, running(kind, Path(tmp) / "data") as (url, proc):
                seed(url)
                wrk(url, 1)  # warm up
                cpu = _cpu_seconds(proc.pid)
                rate, p99 = wrk(url, args.seconds)
                get_cpu = (_cpu_seconds(proc.pid) - cpu) / (rate * args.seconds) * 1e6
                blob = os.urandom(BIG)
                digest = "sha256:" + hashlib.sha256(blob).hexdigest()
                cpu = _cpu_seconds(proc.pid)
                up = upload(url, blob, digest)
                up_cpu = (_cpu_seconds(proc.pid) - cpu) / (BIG / 2**30)
                down = download(url, digest)
            figures = {"manifest GET c16 req/s": rate, "manifest GET c16 p99 ms": p99,
                       "server CPU µs per manifest GET": get_cpu, "upload 256 MiB MiB/s": up,
                       "server CPU s per uploaded GiB": up_cpu, "blob GET 256 MiB MiB/s": down}
            for name, value in figures.items():
                results[kind].setdefault(name, []).append(value)
            print(f"round {round_ + 1} {kind}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()),
                  file=sys.stderr, flush=True)
    names = list(results["granian"])
    print(f"{'metric':<34} {'granian':>10} {'uvicorn':>10} {'ratio':>7}")
    for name in names:
        g, u = statistics.median(results["granian"][name]), statistics.median(results["uvicorn"][name])
        print(f"{name:<34} {g:>10.2f} {u:>10.2f} {g / u:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
