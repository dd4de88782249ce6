"""The benchmark cases. Each runs against one target in one round and returns its figures; `run.py` alternates
targets (A B A B ...) per case and prints the medians side by side.

Every round generates fresh content (seeded by the round), so no round benefits from what an earlier one stored.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPMessage
from pathlib import Path
from typing import Any

import httpx

from .images import OCI_LAYER, OCI_MANIFEST, Layout
from .targets import Target

MiB = 1 << 20


@dataclass(frozen=True)
class Scale:
    wrk_seconds: int = 5
    connections: tuple[int, ...] = (1, 16, 64)
    raw_blob: int = 256 * MiB
    chunk: int = 8 * MiB
    range_length: int = 64 * MiB
    small_layers: int = 5
    small_layer: int = 1 * MiB
    big: int = 1024 * MiB
    platforms: int = 4
    many_images: int = 100
    many_layers: int = 3
    many_layer: int = 256 * 1024
    many_base: int = 16 * MiB
    puts: int = 1000
    tag_lists: int = 50
    parallel: int = 8


SMOKE = Scale(wrk_seconds=1, connections=(4,), raw_blob=2 * MiB, chunk=512 * 1024, range_length=256 * 1024,
              small_layers=2, small_layer=64 * 1024, big=4 * MiB, platforms=2, many_images=4, many_layers=2,
              many_layer=16 * 1024, many_base=1 * MiB, puts=20, tag_lists=5, parallel=2)


@dataclass
class Context:
    scale: Scale
    workdir: Path
    round: int
    state: dict[str, Any] = field(default_factory=dict)  # what one case leaves for a later one (per target)

    def layout(self, kind: str) -> Layout:
        """The round's image set of `kind` (small, big, index, many), generated once and shared by all targets."""
        key = f"layout:{kind}"
        if key not in self.state:
            self.state[key] = _generate(kind, self.scale, self.workdir / f"images-r{self.round}" / kind, self.round)
        layout: Layout = self.state[key]
        return layout

    def blob_file(self) -> tuple[Path, str]:
        if "blob" not in self.state:
            path = self.workdir / f"blob-r{self.round}.bin"
            hasher = hashlib.sha256()
            rng = random.Random(1000 + self.round)
            with open(path, "wb") as f:
                left = self.scale.raw_blob
                while left:
                    piece = rng.randbytes(min(left, 16 * MiB))
                    hasher.update(piece)
                    f.write(piece)
                    left -= len(piece)
            self.state["blob"] = (path, f"sha256:{hasher.hexdigest()}")
        blob: tuple[Path, str] = self.state["blob"]
        return blob


def _generate(kind: str, scale: Scale, root: Path, round_: int) -> Layout:
    layout = Layout(root)
    seed = 10_000 * (round_ + 1)
    if kind == "small":
        layers = [layout.raw_layer(seed + i, scale.small_layer) for i in range(scale.small_layers)]
        layout.tag(layout.raw_image(layers, note="small"), "small")
    elif kind == "big":
        layout.tag(layout.raw_image([layout.raw_layer(seed, scale.big)], note="big"), "big")
    elif kind == "index":
        archs = ["amd64", "arm64", "ppc64le", "s390x", "riscv64", "386"][:scale.platforms]
        children = []
        for i, arch in enumerate(archs):
            layer = layout.raw_layer(seed + i, scale.small_layer)
            children.append(layout.raw_image([layer], arch, "index") | {"platform": {"architecture": arch,
                                                                                   "os": "linux"}})
        index = layout.put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                       "manifests": children}).encode(), "application/vnd.oci.image.index.v1+json")
        layout.tag(index, "index")
    else:  # many: images sharing one base layer, each with small layers of its own
        base = layout.raw_layer(seed, scale.many_base)
        for i in range(scale.many_images):
            own = [layout.raw_layer(seed + 1 + i * scale.many_layers + j, scale.many_layer)
                   for j in range(scale.many_layers)]
            layout.tag(layout.raw_image([base, *own], note=f"many-{i}"), f"m{i}")
    return layout


# -- helpers --------------------------------------------------------------------------------------------------------
def _skopeo(target: Target, *args: str, cache: Path) -> None:
    env = dict(os.environ, _CONTAINERS_ROOTLESS_UID="1000", XDG_DATA_HOME=str(cache))  # a fresh blob-info cache
    policy = cache / "policy.json"
    if not policy.exists():
        cache.mkdir(parents=True, exist_ok=True)
        policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    command = ["skopeo", "--policy", str(policy), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)}: {result.stderr[-2000:]}")


def _creds(target: Target, flag: str) -> list[str]:
    return [flag, target.creds] if target.creds else []


def _client(target: Target, repo: str) -> httpx.Client:
    return httpx.Client(base_url=target.url, headers=target.headers(repo), timeout=600)


