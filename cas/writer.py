"""Hashing while writing: the bytes of a blob are hashed and written to a file in one pass.

Both hashlib/blake3 `update` and `os.write` release the GIL, so the two run on two threads at once and the caller's
thread (an event loop, a reader) only hands chunks over. Small blobs never pay for threads: the writer works inline
until PIPELINE_THRESHOLD bytes have passed, then starts the two workers. Each worker has a bounded queue
(QUEUE_DEPTH chunks): a slow disk or hasher pushes back on the producer instead of filling memory.

Chunks are kept by reference until written: a producer must not mutate a buffer after handing it over
(bytes are immutable; a reused bytearray is copied on entry).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

from .digest import Hasher

# Below this many bytes a blob is hashed and written inline: two thread starts (~100 µs) cost more than they save.
PIPELINE_THRESHOLD = 1 << 20
# PERF-NOTES: a small bounded queue (~16 chunks) to the hashing thread was the fastest hand-over measured.
QUEUE_DEPTH = 16

_STOP = None


class _Worker(threading.Thread):
    def __init__(self, name: str, work: Callable[[bytes | memoryview], object]) -> None:
        super().__init__(name=name, daemon=True)
        self.inbox: queue.Queue[bytes | memoryview | None] = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self._work = work

    def run(self) -> None:
        work = self._work
        while True:
            chunk = self.inbox.get()
            if chunk is _STOP:
                return
            if self.error is None:
                try:
                    work(chunk)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer's thread
                    self.error = exc


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class HashingWriter:
    """Writes chunks to `fd` (from its current position) while feeding `hasher`. Not thread-safe itself."""

    def __init__(self, fd: int, hasher: Hasher, expected_size: int | None = None) -> None:
        """`expected_size`, when the caller knows it (Content-Length), starts the pipeline at the first byte
        instead of after PIPELINE_THRESHOLD bytes; a chunked upload would otherwise hash and write the first MiB
        of every chunk serially."""
        self._fd = fd
        self._hasher = hasher
        self._workers: tuple[_Worker, _Worker] | None = None
        self.size = 0
        if expected_size is not None and expected_size > PIPELINE_THRESHOLD:
            self._start()

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if not chunk:
            return
        if isinstance(chunk, bytearray) or (isinstance(chunk, memoryview) and not chunk.readonly):
            chunk = bytes(chunk)
        self.size += len(chunk)
        workers = self._workers
        if workers is None:
            if self.size <= PIPELINE_THRESHOLD:
                self._hasher.update(chunk)
                write_all(self._fd, chunk)
                return
            workers = self._start()
        for worker in workers:
            if worker.error is not None:
                self._stop()
                raise worker.error
            worker.inbox.put(chunk)

    def _start(self) -> tuple[_Worker, _Worker]:
        fd = self._fd
        self._workers = (_Worker("berth-hash", self._hasher.update), _Worker("berth-write",
                                                                              lambda c: write_all(fd, c)))
        for worker in self._workers:
            worker.start()
        return self._workers

    def _stop(self) -> None:
        if self._workers is not None:
            for worker in self._workers:
                worker.inbox.put(_STOP)
            for worker in self._workers:
                worker.join()

    def finish(self, fsync: bool = True) -> str:
        """Wait for every chunk to be hashed and written; fsync; return the hex digest."""
        self._stop()
        if self._workers is not None:
            for worker in self._workers:
                if worker.error is not None:
                    raise worker.error
            self._workers = None
        if fsync:
            os.fsync(self._fd)
        return self._hasher.hexdigest()

    def abort(self) -> None:
        self._stop()
        self._workers = None
