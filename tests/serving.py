"""A real `berth serve` process on a free loopback port, for tests that speak HTTP to it (or the app served on a
thread of the test process, over a Registry the test holds: `serve_in_process`), and the `Place` its store keeps
its data in: a data directory (the embedded store) or PostgreSQL + S3 (the distributed store)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cas import BlobStore
    from registry_core.registry import Registry
    from tests.engines import Engines

ROOT = Path(__file__).resolve().parent.parent


def sha(data: bytes) -> str:
    """The sha256 digest string of `data`, as a registry names it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Place:
    """Where the store a test serves keeps its data: a data directory (the embedded store, LMDB and files: what
    `berth serve` starts with no options), or a PostgreSQL schema and an S3 prefix of its own (the distributed
    store, on the engines of tests/engines.py). Tests serve a place, then open the same store beside the server
    (`open_registry`), as the CLI does. `str(place)` is the test id: `embedded` or `distributed`."""
    directory: Path  # the embedded store's data directory; for the distributed store, only `berth serve --data`
    #                  (where the metrics of its workers would go); the server's log goes beside it
    metadata: str = ""  # postgresql://…?schema=…, "" for the embedded store
    blobs: str = ""  # s3://bucket/prefix?endpoint=…

    @classmethod
    def embedded(cls, directory: Path) -> Place:
        return cls(directory)

    @classmethod
    def distributed(cls, engines: Engines, directory: Path) -> Place:
        """A fresh database (its schema `berth`) and a fresh bucket (under a prefix, as an operator sharing one
        would): nothing another test wrote is visible here."""
        metadata = engines.postgres.create_database() + "?schema=berth"
        blobs = f"s3://{engines.s3.create_bucket()}/{uuid.uuid4().hex[:8]}?endpoint={engines.s3.endpoint}"
        return cls(directory, metadata, blobs)

    @property
    def is_distributed(self) -> bool:
        return bool(self.metadata)

    def __str__(self) -> str:
        return "distributed" if self.is_distributed else "embedded"

    def flags(self) -> tuple[str, ...]:
        """What names this store to `berth serve` and to every other berth command."""
        store = ("--metadata", self.metadata, "--blobs", self.blobs) if self.is_distributed else ()
        return ("--data", str(self.directory), *store)

    def open_store(self) -> BlobStore:
        """The same store as the server's, opened in the test's process (as a CLI command opens it)."""
        from cas import BlobStore

        if self.is_distributed:
            return BlobStore.distributed(self.metadata, self.blobs)
        return BlobStore.on_disk(self.directory)

    def open_registry(self) -> Registry:
        from registry_core.registry import Registry

        return Registry(self.open_store())


def shared_store(engines: Engines, s3_options: str = "") -> tuple[str, ...]:
    """The flags naming a fresh PostgreSQL schema (`registry`) and a fresh bucket prefix, for the nodes of a
    multi-node test to share; `s3_options` is appended to the blobs URL's query (e.g. "&read_timeout=3")."""
    metadata = engines.postgres.create_database() + "?schema=registry"
    blobs = f"s3://{engines.s3.create_bucket()}/{uuid.uuid4().hex[:8]}?endpoint={engines.s3.endpoint}{s3_options}"
    return ("--metadata", metadata, "--blobs", blobs)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    host: str  # 127.0.0.1:PORT
    place: Place
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def data(self) -> Path:
        """The data directory it was given (the embedded store's; for the distributed one, its metrics' only)."""
        return self.place.directory

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        """The log once it holds `text`: access lines are written in batches (within 0.1 s, adapters/logs.py), so
        a test reading them right after its request waits for the line it needs, and then for one more flush
        interval of every worker (the other worker's earlier lines)."""
        deadline = time.monotonic() + timeout
        while True:
            if text in self.log_text():
                time.sleep(0.3)
                return self.log_text()
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} did not appear in the server's log within {timeout} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server and its workers at once (a crash, not a shutdown)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(place: Place | Path, *extra: str, workers: int = 2, port: int | None = None,
                 policy: str = "open") -> Server:
    """`berth serve` on `place` (a path: the embedded store in that data directory), once it answers."""
    place = place if isinstance(place, Place) else Place.embedded(place)
    port = port or free_port()
    log = place.directory.parent / f"server-{port}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.cli", "serve", *place.flags(), "--listen", f"127.0.0.1:{port}",
         "--workers", str(workers), "--access-log", "--policy", policy, *extra],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    server = Server(process, f"127.0.0.1:{port}", place, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"berth serve exited with {process.returncode}:\n{server.log_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=1):
                return server
        except urllib.error.HTTPError:
            return server  # answering (401 under the project policy)
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"berth serve did not answer within 30 s:\n{server.log_text()}")


@dataclass
class InProcessServer:
    """`create_app` over a Registry of this process (e.g. on the in-memory store), served by uvicorn on a thread
    bound to a loopback port: real HTTP to the app, with the store in the test's hands."""
    host: str  # 127.0.0.1:PORT
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)


def serve_in_process(registry: Registry, *, policy: str = "open") -> InProcessServer:
    import uvicorn  # test extra only

    from adapters.http.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(registry, policy=policy), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.05)
    return InProcessServer(f"127.0.0.1:{port}", server, thread)
