"""The registries a benchmark run measures: Berth (started here, open or project policy), CNCF Distribution
(Debian's docker-registry, started here), or any registry at a URL. Each knows how to authenticate a client and,
when it was started here, the process tree whose CPU time and memory are read from /proc."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import procfs

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    for _ in range(300):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited:\n{log.read_text() if log else ''}")
        try:
            urllib.request.urlopen(f"{url}/v2/", timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within 30 s")


@dataclass
class Target:
    name: str
    url: str
    project: str = "syn10001"  # every repository a run creates lives under this project
    user: str | None = None
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None
    data: Path | None = None
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    @property
    def creds(self) -> str | None:
        return f"{self.user}:{self.password}" if self.user else None

    def headers(self, repo: str, actions: str = "pull,push,delete") -> dict[str, str]:
        """Authorization for `repo`: a Docker token (fetched when the registry challenges) or nothing."""
        if not self.user:
            return {}
        cached = self._tokens.get(f"{repo}:{actions}")
        if cached and cached[1] > time.time() + 30:
            return {"Authorization": f"Bearer {cached[0]}"}
        challenge = httpx.get(f"{self.url}/v2/").headers.get("www-authenticate", "")
        if challenge.lower().startswith("basic"):
            raw = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        params = dict(p.split("=", 1) for p in challenge[len("Bearer "):].replace('"', "").split(","))
        r = httpx.get(params["realm"], params={"service": params.get("service", ""),
                                                "scope": f"repository:{repo}:{actions}"},
                      auth=(self.user, self.password or ""))
        r.raise_for_status()
        token = r.json().get("token") or r.json()["access_token"]
        self._tokens[f"{repo}:{actions}"] = (token, time.time() + int(r.json().get("expires_in", 60)))
        return {"Authorization": f"Bearer {token}"}

    def pids(self) -> list[int]:
        return procfs.tree(self.process.pid) if self.process is not None else []

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.pids())

    def peak_rss(self) -> int:
        """The sum of the processes' peak resident sets (VmHWM), in bytes."""
        return procfs.peak_resident(self.pids())

    def disk_used(self) -> int:
        if self.data is None:
            return 0
        out = subprocess.run(["du", "-s", "--block-size=1", str(self.data)], capture_output=True, text=True)
        return int(out.stdout.split()[0]) if out.returncode == 0 else 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class MemoryWatch:
    """The peak PSS of a target's processes while a block runs.

    RSS comes from /proc/PID/statm (counters) every `interval` seconds. PSS needs /proc/PID/smaps_rollup, which walks
    the process's page tables under its mmap lock (~1 ms here) and, read 20 times a second, raised the server's p99
    latency at one connection from 0.4 to 4.5 ms. So PSS is read only when the RSS sum has reached a new high, at
    most every `pss_interval` seconds (a high reached meanwhile is read as soon as that has passed)."""

    def __init__(self, target: Target, interval: float = 0.1, pss_interval: float = 0.5) -> None:
        self._target, self._interval, self._pss_interval = target, interval, pss_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
        self.peak_pss = 0

    def _run(self) -> None:
        high, pending, last_pss = 0, True, -self._pss_interval
        while True:
            pids = self._target.pids()
            rss = procfs.resident(pids)
            if rss > high:
                high, pending = rss, True
            now = time.monotonic()
            if pending and now - last_pss >= self._pss_interval:
                self.peak_pss = max(self.peak_pss, procfs.proportional(pids))
                pending, last_pss = False, now
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def start_berth(workdir: Path, policy: str, name: str | None = None, store: tuple[str, ...] = (),
                env: dict[str, str] | None = None) -> Target:
    """`berth serve` with the default number of workers, on a data directory of its own, or on the distributed store
    that `store` names (--metadata URL --blobs URL, with the S3 credentials in `env`)."""
    name = name or f"berth-{policy}"
    data = workdir / name
    port = free_port()
    user = password = None
    project = "syn10001"
    if policy == "project":
        from registry_core.accounts import Accounts
        from registry_core.projects import Projects
        from registry_core.registry import Registry
        with Registry.open(data) as registry:
            accounts = Accounts(registry.store)
            accounts.add_user("bench", certified=True)
            password = accounts.create_token("bench", ["view", "download", "modify"], label="bench")[1]
            project = Projects(registry.store).create("bench", "bench").id
            user = "bench"
    log = workdir / f"{name}.log"
    process = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--data", str(data), "--listen",
                                f"127.0.0.1:{port}", "--policy", policy, *store], cwd=ROOT, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
    # On the distributed store the data directory holds no registry data: no disk figure for it.
    target = Target(name, f"http://127.0.0.1:{port}", project, user, password, process, None if store else data)
    _wait(target.url, process, log)
    return target


DISTRIBUTION_CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
{storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"""

FILESYSTEM = """  filesystem:
    rootdirectory: {data}"""

# Distribution's `s3` driver on an S3-compatible server: path-style requests over plain HTTP to the endpoint.
# (2.8.2 ignores `forcepathstyle` and uses path style whenever `regionendpoint` is set; 3.x reads the key: it is
# written for either.) Blob GETs would answer 307 to a presigned URL (its default `redirect`); no case here GETs one.
S3 = """  s3:
    accesskey: {access_key}
    secretkey: {secret_key}
    region: us-east-1
    regionendpoint: {endpoint}
    forcepathstyle: true
    secure: false
    v4auth: true
    bucket: {bucket}
    rootdirectory: /distribution"""


def start_distribution(workdir: Path, s3: dict[str, str] | None = None) -> Target:
    """Distribution on a directory of its own, or (with `s3`: endpoint, bucket, access_key, secret_key) on a
    bucket of an S3 server."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry (CNCF Distribution) is not installed: apt-get install docker-registry")
    name = "distribution-s3" if s3 else "distribution"
    data = workdir / name
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / f"{name}.yml"
    storage = S3.format(**s3) if s3 else FILESYSTEM.format(data=data)
    config.write_text(DISTRIBUTION_CONFIG.format(storage=storage, port=port))
    log = workdir / f"{name}.log"
    # Without AWS_CA_BUNDLE: aws-sdk-go (v1) cannot apply a CA bundle to the HTTP transport Distribution gives it and
    # panics at start ("unable to load custom CA bundle"); the S3 server here is plain HTTP on loopback anyway.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               env=env)
    target = Target(name, f"http://127.0.0.1:{port}", process=process, data=None if s3 else data)
    _wait(target.url, process, log)
    return target
