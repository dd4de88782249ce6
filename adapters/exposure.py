"""How `berth serve` exposes metrics: the environment its workers read, and the multiprocess directory.

Kept apart from adapters/http/metrics.py on purpose: prometheus-client chooses between in-process and multiprocess
values when it is first imported, so PROMETHEUS_MULTIPROC_DIR must be set before anything imports it (importing
adapters.http does). `prepare_serving` sets it first, then imports.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
EXPOSE_ENV = "BERTH_METRICS"  # "port": /metrics on the registry's port; "listen": on a port of its own; unset: off
PUBLIC_ENV = "BERTH_METRICS_PUBLIC"


def multiproc_dir(data: str, listen: str) -> str:
    """A directory of this server's own under the temp dir (not the data dir: a read-only data directory must not
    break counting), named for the data directory and address so that two servers never share one."""
    key = hashlib.sha256(f"{os.path.abspath(data)}\0{listen}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"berth-metrics-{key}")


def prepare_serving(data: str, listen: str, *, enabled: bool, public: bool,
                    metrics_listen: tuple[str, int] | None) -> str | None:
    """In `berth serve`, before the workers fork: the environment the workers read, a wiped multiprocess directory
    (counts start at zero with every start), and the separate listener if asked for, run by this process. Returns
    what to tell the operator (None when metrics are off)."""
    if not enabled and metrics_listen is None:
        return None
    directory = multiproc_dir(data, listen)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, mode=0o700)
    os.environ[MULTIPROC_ENV] = directory
    os.environ[EXPOSE_ENV] = "listen" if metrics_listen else "port"
    if public:
        os.environ[PUBLIC_ENV] = "1"
    if metrics_listen is None:
        return (f"metrics at /metrics on the same port, "
                f"{'for every client' if public else 'for loopback clients only (--metrics-public opens it)'}")
    from prometheus_client import start_http_server

    from adapters.http.metrics import SweepingRegistry, exposition_registry
    from cas import BlobStore

    host, port = metrics_listen
    opened: list[BlobStore] = []

    def store() -> BlobStore:  # opened at the first scrape, by this process's listener thread
        if not opened:  # the store the workers open: the settings `berth serve` put in the environment
            from adapters.settings import Settings

            opened.append(Settings.load(env=os.environ).store.open_store())
        return opened[0]

    start_http_server(port, host, registry=SweepingRegistry(exposition_registry(store)))
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"metrics at http://{where}/metrics (for every client that reaches that address)"
