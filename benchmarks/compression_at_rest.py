"""Compression at rest (issue 18), end to end through `berth serve`: the disk a data directory uses after pushing
(a) an image with uncompressed tar layers of text-like content and (b) an artifact of CSV files, before and after
`berth compact`; and what a compressed blob costs to serve — a full GET and a 1 MiB Range GET from its middle —
against the same blob served raw (measured on the same blob before the compaction, then after). Not a test: run it
by hand, alone (never two benchmarks at once).

    .venv/bin/python -m benchmarks.compression_at_rest [--mib 256] [--rounds 5]

Targets (issue 18): (a) and (b) <= 0.35 of Distribution's disk (Distribution stores what was pushed: the raw bytes
here stand in for it); full GET of a compressed text blob >= 1 GiB/s; the 1 MiB range <= 2x the raw one.
The pushes are plain HTTP (monolithic uploads, as skopeo and oras send small blobs), so that the figures are the
registry's and not a client's.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.compression import csv_rows, log_lines
from tests.serving import ROOT, Server, start_server

MIB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"  # uncompressed: some build tools push layers this way
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def text_tar(size: int, seed: int) -> bytes:
    """An uncompressed tar layer of text files (logs and CSV), `size` bytes of content, fixed mtimes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((f"var/log/berth-{seed}.log", log_lines(size // 2, seed)),
                           (f"srv/data/readings-{seed}.csv", csv_rows(size - size // 2, seed))):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def text_image(layer_sizes: list[int]) -> tuple[bytes, list[tuple[bytes, str]]]:
    """(manifest, [(blob, media type)...]) of an image whose layers are uncompressed text tars."""
    layers = [text_tar(size, seed) for seed, size in enumerate(layer_sizes)]
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [sha(layer) for layer in layers]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": OCI_TAR, "digest": sha(layer), "size": len(layer)}
                                      for layer in layers]}).encode()
    return manifest, [(config, OCI_CONFIG), *((layer, OCI_TAR) for layer in layers)]


def csv_artifact(file_sizes: list[int]) -> tuple[bytes, list[tuple[bytes, str]]]:
    """(manifest, blobs) of an OCI artifact of CSV files, shaped as `oras push` writes one."""
    files = [csv_rows(size, 100 + i) for i, size in enumerate(file_sizes)]
    empty = b"{}"
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.berth.dataset",
        "config": {"mediaType": EMPTY_CONFIG, "digest": sha(empty), "size": 2},
        "layers": [{"mediaType": "text/csv", "digest": sha(data), "size": len(data),
                    "annotations": {"org.opencontainers.image.title": f"part-{i}.csv"}}
                   for i, data in enumerate(files)]}).encode()
    return manifest, [(empty, EMPTY_CONFIG), *((data, "text/csv") for data in files)]


def push(http: httpx.Client, repo: str, tag: str, manifest: bytes, blobs: list[tuple[bytes, str]]) -> None:
    for data, _ in blobs:
        r = http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(data)}, content=data)
        r.raise_for_status()
    r = http.put(f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    r.raise_for_status()


def disk_used(data: Path) -> int:
    """Bytes the blob files take on disk (allocated blocks, as du counts them)."""
    return sum(p.stat().st_blocks * 512 for p in (data / "blobs").rglob("*") if p.is_file())


def timed(rounds: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def get_figures(http: httpx.Client, url: str, size: int, rounds: int) -> tuple[float, float]:
    """(MiB/s of a full GET, ms of a 1 MiB Range GET from the middle), medians."""
    def full() -> None:
        with http.stream("GET", url) as r:
            got = sum(len(chunk) for chunk in r.iter_raw(MIB))
        assert got == size
    span = min(MIB, size // 4)  # 1 MiB, except at smoke sizes
    middle = size // 2 - span // 2 + 12345 % span  # not frame-aligned
    headers = {"Range": f"bytes={middle}-{middle + span - 1}"}

    def ranged() -> None:
        r = http.get(url, headers=headers)
        assert r.status_code == 206 and len(r.content) == span
    full()  # warm the page cache: both sides are measured warm
    return size / MIB / timed(rounds, full), timed(rounds * 4, ranged) * 1000


def compact(data: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "adapters.cli", "compact", "--data", str(data)], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stderr.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of each set, (a) and (b) (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    size = args.mib * MIB
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as scratch:
        data = Path(scratch) / "data"
        server: Server = start_server(data)
        try:
            with httpx.Client(base_url=server.url, timeout=600) as http:
                image, image_blobs = text_image([size // 2, size // 4, size // 4])
                artifact, artifact_blobs = csv_artifact([size // 2, size // 2])
                push(http, "syn1/text-image", "v1", image, image_blobs)
                raw_a = disk_used(data)
                push(http, "syn1/csv-artifact", "v1", artifact, artifact_blobs)
                raw_ab = disk_used(data)
                biggest = image_blobs[1][0]
                url = f"/v2/syn1/text-image/blobs/{sha(biggest)}"
                raw_full, raw_range = get_figures(http, url, len(biggest), args.rounds)
                seconds, usage = compact(data)
                compacted = disk_used(data)
                stored_full, stored_range = get_figures(http, url, len(biggest), args.rounds)
                assert hashlib.sha256(http.get(url).content).hexdigest() == sha(biggest).split(":")[1]
        finally:
            server.stop()
    print(f"pushed: (a) text image {raw_a / MIB:.1f} MiB on disk raw, (b) CSV artifact "
          f"{(raw_ab - raw_a) / MIB:.1f} MiB")
    print(f"berth compact: {seconds:.1f} s ({raw_ab / MIB / seconds:.0f} MiB/s); {usage}")
    print(f"disk after compaction: {compacted / MIB:.1f} MiB of {raw_ab / MIB:.1f} MiB = {compacted / raw_ab:.3f} "
          "(target <= 0.35 of Distribution, which keeps the raw bytes)")
    print(f"full GET of a {len(biggest) / MIB:.0f} MiB text layer: raw {raw_full:.0f} MiB/s, compressed "
          f"{stored_full:.0f} MiB/s (target >= 1024)")
    print(f"1 MiB Range GET from its middle: raw {raw_range:.2f} ms, compressed {stored_range:.2f} ms = "
          f"{stored_range / raw_range:.2f}x (target <= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
