"""Files on disk: temp files that say whether they are in use, and the durable rename that publishes a blob.

A file being written is held under an exclusive flock() by the process writing it. Debris left by a crashed
process has no lock: cleanup passes take the lock without blocking and delete only what they could lock.
flock() locks belong to the open file description, so this also tells apart two threads of one process.

Linux cannot create a file and lock it in one step, so a file is created as `.creating-<name>`, locked, and only
then renamed to `<name>`: a file under its real name is locked for as long as anybody uses it, and an unlocked one
is debris at once. A `.creating-` file (a crash in those microseconds) is debris only after CREATING_MIN_AGE.
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


CREATING_PREFIX = ".creating-"
# Between open(O_EXCL) and flock() lie microseconds; a minute leaves room for a stalled process.
CREATING_MIN_AGE = 60.0


class LockedFile:
    """An open file held under an exclusive flock for as long as it is open."""

    __slots__ = ("path", "fd")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def create(cls, directory: Path, name: str | None = None) -> LockedFile:
        name = name or uuid.uuid4().hex
        staging = directory / (CREATING_PREFIX + name)
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = directory / name
            os.rename(staging, path)  # names are fresh uuids: nothing is replaced
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            raise
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


def remove_debris(path: Path) -> bool:
    """Delete a file nobody holds a lock on (see the module docstring for `.creating-` files). True if deleted."""
    try:
        if path.name.startswith(CREATING_PREFIX) and time.time() - path.stat().st_mtime < CREATING_MIN_AGE:
            return False
        locked = LockedFile.try_open(path)
    except (FileNotFoundError, BlockingIOError):
        return False
    if locked is None:
        return False
    locked.remove()
    return True
