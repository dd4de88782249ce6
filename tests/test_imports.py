"""The layers' import rules, both ways: `cas` imports nothing of Berth; `registry_core` imports no adapter, web
framework or ASGI server; no adapter touches a file path of the store (it asks the store for a local file to send,
`local_path`, and streams otherwise)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BERTH = ("registry_core", "adapters", "benchmarks", "tests")
WEB = ("adapters", "starlette", "granian", "uvicorn", "anyio", "httpx", "prometheus_client")
# Known exceptions, each with who removes it.
STORE_PATH_EXCEPTIONS = {
    # TokenService keeps the signing key beside the store's files; helper `seam-core` moves the key into
    # registry_core (and off any path of the store).
    ("adapters/http/auth.py", "root"),
}


def modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def top(name: str) -> str:
    return name.split(".", 1)[0]


def test_cas_imports_nothing_of_berth() -> None:
    found = {(str(p.relative_to(ROOT)), name) for p in modules("cas") for name in imported(p) if top(name) in BERTH}
    assert found == set()


def test_registry_core_imports_no_adapter_framework_or_server() -> None:
    found = {(str(p.relative_to(ROOT)), name) for p in modules("registry_core") for name in imported(p)
             if top(name) in WEB}
    assert found == set()


def test_importing_the_engine_loads_none_of_it() -> None:
    """The same at run time: what importing every cas and registry_core module pulls in, transitively."""
    names = [f"{p.parent.name}.{p.stem}" for package in ("cas", "registry_core") for p in modules(package)
             if p.stem != "__init__"]
    code = (f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n"
            "print('\\n'.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert sorted({top(m) for m in loaded.stdout.split()} & set(WEB)) == []
    code = "import cas, sys\nprint('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert sorted({top(m) for m in loaded.stdout.split()} & set(BERTH)) == []


def _store_path_uses(path: Path) -> Iterator[str]:
    """Attribute chains through a store that reach its files: `<…>.store.root`, `<store>.path(…)`, `blob_path`,
    and the file-backed keeper of bytes itself."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = ast.unparse(node.value)
            if node.attr in ("root", "path", "blobs_dir") and "store" in chain.split("."):
                yield node.attr
        elif isinstance(node, ast.Name) and node.id in ("blob_path", "LocalBlobs"):
            yield node.id
        elif isinstance(node, ast.alias) and node.name.split(".")[-1] in ("blob_path", "LocalBlobs", "local_blobs"):
            yield node.name


def test_no_adapter_touches_a_file_path_of_the_store() -> None:
    found = {(str(p.relative_to(ROOT)), use) for p in modules("adapters") for use in _store_path_uses(p)}
    assert found == STORE_PATH_EXCEPTIONS