def _blob(http: httpx.Client, repo: str, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = http.post(f"/v2/{repo}/blobs/uploads/").raise_for_status().headers["Location"]
    http.put(_with_digest(location, digest), content=data).raise_for_status()
    return {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}


def _with_digest(location: str, digest: str) -> str:
    # Distribution's Locations carry their own query (_state=...): add to it, never replace it.
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def _manifest(config: dict[str, Any], layer: dict[str, Any], note: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config | {
        "mediaType": "application/vnd.oci.image.config.v1+json"}, "layers": [layer],
        "annotations": {"note": note}}).encode()


def _wrk(url: str, connections: int, seconds: int, headers: dict[str, str]) -> tuple[float, float, float]:
    args = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rate is None or non2xx is not None:
        raise RuntimeError(f"wrk against {url} failed:\n{out}")
    p50, p99 = (_latency(out, q) for q in ("50%", "99%"))
    return float(rate.group(1)), p50, p99


def _latency(out: str, quantile: str) -> float:
    found = re.search(rf"{quantile}\s+([\d.]+)(us|ms|s)\b", out)
    assert found is not None, out
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]


class _Connection:
    """One keep-alive connection through the standard library's http.client, for loops of small requests: httpx
    spends ~1.6 ms of CPU per request here (http.client ~0.4 ms), which on two cores is taken from the server under
    test and flattens every ratio."""

    def __init__(self, target: Target, headers: dict[str, str]) -> None:
        self._conn = HTTPConnection(target.host, timeout=600)
        self._headers = headers

    def request(self, method: str, path: str, body: bytes | memoryview | None = None, **headers: str) -> bytes:
        return self.exchange(method, path, body, **headers)[0]

    def exchange(self, method: str, path: str, body: bytes | memoryview | None = None,
                 **headers: str) -> tuple[bytes, HTTPMessage]:
        """(body, response headers); a status of 300 or more raises."""
        if "://" in path:  # an absolute Location (Distribution's): this connection's host is the same
            path = "/" + path.split("://", 1)[1].split("/", 1)[1]
        self._conn.request(method, path, body=body, headers=self._headers | headers)
        response = self._conn.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:500]!r}")
        return data, response.headers

    def close(self) -> None:
        self._conn.close()


def _curl(*args: str) -> float:
    """Seconds curl took for a transfer (failing on any HTTP error)."""
    out = subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_total}", *args],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


# -- the cases ------------------------------------------------------------------------------------------------------
Figures = dict[str, float]


def manifest_get(target: Target, ctx: Context) -> Figures:
    repo = f"{target.project}/get-r{ctx.round}"
    with _client(target, repo) as http:
        config = _blob(http, repo, b'{"architecture":"amd64","os":"linux"}')
        layer = _blob(http, repo, os.urandom(4096))
        body = _manifest(config, layer, "get")
        http.put(f"/v2/{repo}/manifests/latest", content=body,
                 headers={"Content-Type": OCI_MANIFEST}).raise_for_status()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    headers = target.headers(repo, "pull") | {"Accept": OCI_MANIFEST}
    figures: Figures = {}
    for label, ref in (("tag", "latest"), ("digest", digest)):
        for c in ctx.scale.connections:
            rate, p50, p99 = _wrk(f"{target.url}/v2/{repo}/manifests/{ref}", c, ctx.scale.wrk_seconds, headers)
            figures[f"manifest GET by {label}, c{c}: req/s"] = rate
            figures[f"manifest GET by {label}, c{c}: p50 ms"] = p50
            figures[f"manifest GET by {label}, c{c}: p99 ms"] = p99
    return figures


