"""The attack loops of issue 11, against one checkout of Berth: what each costs the server and its bystanders.
Not a test: run it by hand, once per checkout, one after the other (never two benchmarks at once).

    .venv/bin/python -m benchmarks.attacks [--checkout PATH] [--json FILE]

PATH is a checkout of Berth (default: this one); its server runs from there (`python -m adapters.cli serve`), so an
older commit checked out in a git worktree is measured by the same loops. Every loop is bounded in count and time and
talks to 127.0.0.1 only.

Loops and figures:
- tokens: 300 anonymous token requests asking for 1 200 scopes each (a ~61 KiB query; granian refuses 64 KiB), each
  token then presented 3 times (an issued one is cached by the server): server memory growth (PSS, MiB).
- layer-as-manifest: 10 manifest HEADs and GETs by the digest of a 256 MiB layer: peak memory growth (RSS sampled
  every 10 ms) and ms per request.
- trickle: 200 uploads sending one byte every 2 s while a bystander HEADs a blob 5 times a second for 20 s: the
  bystander's p50/p99 latency (ms) and how many trickling sockets the server closed.
- catalog: 50 000 repositories the caller may not see; 8 clients page the catalog for 10 s: ms per request (p50).
- manifest GET by tag, 16 connections (wrk, 10 s): req/s and p99 (the hot path must not regress).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import procfs
from benchmarks.harness.targets import _wait as wait_until_answering
from benchmarks.servers import seed, wrk
from tests.serving import ROOT, free_port

MiB = 1 << 20


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextmanager
def serve(checkout: Path, data: Path, policy: str, *extra: str, log: Path | None = None) -> Iterator[tuple[str, int]]:
    """`berth serve` of `checkout` on a free loopback port, two workers: (its URL, its pid). Its output goes to `log`
    (a file, as an operator runs it: the access log's cost includes its writes) or nowhere."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--data", str(data), "--listen",
                                f"127.0.0.1:{port}", "--workers", "2", "--policy", policy, *extra], cwd=checkout,
                               env=env, stdout=out, stderr=out, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url, process, None)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        if not isinstance(out, int):  # a file of ours, not DEVNULL
            out.close()


def pss_mib(pid: int) -> float:
    return procfs.proportional(procfs.tree(pid)) / MiB


