"""The machine's physical limits, measured in the same run as the registries: hashing, disk write + fsync, and a
loopback HTTP ceiling (nginx from Debian serving and accepting the same bytes)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import blake3

from .cases import MiB, Scale, _curl
from .targets import free_port

NGINX_CONF = """daemon off;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {dir}/www;
    location = /upload {{ client_max_body_size 0; return 204; }}
  }}
}}
"""


def measure(scale: Scale, workdir: Path) -> dict[str, float]:
    size = scale.raw_blob
    data = os.urandom(size)
    figures: dict[str, float] = {}
    for name, hasher in (("sha256", hashlib.sha256), ("blake3", blake3.blake3)):
        started = time.perf_counter()
        hasher(data).hexdigest()
        figures[f"limit: {name} hashing, one thread: MiB/s"] = size / MiB / (time.perf_counter() - started)
    path = workdir / "limit-disk.bin"
    started = time.perf_counter()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    figures["limit: disk write + fsync: MiB/s"] = size / MiB / (time.perf_counter() - started)
    path.unlink()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if Path(nginx).exists():
        figures.update(_loopback(nginx, data, workdir))
    return figures


def _loopback(nginx: str, data: bytes, workdir: Path) -> dict[str, float]:
    root = workdir / "nginx"
    (root / "www").mkdir(parents=True, exist_ok=True)
    (root / "www" / "blob").write_bytes(data)
    port = free_port()
    conf = root / "nginx.conf"
    # As root, nginx's workers would run as nobody and could not read a private temporary directory.
    conf.write_text(("user root;\n" if os.geteuid() == 0 else "") + NGINX_CONF.format(dir=root, port=port))
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(root)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                _curl(f"http://127.0.0.1:{port}/upload")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.05)
        get = _curl(f"http://127.0.0.1:{port}/blob")
        put = _curl("-X", "PUT", "-T", str(root / "www" / "blob"), f"http://127.0.0.1:{port}/upload")
    finally:
        process.terminate()
        process.wait(10)
    size = len(data) / MiB
    return {"limit: loopback HTTP GET (nginx sendfile): MiB/s": size / get,
            "limit: loopback HTTP upload (nginx reads and drops): MiB/s": size / put}
