"""What webhooks cost the write path: pushes with no endpoint versus two (one live, one dead), in alternating rounds.
Not a test: run it by hand, alone (never two benchmarks at once).

    .venv/bin/python -m benchmarks.webhooks [--rounds 3] [--puts 1000] [--images 40] [--batch]

Each round starts a fresh `berth serve --policy open` per set-up. "two endpoints" adds, with `berth webhook add`, a
live endpoint (a loopback HTTP/1.1 server in a process of its own answering 204) and a dead one (a loopback port
nobody listens on), so every push is delivered once and retried against the dead one. Cases are berth bench's own
(benchmarks/harness/cases.py): sequential manifest PUTs over one keep-alive connection, and images pushed by 8
parallel skopeo processes. Issue 15's budget: at most 10 % slower with the endpoints. `--batch` adds the live
endpoint with `--batch` (CloudEvents' batched mode: many events per POST instead of one).
"""

from __future__ import annotations

import argparse
import http.server
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness.cases import Context, Scale, manifest_puts, many_parallel
from benchmarks.harness.targets import start_berth
from tests.serving import ROOT, free_port


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A receiver as a production web server behaves: HTTP/1.1 with keep-alive (http.server's default, HTTP/1.0,
    makes every POST a new connection)."""

    protocol_version = "HTTP/1.1"
    received: Any = None  # a multiprocessing.Value shared with the benchmark

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.received.get_lock():
            self.received.value += len(json.loads(body)) if body.startswith(b"[") else 1
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def _receive(port: int, received: Any) -> None:
    """The live endpoint, in a process of its own: in the benchmark's process it would share the GIL with the
    client that times the pushes, and slow that client rather than the registry."""
    _Receiver.received = received
    http.server.ThreadingHTTPServer(("127.0.0.1", port), _Receiver).serve_forever()


def _webhook(data: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "adapters.cli", "webhook", "add", *args, "--data", str(data)], cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--puts", type=int, default=1000)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--batch", action="store_true", help="the live endpoint in CloudEvents' batched mode")
    args = parser.parse_args(argv)
    received = multiprocessing.Value("q", 0)
    port = free_port()
    receiver = multiprocessing.Process(target=_receive, args=(port, received), daemon=True)
    receiver.start()
    live, dead = f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{free_port()}/"
    scale = Scale(puts=args.puts, tag_lists=1, many_images=args.images)
    figures: dict[str, dict[str, list[float]]] = {"none": {}, "two endpoints": {}}
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.rounds):
            ctx = Context(scale, Path(work), round_)
            for name in figures:
                place = Path(work) / f"{name.replace(' ', '-')}-{round_}"
                place.mkdir()
                target = start_berth(place, "open")
                try:
                    if name == "two endpoints":
                        assert target.data is not None
                        _webhook(target.data, "live", live, *(["--batch"] if args.batch else []))
                        _webhook(target.data, "dead", dead)
                    os.sync()
                    measured = manifest_puts(target, ctx) | many_parallel(target, ctx)
                finally:
                    target.stop()
                for metric, value in measured.items():
                    if "tags/list" not in metric and "disk used" not in metric:
                        figures[name].setdefault(metric, []).append(value)
                print(f"round {round_ + 1} {name:13}: " + "  ".join(f"{m} {v:.2f}" for m, v in measured.items()
                                                                   if m in figures[name]), flush=True)
    receiver.terminate()
    print(f"\nlive endpoint received {received.value} events")
    print(f"{'metric':48} {'none':>10} {'two':>10} {'ratio':>7}")
    for metric in figures["none"]:
        none, two = statistics.median(figures["none"][metric]), statistics.median(figures["two endpoints"][metric])
        print(f"{metric:48} {none:10.2f} {two:10.2f} {two / none:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
