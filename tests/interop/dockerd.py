"""A Docker daemon of the tests' own (Debian's docker.io), so `docker login/build/push/pull` run as users run them.

Nothing of the machine's Docker is used or changed: the daemon has its own data root, exec root, socket and (empty)
config file, and every `docker` command gets its own DOCKER_CONFIG, so `docker login` never writes ~/.docker.
No container is ever started, so the daemon needs no networking: no bridge, no iptables rules, no ip_forward sysctl.
Loopback registries (127.0.0.0/8) are insecure by default in dockerd: no `insecure-registries` is set.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# dockerd answers `docker info` in ~1 s here; a loaded 2-core box (other suites, vfs) gets far more room.
_READY_SECONDS = 60.0
# A graceful stop (managed containerd, unmounting the data root) takes under a second with no container.
_STOP_SECONDS = 20.0


def tool(name: str) -> str:
    # dockerd lives in /usr/sbin, which a non-root PATH may lack (scripts/clients.sh looks there too).
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert path, f"{name} is not installed: run the suite through scripts/test, which installs docker.io from Debian"
    return path


@dataclass
class Dockerd:
    process: subprocess.Popen[bytes]
    socket: str  # unix:///tmp/.../docker.sock
    data_root: Path
    runtime: Path  # the short directory under /tmp holding the exec root, the socket and the pid file
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def env(self, config: Path) -> dict[str, str]:
        """The environment of a `docker` command talking to this daemon with the client config dir `config`.
        DOCKER_BUILDKIT=0 picks the classic builder, which every CLI has (28.x without the buildx plugin refuses
        to build otherwise)."""
        config.mkdir(parents=True, exist_ok=True)
        return dict(os.environ, DOCKER_HOST=self.socket, DOCKER_CONFIG=str(config), DOCKER_BUILDKIT="0")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # dockerd and the containerd it started
                self.process.wait()
        # dockerd bind-mounts its data root onto itself and unmounts it on a clean shutdown only.
        subprocess.run(["umount", str(self.data_root)], capture_output=True, timeout=30)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.runtime, ignore_errors=True)


def start_dockerd(base: Path) -> Dockerd:
    """Start dockerd with its data root under `base` and wait until `docker info` answers through its socket."""
    binary, client = tool("dockerd"), tool("docker")
    # Unix socket paths are capped at 108 bytes and containerd's sockets live under the exec root: keep it short.
    runtime = Path(tempfile.mkdtemp(prefix="berth-dockerd-", dir="/tmp"))
    data_root, log = base / "data-root", base / "dockerd.log"
    data_root.mkdir(parents=True)
    config = base / "daemon.json"
    config.write_text("{}\n")  # not /etc/docker/daemon.json: the machine's settings stay out of the test
    socket = f"unix://{runtime / 'docker.sock'}"
    command = [binary, "--config-file", str(config), "--data-root", str(data_root),
               "--exec-root", str(runtime / "exec"), "--pidfile", str(runtime / "dockerd.pid"), "--host", socket,
               "--storage-driver=vfs",  # no overlay mounts: works in any container, nothing to unmount
               "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
               "--userland-proxy=false"]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    daemon = Dockerd(process, socket, data_root, runtime, log)
    probe_env = daemon.env(base / "probe-config")  # the CLI reads (and may create) its config dir: not ~/.docker
    deadline = time.monotonic() + _READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            daemon.stop()
            raise RuntimeError(f"dockerd exited with {process.returncode}:\n{daemon.log_text()}")
        probe = subprocess.run([client, "info", "--format", "{{.ServerVersion}}"], env=probe_env,
                               capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return daemon
        time.sleep(0.25)
    daemon.stop()
    raise RuntimeError(f"dockerd did not answer `docker info` within {_READY_SECONDS:.0f} s:\n{daemon.log_text()}")
