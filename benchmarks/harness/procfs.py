"""What /proc says about a server's processes: the process and its direct children (the workers), their CPU time
and their memory. Every figure is summed over the processes given; a process that has gone is skipped."""

from __future__ import annotations

import os
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree(pid: int) -> list[int]:
    """The process and its direct children (a server's workers)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes, summed."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)
    return total


def _read(pid: int, name: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None


def resident(pids: list[int]) -> int:
    """RSS now, in bytes, from statm: counters, so reading it costs the processes nothing."""
    return sum(int(text.split()[1]) * PAGE for pid in pids if (text := _read(pid, "statm")) is not None)


def proportional(pids: list[int]) -> int:
    """PSS now, in bytes: each shared page split between the processes that map it, so the forked workers of one
    server do not count their shared pages once each (RSS sums do). smaps_rollup walks the page tables under the
    process's mmap lock (~1 ms): read it sparingly."""
    return _kib_field(pids, "smaps_rollup", "Pss:")


def peak_resident(pids: list[int]) -> int:
    """The kernel's RSS high-water mark (VmHWM) of each process since it started, in bytes."""
    return _kib_field(pids, "status", "VmHWM:")


def _kib_field(pids: list[int], name: str, field: str) -> int:
    total = 0
    for pid in pids:
        text = _read(pid, name)
        for line in (text or "").splitlines():
            if line.startswith(field):
                total += int(line.split()[1]) * 1024
    return total
