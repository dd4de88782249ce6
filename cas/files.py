"""Files on disk: temp files that say whether they are in use, and the durable rename that publishes a blob.

A file being written is held under an exclusive flock() by the process writing it. Debris left by a crashed
process has no lock: cleanup passes take the lock without blocking and delete only what they could lock.
flock() locks belong to the open file description, so this also tells apart two threads of one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create a directory (and parents) durably: a rename into it must not vanish with its parent entry."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


class LockedFile:
    """An open file held under an exclusive flock for as long as it is open."""

    __slots__ = ("path", "fd")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def create(cls, directory: Path, name: str | None = None) -> LockedFile:
        path = directory / (name or uuid.uuid4().hex)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return cls(path, fd)

    @classmethod
    def try_open(cls, path: Path) -> LockedFile | None:
        """Open an existing file and lock it; None if it is missing; BlockingIOError if someone holds the lock."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1

    def remove(self) -> None:
        """Unlink while still holding the lock, then close: nobody can lock a file we are deleting."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()


def remove_debris(path: Path, min_age: float) -> bool:
    """Delete a file nobody holds a lock on and nobody wrote to for `min_age` seconds. True if deleted.

    The age rule closes the one window the lock cannot: between a writer's open(O_EXCL) and its flock().
    Losing that race would make the writer's publish fail cleanly (its file is gone), never corrupt the store.
    """
    try:
        if time.time() - path.stat().st_mtime < min_age:
            return False
        locked = LockedFile.try_open(path)
    except (FileNotFoundError, BlockingIOError):
        return False
    if locked is None:
        return False
    locked.remove()
    return True
