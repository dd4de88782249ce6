"""Compression at rest (issue 18), micro figures: what the compressed stored form (cas/frames.py) saves and costs, and
what the compress-or-not decision (cas/compressibility.py) costs. Not a test: run it by hand, alone (never two
benchmarks at once); it takes well under a minute.

    .venv/bin/python -m benchmarks.compression [--mib 64] [--rounds 3]

Sections, each against the issue's target where one applies:
- ratio: stored bytes / original bytes for text-like data (generated CSV rows and log lines), per level and frame
  size (target <= 0.35); and for the kinds that set KEEP_RATIO (ELF binary, float32 weights, a gzip layer).
- decision: what assess() costs on random data and on a gzip layer, beside what ingesting the same blob costs
  (sha256 + write + fsync, one thread): the issue allows incompressible uploads 5 % at most.
- ingest path: sha256 + write + fsync of text, raw vs compressed in the same pass (the ingest-time vs background
  decision).
- full read: decompressing a whole stored form (target >= 1 GiB/s), in one thread and with read-ahead threads,
  beside reading the raw file from the page cache.
- 1 MiB range from the middle: open + read of the stored form vs one pread of the raw file (target <= 2x at the
  HTTP level, where the request's own cost is added to both sides: this micro ratio is an upper bound).
"""

from __future__ import annotations

import argparse
import array
import gzip
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from cas.compressibility import assess
from cas.frames import FRAME_SIZE, FrameReader, FrameWriter

MIB = 1 << 20
KIB = 1 << 10
# (level, frame size): the default (1, 256 KiB) and its neighbours in each direction.
CONFIGURATIONS = ((1, 128 * KIB), (1, 256 * KIB), (1, MIB), (1, 4 * MIB), (3, 256 * KIB), (3, MIB), (-1, 256 * KIB))


def csv_rows(size: int, seed: int = 1) -> bytes:
    """Sensor readings as a research dataset would carry them: time, station, quantity, value, flag, sensor id."""
    rng = random.Random(seed)
    stations = [f"station_{i:03d}" for i in range(200)]
    quantities = ["temperature", "humidity", "pressure", "wind_speed"]
    rows, total, t = [b"time,station,quantity,value,quality,sensor_id\n"], 0, 1_764_000_000
    while total < size:
        t += rng.randint(1, 5)
        row = (f"{t},{rng.choice(stations)},{rng.choice(quantities)},{rng.gauss(20, 8):.3f},"
               f"{'OK' if rng.random() < 0.97 else 'SUSPECT'},{rng.randint(10000, 99999)}\n").encode()
        rows.append(row)
        total += len(row)
    return b"".join(rows)[:size]


def log_lines(size: int, seed: int = 2) -> bytes:
    """A registry's access log: a digest in a third of the lines (64 hex characters that do not repeat)."""
    rng = random.Random(seed)
    levels = ["INFO"] * 8 + ["WARNING", "ERROR"]
    paths = ["/v2/", "/v2/syn10001/app/manifests/v1", "/v2/syn10002/data/blobs/"]
    lines, total = [], 0
    while total < size:
        path = rng.choice(paths)
        if path.endswith("blobs/"):
            path += "sha256:" + rng.getrandbits(256).to_bytes(32, "big").hex()
        line = (f"2026-12-02 03:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d},{rng.randint(0, 999):03d} "
                f"{rng.choice(levels)} [worker-{rng.randint(1, 8)}] berth.http GET {path} "
                f"{rng.choice([200, 200, 200, 404, 401])} {rng.randint(0, MIB)} {rng.random() / 10:.4f}s\n").encode()
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def float_weights(count: int, seed: int = 3) -> bytes:
    rng = random.Random(seed)
    return array.array("f", (rng.gauss(0, 0.02) for _ in range(count))).tobytes()


