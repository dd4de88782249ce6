"""Server time of the portal's pages (issue 13, "Speed"): the repository page and its JSON twin with many tags (the
first page and one from the middle, by name and by push time) and the tag page of a 4-platform index with its JSON
twin; beside them the registry protocol's manifest GET by tag, on this tree and on another one (`--baseline`, by
default /work/main) in the same run, so that a regression shows. Not a test: run it by hand.

    .venv/bin/python -m benchmarks.portal [--tags 10000] [--rounds 200] [--baseline /work/main]

Server time is what the server's own access log says a request took (adapters/http/accesslog.py: from the request
reaching the app to its last byte handed to the server, `duration_ms` in the JSON log), so the client's and the
loopback's time are left out. Each server runs one worker; requests go one at a time, alternating between the
figures (and between the two servers for the manifest GET), so a busy moment of the machine touches them all alike.

"just after a push to it" and "just after a manifest deletion" are the repository page right after such a change:
a process remembers a repository's tag count and size and brings them up to date over the events since
(registry_core/listings.py); a push is applied, a manifest's deletion has them counted again (the worst case).

The tags are written in process through the Registry API before the server starts (thousands of HTTP pushes would
take minutes): each tag names its own manifest (they differ by an annotation), all sharing one config and one layer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from cas import Digest
from registry_core.names import RepositoryName, parse_reference
from registry_core.registry import Registry
from tests.serving import ROOT, free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANY = "bench/many"  # the repository with many tags
MULTI = "bench/multi"  # the repository with a 4-platform index, tag "release"
SMALL = "bench/small"  # the manifest GET's repository (one tag), pushed over HTTP to both servers alike
PLATFORMS = (("linux", "amd64", None), ("linux", "arm64", "v8"), ("linux", "arm", "v7"), ("linux", "s390x", None))
TARGET_MS = 20.0


def _tag(i: int) -> str:
    return f"v{i:06d}"


def _blob(registry: Registry, repo: RepositoryName, data: bytes, media_type: str) -> dict[str, Any]:
    info = registry.ingest_blob(repo, data, Digest.of(data))
    return {"mediaType": media_type, "digest": str(info.digest), "size": info.size}


def _manifest(config: dict[str, Any], layer: dict[str, Any], **annotations: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer],
                       "annotations": annotations}).encode()


def build(data: Path, tags: int) -> None:
    """The data directory: MANY with `tags` tags, MULTI with its index. Written in process, before any server."""
    with Registry.open(data) as registry:
        many = RepositoryName.parse(MANY)
        config = _blob(registry, many, json.dumps({"architecture": "amd64", "os": "linux"}).encode(), OCI_CONFIG)
        layer = _blob(registry, many, os.urandom(4096), OCI_LAYER)
        for i in range(tags):
            registry.put_manifest(many, parse_reference(_tag(i)), _manifest(config, layer, n=str(i)), OCI_MANIFEST)
        multi = RepositoryName.parse(MULTI)
        entries = []
        for os_name, arch, variant in PLATFORMS:
            platform = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
            cfg = _blob(registry, multi, json.dumps(platform | {"rootfs": {"type": "layers"}}).encode(), OCI_CONFIG)
            lay = _blob(registry, multi, os.urandom(4096), OCI_LAYER)
            body = _manifest(cfg, lay, platform=f"{os_name}/{arch}")
            digest = Digest.of(body)
            registry.put_manifest(multi, digest, body, OCI_MANIFEST)
            entries.append({"mediaType": OCI_MANIFEST, "digest": str(digest), "size": len(body),
                            "platform": platform})
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
        registry.put_manifest(multi, parse_reference("release"), index, OCI_INDEX)


@dataclass
class Server:
    """A `berth serve` of a source tree, one worker, its JSON access log in a file."""
    label: str
    root: Path
    data: Path
    log: Path
    url: str = ""
    process: subprocess.Popen[bytes] | None = None
    _read: int = 0  # how much of the log has been taken
    _file: IO[bytes] | None = field(default=None, repr=False)

    def lines(self) -> list[dict[str, Any]]:
        """The access lines written since the last call (the log is written in batches: waits for them)."""
        time.sleep(0.3)  # adapters/logs.py flushes at most 0.1 s after a request
        with self.log.open("rb") as f:
            f.seek(self._read)
            text = f.read()
        cut = text.rfind(b"\n") + 1
        self._read += cut
        found = []
        for raw in text[:cut].splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and line.get("kind") == "access":
                found.append(line)
        return found


@contextmanager
def serving(label: str, root: Path, data: Path, scratch: Path) -> Iterator[Server]:
    port = free_port()
    server = Server(label, root, data, scratch / f"{label}.log", url=f"http://127.0.0.1:{port}")
    env = dict(os.environ, PYTHONPATH=str(root))
    with server.log.open("wb") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "adapters.cli", "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}",
             "--workers", "1", "--policy", "open", "--access-log", "--log-format", "json"],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        for _ in range(300):
            if server.process.poll() is not None:
                raise SystemExit(f"{label}: the server exited: {server.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{server.url}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"{label}: no server at {server.url}")
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()


def push_small(client: httpx.Client, url: str) -> None:
    """One small image in SMALL, over HTTP (the same on both servers, whatever their code's layout on disk)."""
    blobs = []
    for content, media_type in ((b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG),
                                (b"layer" * 1000, OCI_LAYER)):
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        r = client.post(f"{url}/v2/{SMALL}/blobs/uploads/?digest={digest}", content=content,
                        headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()
        blobs.append({"mediaType": media_type, "digest": digest, "size": len(content)})
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": blobs[0],
                       "layers": blobs[1:]}).encode()
    client.put(f"{url}/v2/{SMALL}/manifests/latest", content=body,
               headers={"Content-Type": OCI_MANIFEST}).raise_for_status()