def upload_monolithic(target: Target, ctx: Context) -> Figures:
    path, digest = ctx.blob_file()
    repo = f"{target.project}/raw-r{ctx.round}"
    headers = target.headers(repo)
    location = httpx.post(f"{target.url}/v2/{repo}/blobs/uploads/", headers=headers).raise_for_status()
    url = location.headers["Location"]
    url = url if url.startswith("http") else target.url + url
    args = ["-X", "PUT", "-T", str(path), "-H", "Content-Type: application/octet-stream"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    seconds = _curl(*args, _with_digest(url, digest))
    ctx.state[f"blob:{target.name}"] = (repo, digest)
    return {"raw monolithic upload: MiB/s": ctx.scale.raw_blob / MiB / seconds}


def upload_chunked(target: Target, ctx: Context) -> Figures:
    path, digest = ctx.blob_file()
    repo = f"{target.project}/chunked-r{ctx.round}"
    chunk = ctx.scale.chunk
    data = memoryview(path.read_bytes())
    conn = _Connection(target, target.headers(repo))
    try:
        started = time.perf_counter()
        url = conn.exchange("POST", f"/v2/{repo}/blobs/uploads/")[1]["Location"]
        for offset in range(0, len(data), chunk):
            piece = data[offset:offset + chunk]
            url = conn.exchange("PATCH", url, piece, **{"Content-Range": f"{offset}-{offset + len(piece) - 1}",
                                                         "Content-Type": "application/octet-stream"})[1]["Location"]
        conn.request("PUT", _with_digest(url, digest))
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return {f"raw chunked upload ({chunk // MiB or chunk / MiB} MiB PATCH): MiB/s": len(data) / MiB / seconds}


def blob_get(target: Target, ctx: Context) -> Figures:
    repo, digest = ctx.state[f"blob:{target.name}"]
    headers = target.headers(repo, "pull")
    args = [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
    url = f"{target.url}/v2/{repo}/blobs/{digest}"
    full = _curl("-L", *args, url)
    ranged = _curl("-L", *args, "-H", f"Range: bytes=0-{ctx.scale.range_length - 1}", url)
    return {"raw blob GET, full: MiB/s": ctx.scale.raw_blob / MiB / full,
            "raw blob GET, Range: MiB/s": ctx.scale.range_length / MiB / ranged}


def _scratch(ctx: Context) -> Path:
    """Where pulled images land: memory (/dev/shm) when it has room, so a pull times the registry and skopeo, not
    this machine's disk writing the copy (the same for every registry, and the noisiest part)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 3 * ctx.scale.big:
        return shm
    return ctx.workdir


def skopeo_push_pull(target: Target, ctx: Context) -> Figures:
    figures: Figures = {}
    for kind in ("small", "big", "index"):
        layout = ctx.layout(kind)
        remote = f"docker://{target.host}/{target.project}/{kind}-r{ctx.round}:{kind}"
        extra = ["--all"] if kind == "index" else []
        with tempfile.TemporaryDirectory(dir=_scratch(ctx), prefix="berth-bench-") as tmp:
            started = time.perf_counter()
            _skopeo(target, "copy", *extra, "--dest-tls-verify=false", *_creds(target, "--dest-creds"),
                    f"oci:{layout.root}:{kind}", remote, cache=Path(tmp) / "push")
            figures[f"skopeo push {kind}: s"] = time.perf_counter() - started
            started = time.perf_counter()
            _skopeo(target, "copy", *extra, "--src-tls-verify=false", *_creds(target, "--src-creds"), remote,
                    f"oci:{tmp}/back:{kind}", cache=Path(tmp) / "pull")
            figures[f"skopeo pull {kind}: s"] = time.perf_counter() - started
    return figures


def manifest_puts(target: Target, ctx: Context) -> Figures:
    repo = f"{target.project}/puts-r{ctx.round}"
    with _client(target, repo) as http:
        config = _blob(http, repo, b'{"architecture":"amd64","os":"linux"}')
        layer = _blob(http, repo, os.urandom(4096))
        bodies = [_manifest(config, layer, f"{ctx.round}-{i}") for i in range(ctx.scale.puts)]
    conn = _Connection(target, target.headers(repo))
    try:
        started = time.perf_counter()
        for i, body in enumerate(bodies):
            conn.request("PUT", f"/v2/{repo}/manifests/t{i:05d}", body, **{"Content-Type": OCI_MANIFEST})
        rate = len(bodies) / (time.perf_counter() - started)
        times = []
        for _ in range(ctx.scale.tag_lists):
            started = time.perf_counter()
            listing = conn.request("GET", f"/v2/{repo}/tags/list")
            times.append((time.perf_counter() - started) * 1000)  # the round trip; the client's parse is not timed
            assert len(json.loads(listing)["tags"]) == ctx.scale.puts
    finally:
        conn.close()
    return {"sequential manifest PUTs: req/s": rate,
            f"tags/list of {ctx.scale.puts} tags: ms": statistics.median(times)}


def many_parallel(target: Target, ctx: Context) -> Figures:
    layout = ctx.layout("many")
    before = target.disk_used()
    names = [f"m{i}" for i in range(ctx.scale.many_images)]

    def push(name: str) -> None:
        with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
            _skopeo(target, "copy", "--dest-tls-verify=false", *_creds(target, "--dest-creds"),
                    f"oci:{layout.root}:{name}", f"docker://{target.host}/{target.project}/many-r{ctx.round}-{name}:v1",
                    cache=Path(tmp))

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(ctx.scale.parallel) as pool:
        list(pool.map(push, names))
    figures = {f"{len(names)} images, {ctx.scale.parallel} parallel skopeo pushes: s": time.perf_counter() - started}
    if target.data is not None:
        figures["disk used after `many` / unique bytes"] = (target.disk_used() - before) / layout.unique_bytes()
    return figures


CASES: list[tuple[str, Callable[[Target, Context], Figures]]] = [
    ("manifest GET", manifest_get), ("monolithic upload", upload_monolithic), ("chunked upload", upload_chunked),
    ("blob GET", blob_get), ("skopeo push/pull", skopeo_push_pull), ("manifest PUTs + tags/list", manifest_puts),
    ("many images in parallel", many_parallel),
]
