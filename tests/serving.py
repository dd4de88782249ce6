"""A real `berth serve` process on a free loopback port, for tests that speak HTTP to it (or the app served on a
thread of the test process, over a Registry the test holds: `serve_in_process`)."""

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry_core.registry import Registry

ROOT = Path(__file__).resolve().parent.parent


def sha(data: bytes) -> str:
    """The sha256 digest string of `data`, as a registry names it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    host: str  # 127.0.0.1:PORT
    data: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

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


def start_server(data: Path, *extra: str, workers: int = 2, port: int | None = None, policy: str = "open") -> Server:
    port = port or free_port()
    log = data.parent / f"server-{port}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.cli", "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}",
         "--workers", str(workers), "--access-log", "--policy", policy, *extra],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    server = Server(process, f"127.0.0.1:{port}", data, log)
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