@dataclass(frozen=True)
class Probe:
    figure: str
    path: str  # with its query string
    headers: tuple[tuple[str, str], ...] = ()
    after: str | None = None  # "push": a tag pushed to MANY just before; "delete": a manifest of it deleted


def probes(tags: int) -> list[Probe]:
    """The portal's requests. The middle page's markers: the tag halfway by name, and halfway by push time (tags
    were pushed in name order, so the time marker of the middle page is the first one's `next` walked there: asked
    of the server once, see `time_marker`)."""
    middle = _tag(tags // 2)
    html = (("Accept", "text/html"),)
    return [
        Probe("repository page, first page, by name", f"/repositories/{MANY}", html),
        Probe("repository page, middle page, by name", f"/repositories/{MANY}?last={middle}", html),
        Probe("repository page, first page, by push time", f"/repositories/{MANY}?sort=time", html),
        Probe("repository page, middle page, by push time", f"/repositories/{MANY}?sort=time&last={middle}", html),
        Probe("repository page, first page, just after a push to it", f"/repositories/{MANY}", html, "push"),
        Probe("repository page, first page, just after a manifest deletion", f"/repositories/{MANY}", html,
              "delete"),
        Probe("JSON tags, first page, by name", f"/api/v1/repositories/{MANY}/-/tags"),
        Probe("JSON tags, middle page, by name", f"/api/v1/repositories/{MANY}/-/tags?last={middle}"),
        Probe("JSON tags, first page, by push time", f"/api/v1/repositories/{MANY}/-/tags?sort=time"),
        Probe("JSON tags, middle page, by push time", f"/api/v1/repositories/{MANY}/-/tags?sort=time&last={middle}"),
        Probe("tag page, 4-platform index", f"/repositories/{MULTI}/-/tags/release", html),
        Probe(f"tag page, a tag of {MANY}", f"/repositories/{MANY}/-/tags/{middle}", html),
        Probe("JSON tag, 4-platform index", f"/api/v1/repositories/{MULTI}/-/tags/release"),
        Probe(f"manifest GET by tag, {MANY}", f"/v2/{MANY}/manifests/{middle}", (("Accept", OCI_MANIFEST),)),
    ]


MANIFEST_GET = Probe("manifest GET by tag (one-tag repository)", f"/v2/{SMALL}/manifests/latest",
                     (("Accept", OCI_MANIFEST),))


def change(client: httpx.Client, url: str, what: str, body: bytes, i: int) -> list[tuple[None, str]]:
    """A change of MANY before a view: "push", an existing manifest under a new tag; "delete", a new manifest
    pushed by digest and deleted. Returns the access-log paths of its requests (none measured)."""
    if what == "push":
        path = f"/v2/{MANY}/manifests/pushed-{i}"
        client.put(url + path, content=body, headers={"Content-Type": OCI_MANIFEST}).raise_for_status()
        return [(None, path)]
    manifest = json.loads(body)
    fresh = json.dumps(manifest | {"annotations": {"deleted": str(i)}}).encode()
    path = f"/v2/{MANY}/manifests/sha256:{hashlib.sha256(fresh).hexdigest()}"
    client.put(url + path, content=fresh, headers={"Content-Type": OCI_MANIFEST}).raise_for_status()
    client.delete(url + path).raise_for_status()
    return [(None, path), (None, path)]


def measure(servers: list[tuple[Server, list[Probe]]], rounds: int, client: httpx.Client) -> dict[str, list[float]]:
    """`rounds` rounds of every probe of every server, one request at a time; server milliseconds per figure."""
    pushed = {server.label: client.get(f"{server.url}/v2/{MANY}/manifests/{_tag(0)}",
                                       headers={"Accept": OCI_MANIFEST}).content
              for server, wanted in servers if any(p.after for p in wanted)}
    for server, _ in servers:
        server.lines()  # what came before (the start, the pushes) is not measured
    samples: dict[str, list[float]] = {}
    sent: dict[str, list[tuple[str | None, str]]] = {server.label: [] for server, _ in servers}
    for i in range(rounds):
        order = servers if i % 2 == 0 else servers[::-1]
        for server, wanted in order:
            for probe in wanted:
                if probe.after is not None:  # not measured: the change before the view
                    sent[server.label] += change(client, server.url, probe.after, pushed[server.label], i)
                r = client.get(server.url + probe.path, headers=dict(probe.headers))
                if r.status_code != 200:
                    raise SystemExit(f"{server.label} {probe.path}: {r.status_code} {r.text[:300]}")
                sent[server.label].append((probe.figure, probe.path.partition("?")[0]))
    for server, _ in servers:
        lines = server.lines()
        expected = sent[server.label]
        if len(lines) != len(expected):
            raise SystemExit(f"{server.label}: {len(expected)} requests sent, {len(lines)} access lines read")
        for (figure, path), line in zip(expected, lines, strict=True):
            if line["path"] != path:
                raise SystemExit(f"{server.label}: the access log's line for {path} names {line['path']}")
            if figure is not None:
                samples.setdefault(f"{figure} [{server.label}]", []).append(float(line["duration_ms"]))
    return samples


def report(samples: dict[str, list[float]]) -> Iterator[str]:
    yield f"{'figure (server time, ms)':<72} {'median':>8} {'p90':>8} {'n':>5}  target {TARGET_MS:g} ms"
    for figure, values in samples.items():
        ordered = sorted(values)
        median = statistics.median(ordered)
        p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
        verdict = "ok" if median <= TARGET_MS else "MISSED"
        yield f"{figure:<72} {median:>8.2f} {p90:>8.2f} {len(ordered):>5}  {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tags", type=int, default=10_000, help="tags of the big repository (default 10000)")
    parser.add_argument("--rounds", type=int, default=200, help="requests per figure (default 200)")
    parser.add_argument("--baseline", type=Path, default=Path("/work/main"),
                        help="the source tree whose manifest GET is compared (default /work/main); 'none': no "
                             "comparison")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="berth-portal-bench-"))
    baseline = None if str(args.baseline) == "none" else args.baseline.resolve()
    try:
        started = time.perf_counter()
        build(scratch / "this", args.tags)
        print(f"{args.tags} tags written in process in {time.perf_counter() - started:.1f} s", flush=True)
        with httpx.Client(timeout=60) as client, serving("this", ROOT, scratch / "this", scratch) as this:
            plan = [(this, [*probes(args.tags), MANIFEST_GET])]
            push_small(client, this.url)
            if baseline is not None and baseline != ROOT.resolve():
                with serving("baseline", baseline, scratch / "baseline", scratch) as other:
                    push_small(client, other.url)
                    plan.append((other, [MANIFEST_GET]))
                    samples = measure(plan, args.rounds, client)
            else:
                samples = measure(plan, args.rounds, client)
        print(f"this tree: {ROOT}; baseline: {baseline or 'none'}; {args.rounds} requests per figure, one worker "
              "each, one request at a time")
        for line in report(samples):
            print(line)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
