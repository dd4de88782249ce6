"""The interop tests' images are the benchmark harness's generators (one implementation)."""

from benchmarks.harness.images import Layout, write_layout

__all__ = ["Layout", "write_layout"]
