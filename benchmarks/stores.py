"""Which store the engine's micro-benchmarks measure: `BERTH_BENCH_STORE=on_disk` (the default: LMDB + files) or
`in_memory` (both halves in this process), so that the same figures exist for every store behind the seam:

    BERTH_BENCH_STORE=in_memory .venv/bin/pytest benchmarks --benchmark-enable -s
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cas import BlobStore

STORE = os.environ.get("BERTH_BENCH_STORE", "on_disk")
if STORE not in ("on_disk", "in_memory"):
    raise SystemExit(f"BERTH_BENCH_STORE is on_disk or in_memory, not {STORE!r}")


def open_store(root: Path, **options: Any) -> BlobStore:
    """The store under measurement; `root` is where the one on disk keeps its files."""
    return BlobStore.in_memory(**options) if STORE == "in_memory" else BlobStore.on_disk(root, **options)
