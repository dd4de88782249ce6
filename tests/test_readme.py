"""README.md runs as written: every fenced block, in order, as a newcomer would run it (select with `-k readme`).

Each fenced block carries a marker on the line before it, `<!-- readme: KIND -->` or `<!-- readme: KIND — why -->`:
- `serve`: its `scripts/berth serve ...` line starts in the background (from the same text), is waited for and
  stopped at the end; its `scripts/test` line is the suite that is running this very test. Any other line fails.
- `run`: the block as one bash script under `set -e`, in "the same shell" as the `run` blocks before it (the
  variables they set, such as TOKEN and PROJECT, are carried over). A `run` marker whose note mentions Ctrl-C
  ("after Ctrl-C in the server's shell") stands for the reader stopping the server: the `serve` blocks' servers are
  stopped before the block runs.
- `python`: the block as a Python script.
- `skip — why`: not run; the reason is required.
A block without a marker, or with an unknown one, fails the test: nothing new escapes it.

Everything runs in a fresh temporary directory standing in for the checkout: `scripts` links to the checkout's
scripts/, `clients` to its clients/ (the R package) and `.venv` to its virtualenv, so `scripts/berth` resolves and
reuses the installed Berth (scripts/berth finds "its checkout" through the logical path, the parent of `scripts`, and
would otherwise build a virtualenv there). Relative paths in the README (`./berth-data`, `hello/`, `./image`) land
in that directory, and nothing is written to the checkout.

The port is the README's own, 127.0.0.1:5000, never substituted: a runner rewriting the README's text would no
longer check what a reader runs. When something already listens there the test fails saying so. The one exception
is what only the reader has: their PostgreSQL database and S3 bucket. The README writes them as the URLs of such
servers on their usual ports (PLACEHOLDERS); the test puts a fresh database and bucket of its engines there
(tests/engines.py; their credentials are in the environment, where the reader's are), and fails if the README no
longer holds a placeholder.

What would make the README noisy for a reader but is needed to keep the test off the machine's own state goes into
the environment, never into the README: podman's storage (CONTAINERS_STORAGE_CONF: vfs under the temporary
directory), the registry login file (REGISTRY_AUTH_FILE), c/image's blob-info cache (XDG_DATA_HOME), and Docker's
daemon and client config (DOCKER_HOST at a dockerd of the test's own, tests/interop/dockerd.py; DOCKER_CONFIG).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engines import Engines
from tests.interop.dockerd import Dockerd, start_dockerd

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LISTEN = "127.0.0.1:5000"  # as the README prints it
KINDS = ("serve", "run", "python", "skip")

# The reader's own engines, as the README writes them (PostgreSQL's port, SeaweedFS's S3 port).
PLACEHOLDERS = ("postgresql://berth@127.0.0.1:5432/berth", "s3://berth?endpoint=http://127.0.0.1:8333")

_FENCE = re.compile(r"^(```+)(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme:\s*(?P<kind>[a-z]+)\s*(?:—\s*(?P<why>.*?))?\s*-->$")
_ASSIGNED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    kind: str
    why: str
    text: str

    def where(self) -> str:
        return f"README.md line {self.line}"


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text with their markers; a missing or malformed marker is an error."""
    lines = text.splitlines()
    found: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, language = opening.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            problems.append(f"README.md line {i + 1}: the fence is never closed")
            break
        before = lines[i - 1].strip() if i > 0 else ""
        marker = _MARKER.match(before)
        if marker is None:
            problems.append(f"README.md line {i + 1}: no `<!-- readme: KIND -->` marker on the line before the block")
        elif marker["kind"] not in KINDS:
            problems.append(f"README.md line {i + 1}: unknown marker kind {marker['kind']!r} (one of {KINDS})")
        elif marker["kind"] == "skip" and not (marker["why"] or "").strip():
            problems.append(f"README.md line {i + 1}: a skip must say why (`<!-- readme: skip — why -->`)")
        else:
            found.append(Block(i + 1, language, marker["kind"], marker["why"] or "", "\n".join(lines[i + 1:end])))
        i = end + 1
    assert not problems, "\n".join(problems)
    return found


def test_every_block_is_marked() -> None:
    """The parser's own check, alone and fast: fails on the first block someone adds without a marker."""
    assert any(block.kind == "serve" for block in blocks(README.read_text()))


def test_an_unmarked_block_fails() -> None:
    with pytest.raises(AssertionError, match="no `<!-- readme: KIND -->` marker"):
        blocks("text\n\n```sh\necho hi\n```\n")
    with pytest.raises(AssertionError, match="must say why"):
        blocks("<!-- readme: skip -->\n```sh\necho hi\n```\n")
    assert blocks("<!-- readme: skip — slow -->\n```sh\necho hi\n```\n")[0].why == "slow"


def where_data_lands(workdir: Path) -> None:
    """The one place that asserts where a relative `--data` lands: the README says the directory you run `berth`
    in. (The temporary directory is the checkout as scripts/berth sees it, so this holds whether or not
    scripts/berth keeps the caller's working directory.)"""
    assert (workdir / "berth-data").is_dir(), "`scripts/berth serve --data ./berth-data` made no ./berth-data"


