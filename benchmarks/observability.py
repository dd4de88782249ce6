"""What metrics and access logs cost: the same server with them off and on, in alternating rounds (A B A B ...).
Not a test: run it by hand, alone (never two benchmarks at once).

    .venv/bin/python -m benchmarks.observability [--rounds 3] [--seconds 10]

"off" is `berth serve --policy open`; "metrics" adds `--metrics`, "log" `--access-log --log-format json` (the log to
a file on the data disk, as an operator would run it), "on" both. Figures per round: manifest GET by tag at 16
connections (wrk: req/s, p99) and a 256 MiB monolithic upload (MiB/s); medians over the rounds and each setup's
ratio to "off" (issue 16's budget: at most 5 % slower).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.attacks import serve
from benchmarks.harness import procfs
from benchmarks.servers import BIG, seed, upload, wrk
from tests.serving import ROOT

SETUPS = {"off": [], "metrics": ["--metrics"], "log": ["--access-log", "--log-format", "json"],
          "on": ["--metrics", "--access-log", "--log-format", "json"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args(argv)
    figures: dict[str, dict[str, list[float]]] = {name: {"req/s": [], "p99 ms": [], "server µs/GET": [],
                                                          "upload MiB/s": []} for name in SETUPS}
    blob = os.urandom(BIG)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.rounds):
            for name, extra in SETUPS.items():
                data = Path(work) / f"{name}-{round_}"
                os.sync()
                with serve(ROOT, data, "open", *extra, log=data.parent / f"{data.name}.log") as (url, pid):
                    seed(url)
                    cpu = procfs.cpu_seconds(procfs.tree(pid))
                    rate, p99 = wrk(url, args.seconds)
                    # CPU per request is steadier than req/s on a shared machine: wrk's own share varies
                    per_get = (procfs.cpu_seconds(procfs.tree(pid)) - cpu) / (rate * args.seconds) * 1e6
                    speed = upload(url, blob, digest)
                figures[name]["server µs/GET"].append(per_get)
                figures[name]["req/s"].append(rate)
                figures[name]["p99 ms"].append(p99)
                figures[name]["upload MiB/s"].append(speed)
                print(f"round {round_ + 1} {name:7}: {rate:8.0f} req/s  p99 {p99:6.2f} ms  {per_get:5.1f} µs/GET  "
                      f"upload {speed:6.0f} MiB/s",
                      flush=True)
    print(f"\n{'metric':14}" + "".join(f"{name:>10}" for name in SETUPS) + "  (ratio to off)")
    for metric in ("req/s", "p99 ms", "server µs/GET", "upload MiB/s"):
        off = statistics.median(figures["off"][metric])
        cells = [statistics.median(figures[name][metric]) for name in SETUPS]
        print(f"{metric:14}" + "".join(f"{c:10.1f}" for c in cells) + "  " +
              " ".join(f"{c / off:.2f}" for c in cells[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