def project_store(checkout: Path, data: Path, repos: int = 0) -> tuple[str, str]:
    """A project-policy data directory with a project (and `repos` repositories in it nobody else may see) and a
    second user's token; returns (project id, that token). Runs in the checkout's own code."""
    script = f"""
import json, sys
from registry_core.registry import Registry
from registry_core.accounts import Accounts
from registry_core.projects import Projects
from registry_core.names import RepositoryName
with Registry.open({str(data)!r}) as registry:
    accounts, projects = Accounts(registry.store), Projects(registry.store)
    accounts.add_user("owner", certified=True)
    accounts.add_user("alice", certified=True)
    project = projects.create("attacks", "owner").id
    secret = accounts.create_token("alice", ["view", "download", "modify"])[1]
    def work(txn):
        for i in range({repos}):
            registry._ensure_repo(txn, RepositoryName.parse(f"{{project}}/hidden{{i:06d}}"))
    registry.store.index.transact(work)
    print(json.dumps([project, secret]))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=checkout, env=dict(os.environ, PYTHONPATH=str(checkout)),
                         capture_output=True, text=True, check=True).stdout
    project, secret = json.loads(out)
    return str(project), str(secret)


def _get(url: str, target: str) -> tuple[int, bytes]:
    """A GET with a query longer than httpx allows (http.client sends what it is given)."""
    host, port = url.rsplit("/", 1)[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def tokens(checkout: Path, work: Path) -> dict[str, Any]:
    data = work / "tokens"
    project, _ = project_store(checkout, data)
    scopes = [f"repository:{project}/r{i:05d}:pull,push,delete" for i in range(1200)]  # a query of ~61 KiB
    with serve(checkout, data, "project") as (url, pid), httpx.Client(base_url=url, timeout=60) as http:
        time.sleep(1)
        before = pss_mib(pid)
        started = time.monotonic()
        statuses: dict[int, int] = {}
        for _ in range(300):
            status, answer = _get(url, "/token?service=berth&" + "&".join(f"scope={s}" for s in scopes))
            statuses[status] = statuses.get(status, 0) + 1
            token = json.loads(answer).get("token") if status == 200 else "x" * (64 << 10)
            for _ in range(3):
                http.get("/v2/", headers={"Authorization": f"Bearer {token}"})
            if time.monotonic() - started > 120:
                break
        return {"pss_growth_mib": round(pss_mib(pid) - before, 1), "token_answers": statuses,
                "seconds": round(time.monotonic() - started, 1)}


def layer_as_manifest(checkout: Path, work: Path) -> dict[str, Any]:
    with serve(checkout, work / "layer", "open") as (url, pid), httpx.Client(base_url=url, timeout=120) as http:
        layer = os.urandom(256 * MiB)
        digest = sha(layer)
        http.post("/v2/syn1/big/blobs/uploads/", params={"digest": digest}, content=layer).raise_for_status()
        del layer
        time.sleep(1)
        before, times, statuses = procfs.resident(procfs.tree(pid)) / MiB, [], set()
        peak, done = [before], threading.Event()

        def sample() -> None:  # RSS from statm: cheap enough to poll every 10 ms without disturbing the server
            while not done.wait(0.01):
                peak[0] = max(peak[0], procfs.resident(procfs.tree(pid)) / MiB)

        sampler = threading.Thread(target=sample)
        sampler.start()
        for method in ("HEAD", "GET") * 5:
            started = time.perf_counter()
            r = http.request(method, f"/v2/syn1/big/manifests/{digest}")
            times.append((time.perf_counter() - started) * 1000)
            statuses.add(r.status_code)
        done.set()
        sampler.join()
        return {"peak_rss_growth_mib": round(peak[0] - before, 1), "ms_median": round(statistics.median(times), 1),
                "statuses": sorted(statuses)}


def trickle(checkout: Path, work: Path) -> dict[str, Any]:
    with serve(checkout, work / "trickle", "open") as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        host, port = url.rsplit("/", 1)[1].split(":")
        blob = os.urandom(1000)
        http.post("/v2/syn1/by/blobs/uploads/", params={"digest": sha(blob)}, content=blob).raise_for_status()
        sockets: list[socket.socket] = []
        for i in range(200):
            s = socket.create_connection((host, int(port)))
            s.sendall(f"POST /v2/syn1/t{i}/blobs/uploads/?digest={sha(b'never')} HTTP/1.1\r\nHost: {host}\r\n"
                      f"Content-Length: 1000000\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
            sockets.append(s)
        stop = threading.Event()
        closed = [0]

        def drip() -> None:
            while not stop.wait(2.0):
                for s in sockets:
                    try:
                        s.sendall(b"x")
                    except OSError:
                        closed[0] += 1
                        sockets.remove(s)

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        latencies = []
        ended = time.monotonic() + 20
        while time.monotonic() < ended:
            started = time.perf_counter()
            try:
                http.head(f"/v2/syn1/by/blobs/{sha(blob)}", timeout=15)
                latencies.append((time.perf_counter() - started) * 1000)
            except httpx.HTTPError:
                latencies.append(15_000.0)
            time.sleep(0.2)
        stop.set()
        dripper.join()
        for s in sockets:
            s.close()
        latencies.sort()
        return {"bystander_p50_ms": round(statistics.median(latencies), 1),
                "bystander_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
                "sockets_closed_by_server": closed[0]}


def catalog(checkout: Path, work: Path) -> dict[str, Any]:
    data = work / "catalog"
    _, secret = project_store(checkout, data, repos=50_000)
    with serve(checkout, data, "project") as (url, _):
        token = httpx.get(f"{url}/token", params={"service": "berth", "scope": "registry:catalog:*"},
                          auth=("alice", secret)).json()["token"]
        times: list[float] = []
        ended = time.monotonic() + 10

        def client() -> None:
            with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
                while time.monotonic() < ended:
                    started = time.perf_counter()
                    http.get("/v2/_catalog", params={"n": 100})
                    times.append((time.perf_counter() - started) * 1000)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"ms_median": round(statistics.median(times), 1), "requests": len(times)}


def manifest_get(checkout: Path, work: Path) -> dict[str, Any]:
    with serve(checkout, work / "hot", "open") as (url, _):
        seed(url)
        rate, p99 = wrk(url, 10)
        return {"req_per_s": round(rate), "p99_ms": round(p99, 2)}


LOOPS = {"tokens": tokens, "layer-as-manifest": layer_as_manifest, "trickle": trickle, "catalog": catalog,
         "manifest-get-c16": manifest_get}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", nargs="*", choices=sorted(LOOPS))
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"checkout": str(args.checkout)}
    with tempfile.TemporaryDirectory() as work:
        for name, loop in LOOPS.items():
            if args.only and name not in args.only:
                continue
            os.sync()
            report[name] = loop(args.checkout.resolve(), Path(work))
            print(f"{name:20} {json.dumps(report[name])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