def _port_is_free(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    with socket.socket() as probe:
        if probe.connect_ex((host, int(port))) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no listener
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


@dataclass
class Background:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class Reader:
    """A newcomer at a shell in `workdir`: runs the README's blocks in order, keeping the shell's variables."""

    def __init__(self, workdir: Path, env: dict[str, str], engines: dict[str, str] | None = None) -> None:
        self.workdir, self.env = workdir, env
        self.engines = engines or {}  # placeholder -> the test's own engine's URL
        self.state = workdir.parent / "shell-state.sh"  # `declare -p` of what the blocks so far assigned
        self.state.write_text("")
        self.servers: list[Background] = []

    def serve(self, block: Block) -> None:
        for line in block.text.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command:
                continue
            if command.startswith("scripts/test"):
                continue  # the suite itself, which is what is running this
            assert command.startswith("scripts/berth serve"), f"{block.where()}: unexpected line {line!r}"
            self._start(command, block)

    def _start(self, command: str, block: Block) -> None:
        words = shlex.split(command)
        listen = words[words.index("--listen") + 1] if "--listen" in words else LISTEN
        assert _port_is_free(listen), (f"{block.where()}: something already listens on {listen}; the README's "
                                       "server needs that port (stop what holds it and run again)")
        log = self.workdir.parent / "serve.log"
        with log.open("ab") as out:
            process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.workdir, env=self.env,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = Background(process, log)
        self.servers.append(server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (f"{block.where()}: `{command}` exited with {process.returncode}:\n"
                                            f"{log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"http://{listen}/v2/", timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # answering: 401 under the project policy
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"{block.where()}: `{command}` did not answer on {listen} within 60 s:\n"
                                 f"{log.read_text(errors='replace')}")

    def run(self, block: Block) -> str:
        if "Ctrl-C" in block.why:
            self.stop()
        text = block.text
        for placeholder, url in self.engines.items():
            text = text.replace(placeholder, url)
        names = sorted(set(_ASSIGNED.findall(text)))
        script = "\n".join([
            "set -e", f"source {shlex.quote(str(self.state))}", text,
            # Only after the whole block succeeded: what it assigned, for the blocks after it.
            # (`NAME=value command` sets nothing in the shell: such names are not kept.)
            *[f"! declare -p {name} >/dev/null 2>&1 || declare -p {name} >> {shlex.quote(str(self.state))}"
              for name in names]])
        return self._check(block, ["bash", "-c", script])

    def python(self, block: Block) -> str:
        return self._check(block, [sys.executable, "-c", block.text])

    def _check(self, block: Block, command: list[str]) -> str:
        result = subprocess.run(command, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (f"{block.where()} ({block.kind}) failed with {result.returncode}:\n"
                                        f"{block.text}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        return result.stdout

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def dockerd(tmp_path: Path) -> Iterator[Dockerd]:
    """The "Using Docker" block needs a daemon: one of the test's own, as tests/interop/test_docker.py uses."""
    daemon = start_dockerd(tmp_path / "dockerd")
    yield daemon
    daemon.stop()


def _environment(tmp_path: Path, runroot: Path, daemon: Dockerd) -> dict[str, str]:
    storage = tmp_path / "storage.conf"
    storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "podman"}"\nrunroot = "{runroot}"\n')
    (tmp_path / "xdg").mkdir()
    env = daemon.env(tmp_path / "docker-config")  # DOCKER_HOST, DOCKER_CONFIG (and DOCKER_BUILDKIT=0)
    del env["DOCKER_BUILDKIT"]  # the README sets it where it needs it
    env.update(CONTAINERS_STORAGE_CONF=str(storage), REGISTRY_AUTH_FILE=str(tmp_path / "auth.json"),
               XDG_DATA_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(ROOT))
    for name in ("BERTH_DATA", "BERTH_POLICY", "BERTH_PUBLIC_URL", "BERTH_FORWARDED_HEADER", "BERTH_METADATA",
                 "BERTH_BLOBS"):
        env.pop(name, None)  # the README's defaults, not the caller's
    return env


def test_readme_runs_as_written(tmp_path: Path, dockerd: Dockerd, engines: Engines) -> None:
    text = README.read_text()
    readme = blocks(text)
    assert all(placeholder in text for placeholder in PLACEHOLDERS), f"the README no longer shows {PLACEHOLDERS}"
    places = dict(zip(PLACEHOLDERS, (engines.postgres.create_database(), engines.s3.url(engines.s3.create_bucket())),
                      strict=True))
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / "scripts").symlink_to(ROOT / "scripts")
    (workdir / "clients").symlink_to(ROOT / "clients")  # the R package the README installs
    (workdir / ".venv").symlink_to(ROOT / ".venv")
    runroot = Path(tempfile.mkdtemp(prefix="berth-readme-", dir="/tmp"))  # podman wants a short runroot
    reader = Reader(workdir, _environment(tmp_path, runroot, dockerd), places)
    ran: list[str] = []
    try:
        for block in readme:
            if block.kind == "skip":
                continue
            {"serve": reader.serve, "run": reader.run, "python": reader.python}[block.kind](block)
            ran.append(block.kind)
            if block.kind == "serve":
                where_data_lands(workdir)
    finally:
        reader.stop()
        if shutil.which("podman"):  # vfs layers are plain files, but podman's own cleanup is surest
            subprocess.run(["podman", "rmi", "-a", "-f"], env=reader.env, capture_output=True, timeout=120)
        shutil.rmtree(runroot, ignore_errors=True)
    assert ran and ran[0] == "serve", "the README's first runnable block must start the server"
