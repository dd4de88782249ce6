"""The client needs none of the server: importing it loads httpx and the standard library only."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.serving import ROOT

# Not zstandard: httpx itself imports it when installed, to decode `Content-Encoding: zstd`.
SERVER = ("cas", "registry_core", "adapters", "starlette", "lmdb", "granian", "blake3", "jwt", "prometheus_client",
          "benchmarks")


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    script = ("import sys, json; sys.path.insert(0, sys.argv[1]); import berth_client, berth_client.cli; "
              "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-I", "-c", script, str(ROOT)], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = set(json.loads(done.stdout))
    assert "httpx" in loaded and "berth_client" in loaded
    assert loaded.isdisjoint(SERVER), sorted(loaded & set(SERVER))
