"""Real clients (skopeo, podman, docker from Debian; the oras Python SDK) against a running `berth serve`.

The test command (scripts/test) installs skopeo, podman and docker.io (dockerd) when they are missing; a missing tool
here is a failure, never a skip. Every client runs isolated from the machine's own state: its own blob-info cache
(c/image keeps one that short-cuts pushes and decides mounts), its own podman storage (vfs, under the test's
directory), no policy file of the system's, its own dockerd and docker config dir.

The `server` they talk to is tests/conftest.py's: once on the embedded store, once on the distributed one (test
ids `[embedded]`, `[distributed]`); the project-policy modules serve tests/conftest.py's `place` the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop.dockerd import Dockerd, start_dockerd

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    """A Docker daemon of the module's own (see tests/interop/dockerd.py)."""
    daemon = start_dockerd(tmp_path_factory.mktemp("dockerd"))
    yield daemon
    daemon.stop()


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run the suite through scripts/test, which installs it from Debian"
    return path


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """Environment for c/image tools with a blob-info cache of their own (the rootless path puts it under
    XDG_DATA_HOME) and a permissive trust policy."""
    (tmp_path / "xdg").mkdir()
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return dict(os.environ, _CONTAINERS_ROOTLESS_UID="1000", XDG_DATA_HOME=str(tmp_path / "xdg"),
                BERTH_POLICY=str(policy))


@pytest.fixture
def skopeo(client_env: dict[str, str]) -> Run:
    binary = _tool("skopeo")

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = env or client_env
        result = subprocess.run([binary, "--policy", environment["BERTH_POLICY"], *args], env=environment,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"skopeo {' '.join(args)} failed:\n{result.stderr}"
        return result

    return run


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[tuple[Run, str]]:
    """podman as root with vfs storage under tmp_path; also the containers-storage reference prefix for skopeo."""
    binary = _tool("podman")
    short = Path(tempfile.mkdtemp(prefix="berth-", dir="/tmp"))  # podman refuses a runroot over 50 characters
    root, runroot = tmp_path / "storage", short / "run"
    policy = tmp_path / "podman-policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    env = dict(os.environ, CONTAINERS_POLICY_JSON=str(policy))  # unused by podman 4.3; the flag below is what counts
    base = [binary, "--root", str(root), "--runroot", str(runroot), "--storage-driver", "vfs"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, f"podman {' '.join(args)} failed:\n{result.stderr}"
        return result

    yield run, f"containers-storage:[vfs@{root}+{runroot}]"
    subprocess.run([*base, "rmi", "-a", "-f"], capture_output=True, timeout=120)
    shutil.rmtree(short, ignore_errors=True)