def best_of(rounds: int, work: Callable[[], object]) -> float:
    """Seconds of the fastest round: on a shared machine the fastest is the least disturbed."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def median_of(rounds: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def stored_form(data: bytes, frame_size: int, level: int) -> tuple[bytes, float]:
    """The stored form and the seconds it took to write (best of one: compression is steady)."""
    parts: list[bytes] = []
    started = time.perf_counter()
    writer = FrameWriter(parts.append, frame_size=frame_size, level=level)
    for offset in range(0, len(data), MIB):
        writer.write(memoryview(data)[offset:offset + MIB])
    writer.finish()
    return b"".join(parts), time.perf_counter() - started


def ingest(data: bytes, directory: Path, compressed: bool) -> None:
    """What the store's ingest does in one thread: hash the original, write (raw or the stored form), fsync."""
    hasher = hashlib.sha256()
    fd = os.open(directory / "ingest", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(data)
        if compressed:
            writer = FrameWriter(lambda frame: os.write(fd, frame), hasher=hasher)
            for offset in range(0, len(data), MIB):
                writer.write(view[offset:offset + MIB])
            writer.finish()
        else:
            for offset in range(0, len(data), MIB):
                hasher.update(view[offset:offset + MIB])
                os.write(fd, view[offset:offset + MIB])
        os.fsync(fd)
    finally:
        os.close(fd)
    hasher.hexdigest()


def assess_bytes(blob: bytes) -> object:
    view = memoryview(blob)
    return assess(lambda offset, length: view[offset:offset + length], len(blob))


def read_whole(reader: FrameReader, ahead: Executor | None = None) -> int:
    return sum(map(len, reader.iter_range(ahead=ahead)))


def read_range(fd: int, offset: int) -> bytes:
    """What serving a Range request does: open the stored form (footer + index), then read the range."""
    return FrameReader(fd).read(offset, MIB)


class Table:
    def __init__(self) -> None:
        print(f"{'figure':<66} {'value':>10} {'unit':<6} target")

    def row(self, name: str, value: float, unit: str, target: str = "") -> None:
        print(f"{name:<66} {value:>10.3f} {unit:<6} {target}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="size of the text-like and random blobs (MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per throughput figure (fastest kept)")
    args = parser.parse_args(argv)
    if args.mib < 4:
        parser.error("--mib must be at least 4 (a 1 MiB range from past the middle)")
    size, rounds = args.mib * MIB, args.rounds
    started = time.perf_counter()

    half = min(8 * MIB, size // 2)
    unique = csv_rows(half) + log_lines(half)  # tiled: 16 MiB apart, far beyond any frame's window
    text = (unique * (size // len(unique) + 1))[:size]
    noise = os.urandom(size)
    table = Table()
    print(f"# {args.mib} MiB text-like (CSV + log lines) and random blobs; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")

    # -- ratio and compression speed -----------------------------------------------------------------------------
    forms: dict[tuple[int, int], bytes] = {}
    for level, frame_size in CONFIGURATIONS:
        stored, seconds = stored_form(text, frame_size, level)
        forms[level, frame_size] = stored
        label = f"level {level}, {frame_size // KIB} KiB frames"
        table.row(f"ratio, text-like, {label}", len(stored) / size, "x", "<= 0.35")
        table.row(f"compress, text-like, {label}", size / seconds / MIB, "MiB/s")
    for name, sample in (("CSV rows", unique[:half]), ("log lines", unique[half:]),
                         ("ELF binary (this python)", Path(sys.executable).resolve().read_bytes()[:16 * MIB]),
                         ("float32 weights", float_weights(256 * KIB)),
                         ("gzip layer (text, gzip -1)", gzip.compress(unique[:4 * MIB], 1))):
        stored, _ = stored_form(sample, FRAME_SIZE, 1)
        table.row(f"ratio, {name}, default", len(stored) / len(sample), "x", "keep <= 0.80")

    # -- the decision on incompressible uploads ------------------------------------------------------------------
    layer = gzip.compress(noise[:MIB], 1) + noise  # a gzip stream: recognised by its first bytes
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as work:
        directory = Path(work)
        ingest_seconds = best_of(rounds, lambda: ingest(noise, directory, compressed=False))
        table.row(f"ingest {args.mib} MiB random (sha256 + write + fsync)", ingest_seconds * 1000, "ms")
        for name, blob in (("random", noise), ("gzip layer", layer)):
            seconds = median_of(50, partial(assess_bytes, blob))
            table.row(f"assess() of {args.mib} MiB {name}", seconds * 1000, "ms")
            table.row("  as a share of its ingest", 100 * seconds / ingest_seconds, "%", "<= 5")
        _, seconds = stored_form(noise, FRAME_SIZE, 1)
        table.row("compress random anyway (a wrong decision's cost)", size / seconds / MIB, "MiB/s")

        # -- ingest-time compression vs background -----------------------------------------------------------------
        raw = best_of(rounds, lambda: ingest(text, directory, compressed=False))
        packed = best_of(rounds, lambda: ingest(text, directory, compressed=True))
        table.row("ingest text-like, raw (sha256 + write + fsync, one thread)", size / raw / MIB, "MiB/s")
        table.row("ingest text-like, compressed in the same pass (level 1)", size / packed / MIB, "MiB/s")

        # -- full read ---------------------------------------------------------------------------------------------
        raw_path = directory / "raw"
        raw_path.write_bytes(text)
        fd = os.open(raw_path, os.O_RDONLY)
        try:
            def read_raw() -> None:
                for offset in range(0, size, MIB):
                    os.pread(fd, MIB, offset)
            table.row("full read, raw file from page cache (1 MiB preads)", size / best_of(rounds, read_raw) / MIB,
                      "MiB/s")
        finally:
            os.close(fd)
        for (level, frame_size), stored in forms.items():
            reader = FrameReader(stored)
            seconds = best_of(rounds, partial(read_whole, reader))
            table.row(f"full read, level {level}, {frame_size // KIB} KiB frames, one thread", size / seconds / MIB,
                      "MiB/s", ">= 1024")
        reader = FrameReader(forms[1, FRAME_SIZE])
        for threads in (1, 2):
            with ThreadPoolExecutor(threads) as pool:
                seconds = best_of(rounds, partial(read_whole, reader, pool))
            table.row(f"full read, default, read-ahead on {threads} thread(s)", size / seconds / MIB, "MiB/s",
                      ">= 1024")

        # -- 1 MiB range from the middle -------------------------------------------------------------------------
        fd = os.open(raw_path, os.O_RDONLY)
        try:
            plain = median_of(200, lambda: os.pread(fd, MIB, size // 2))
        finally:
            os.close(fd)
        table.row("1 MiB range, raw file (pread)", plain * 1e6, "us")
        for frame_size in (128 * KIB, 256 * KIB, MIB):
            path = directory / f"stored-{frame_size}"
            path.write_bytes(forms[1, frame_size])
            fd = os.open(path, os.O_RDONLY)
            try:
                for name, offset in (("aligned", size // 2), ("unaligned", size // 2 + 12345)):
                    seconds = median_of(200, partial(read_range, fd, offset))
                    table.row(f"1 MiB range, {frame_size // KIB} KiB frames, {name} (open + read)", seconds * 1e6,
                              "us")
                    table.row("  ratio to raw", seconds / plain, "x", "<= 2 (HTTP level)")
            finally:
                os.close(fd)
    print(f"# {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
