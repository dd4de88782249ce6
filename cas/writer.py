"""Hashing while writing: the bytes of a blob are hashed and written to a file in one pass.

Both hashlib/blake3 `update` and `os.write` release the GIL, so the two run on two threads at once and the caller's
thread (an event loop, a reader) only hands chunks over. Small blobs never pay for the hand-over: the writer works
inline until PIPELINE_THRESHOLD bytes have passed (or from the first byte when the caller declares a larger size).
Each worker has a bounded queue (QUEUE_DEPTH chunks): a slow disk or hasher pushes back on the producer instead of
filling memory.

Workers are long-lived and shared by the process: starting a thread waits until the scheduler runs it, which cost
2-4 ms per start on a loaded two-core machine (measured: 66-133 ms per 256 MiB chunked upload, one pair per chunk).

Chunks are kept by reference until written: a producer must not mutate a buffer after handing it over
(bytes are immutable; a writable bytearray or memoryview is copied on entry).
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Callable

from .digest import Hasher

# Below this many bytes a blob is hashed and written inline: the hand-over costs more than it saves.
PIPELINE_THRESHOLD = 1 << 20
# docs/PERFORMANCE.md: a small bounded queue (~16 chunks) to the hashing thread was the fastest hand-over measured.
QUEUE_DEPTH = 16
# Idle workers kept for reuse; more are started when concurrent writers need them, and leave when idle past this.
MAX_IDLE_WORKERS = 8

Chunk = bytes | memoryview
Work = Callable[[Chunk], object]


class _EndOfJob:
    pass


_END = _EndOfJob()


class _Worker(threading.Thread):
    """Runs one job at a time: `work` applied to every chunk until _END, then signals `done`."""

    def __init__(self) -> None:
        super().__init__(name="berth-pipeline", daemon=True)
        self.inbox: queue.Queue[Chunk | _EndOfJob | None] = queue.Queue(QUEUE_DEPTH)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.work: Work | None = None

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            if isinstance(item, _EndOfJob):
                self.done.set()
                continue
            if self.error is None:
                try:
                    self.work(item)  # type: ignore[misc]
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer's thread
                    self.error = exc


class _Pool:
    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def take(self, work: Work) -> _Worker:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker()
            worker.start()
        worker.work, worker.error = work, None
        worker.done.clear()
        return worker

    def give_back(self, worker: _Worker) -> None:
        worker.work = None
        with self._lock:
            if len(self._idle) < MAX_IDLE_WORKERS:
                self._idle.append(worker)
                return
        worker.inbox.put(None)


_POOL = _Pool()


def _forget_workers_after_fork() -> None:
    # A forked child has the pool's objects but none of its threads: start afresh rather than wait on ghosts.
    global _POOL
    _POOL = _Pool()


os.register_at_fork(after_in_child=_forget_workers_after_fork)


WRITEBACK_STEP = 8 << 20  # start the disk on every 8 MiB written, so that the final fsync has little left to do


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE): start writeback of a range and return at
    once (ctypes releases the GIL for the call). Absent elsewhere: then the fsync at the end does it all."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    call.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, length: int) -> None:
        call(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; a failure only means the fsync does the work
    return start_writeback


_START_WRITEBACK = _load_sync_file_range()


class _WriteBack:
    """Writes chunks at the file's position and, every WRITEBACK_STEP bytes, starts the disk on them: a blob then
    reaches the disk while the rest arrives, instead of all at once in the fsync that makes it durable (measured:
    a 1 GiB push waited seconds in that fsync)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._done = self._kicked = os.lseek(fd, 0, os.SEEK_CUR)

    def __call__(self, chunk: Chunk) -> None:
        write_all(self._fd, chunk)
        self._done += len(chunk)
        if _START_WRITEBACK is not None and self._done - self._kicked >= WRITEBACK_STEP:
            _START_WRITEBACK(self._fd, self._kicked, self._done - self._kicked)
            self._kicked = self._done


def write_all(fd: int, data: Chunk) -> None:
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
                error = worker.error
                self._stop()
                raise error
            worker.inbox.put(chunk)

    def _start(self) -> tuple[_Worker, _Worker]:
        self._workers = (_POOL.take(self._hasher.update), _POOL.take(_WriteBack(self._fd)))
        return self._workers

    def _stop(self) -> BaseException | None:
        """End the job on both workers, wait for them, give them back; return the first error either had."""
        workers, self._workers = self._workers, None
        if workers is None:
            return None
        for worker in workers:
            worker.inbox.put(_END)
        for worker in workers:
            worker.done.wait()
        error = next((w.error for w in workers if w.error is not None), None)
        for worker in workers:
            _POOL.give_back(worker)
        return error

    def finish(self, fsync: bool = True) -> str:
        """Wait for every chunk to be hashed and written; fsync; return the hex digest."""
        error = self._stop()
        if error is not None:
            raise error
        if fsync:
            os.fsync(self._fd)
        return self._hasher.hexdigest()

    def abort(self) -> None:
        self._stop()
