"""Blob bytes in files of a data directory (the layout is in cas/layout.py): the embedded default.

Files are immutable once published and named by digest; staging files are flock()ed while in use (cas/files.py),
so whatever is unlocked in tmp/ or uploads/ is debris. The collector's retire is a rename into trash/ (atomic and
reversible), its purge an unlink there; a reader that finds blobs/ empty for a blob the index says is stored tries
the trash/ copy once (a retire that a publish is about to undo: cas/gc.py). A stored form other than RAW is the
same name with the form's suffix (`<hex>.zf1`), in blobs/ and in trash/ alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .blobs import BlobBytes, ChunkWriter, Staged
from .digest import ALGORITHMS, Digest, Hasher
from .errors import BlobUnknown, UploadBusy
from .files import LockedFile, ensure_dir, fsync_dir, remove_debris
from .layout import FORM_RAW, FORM_SUFFIX, FORMS, blob_path, split_form
from .reader import BlobReader
from .stored_forms import hash_form, open_form
from .writer import HashingWriter, write_all

SUBDIRECTORIES = ("blobs", "uploads", "tmp", "trash", "quarantine")
_CHUNK = 1 << 20  # 1 MiB reads: 64 KiB ones hashed at a quarter of the speed


class StagedFile(Staged):
    __slots__ = ("name", "file", "consumed")

    def __init__(self, file: LockedFile) -> None:
        self.name = file.path.name
        self.file = file
        self.consumed = False

    def size(self) -> int:
        return os.fstat(self.file.fd).st_size

    def writer(self, hasher: Hasher, offset: int, expected_size: int | None = None) -> ChunkWriter:
        os.lseek(self.file.fd, offset, os.SEEK_SET)
        return HashingWriter(self.file.fd, hasher, expected_size=expected_size)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.file.fd, size)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.file.fd, length, offset)

    def sync(self) -> None:
        os.fsync(self.file.fd)

    def release(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.file.remove()


class LocalBlobs(BlobBytes):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        for sub in SUBDIRECTORIES:
            ensure_dir(self.root / sub)
        self._blobs = f"{self.root}/blobs"
        self._trash = f"{self.root}/trash"
        self._uploads = self.root / "uploads"

    # -- staging ------------------------------------------------------------------------------------------------
    def stage(self) -> StagedFile:
        return StagedFile(LockedFile.create(self.root / "tmp"))

    def create_upload(self, session_id: str) -> StagedFile:
        return StagedFile(LockedFile.create(self._uploads, session_id))

    def resume_upload(self, session_id: str) -> StagedFile | None:
        try:
            file = LockedFile.try_open(self._uploads / session_id)
        except BlockingIOError:
            raise UploadBusy(session_id) from None
        return None if file is None else StagedFile(file)

    def sweep_staged(self, has_session: Callable[[str], bool]) -> int:
        removed = sum(remove_debris(path) for path in (self.root / "tmp").iterdir())
        for path in self._uploads.iterdir():
            if not has_session(path.name) and remove_debris(path):
                removed += 1
        return removed

    def upload_progress(self, session_id: str) -> tuple[int, float] | None:
        """(size, mtime) of a session's partial file: where format 1 kept an upload's progress (migration)."""
        try:
            st = os.stat(self._uploads / session_id)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime

    # -- publishing ---------------------------------------------------------------------------------------------
    def publish(self, staged: Staged, digest: Digest) -> bool:
        assert isinstance(staged, StagedFile)
        final = blob_path(self.root, digest)
        if final.exists():
            return False  # the same bytes are there (maybe being served): leave them, keep the staging
        ensure_dir(final.parent)
        # A rename, not a link: the staging must never share an inode with a blob (an upload session that goes on
        # after a failed publish would write into the published file). Two publishers racing here rename the same
        # bytes over one another, which is harmless.
        os.replace(staged.file.path, final)
        fsync_dir(final.parent)
        staged.consumed = True
        return True

    def ensure(self, staged: Staged, digest: Digest) -> None:
        assert isinstance(staged, StagedFile)
        final = blob_path(self.root, digest)
        if final.exists():
            return
        # A collector retired our file between the rename and the commit (cas/gc.py). The retired copy, or else
        # our own open descriptor (the inode lives while we hold it), has the bytes: put them back.
        with contextlib.suppress(FileNotFoundError, FileExistsError):
            os.link(self._trash_path(digest), final)
            fsync_dir(final.parent)
            return
        copy = LockedFile.create(self.root / "tmp")
        try:
            position, fd = 0, staged.file.fd
            while chunk := os.pread(fd, _CHUNK, position):
                write_all(copy.fd, chunk)
                position += len(chunk)
            os.fsync(copy.fd)
            os.replace(copy.path, final)
            fsync_dir(final.parent)
        finally:
            copy.remove()

    # -- reading ------------------------------------------------------------------------------------------------
    def _path(self, digest: Digest, form: int = FORM_RAW) -> str:
        # plain strings: pathlib was 20 % of a collection pass here
        return f"{self._blobs}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}{FORM_SUFFIX[form]}"

    def open(self, digest: Digest, size: int, offset: int = 0, length: int | None = None, *,
             form: int = FORM_RAW, stored_size: int | None = None) -> BlobReader:
        try:
            fd = os.open(self._path(digest, form), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            try:  # retired by a collector that a publish is about to overrule (cas/gc.py): the same bytes
                fd = os.open(self._trash_path(digest, form), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise BlobUnknown(str(digest)) from None
        return open_form(form, fd, size, offset, length)

    def local_path(self, digest: Digest) -> Path:
        return blob_path(self.root, digest)

    def contains(self, digest: Digest, form: int = FORM_RAW) -> bool:
        return os.path.exists(self._path(digest, form))

    # -- stored forms -------------------------------------------------------------------------------------------
    def publish_form(self, staged: Staged, digest: Digest, form: int) -> None:
        assert isinstance(staged, StagedFile) and form != FORM_RAW
        final = self._path(digest, form)
        ensure_dir(Path(final).parent)
        # Renamed over a copy a crashed pass left: both are complete (fsynced before this rename) and nobody
        # reads this name while the record says RAW. Staged.discard then finds its name gone, as it may.
        os.replace(staged.file.path, final)
        fsync_dir(Path(final).parent)
        staged.consumed = True

    def drop_form(self, digest: Digest, form: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(digest, form))

    # -- collecting ---------------------------------------------------------------------------------------------
    def _trash_path(self, digest: Digest, form: int = FORM_RAW) -> str:
        return f"{self._trash}/{digest.algorithm}-{digest.hex}{FORM_SUFFIX[form]}"

    def retire(self, digest: Digest) -> bool:
        retired = False
        for form in FORMS:
            try:
                os.rename(self._path(digest, form), self._trash_path(digest, form))
            except FileNotFoundError:
                continue
            retired = True
        return retired

    def restore(self, digest: Digest) -> None:
        for form in FORMS:
            retired = self._trash_path(digest, form)
            final = self._path(digest, form)
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                os.link(retired, final)  # link, never rename over: a copy a publish put back is as good as ours
                fsync_dir(Path(final).parent)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(retired)

    def purge(self, digest: Digest) -> None:
        for form in FORMS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._trash_path(digest, form))

    def retired(self) -> Iterator[Digest]:
        seen = set()
        for entry in os.scandir(self._trash):
            algorithm, _, name = entry.name.partition("-")
            hexdigest, form = split_form(name)
            try:
                digest = Digest.parse(f"{algorithm}:{hexdigest}")
            except ValueError:  # not a retired blob: nothing of ours, remove it
                digest = None
            if digest is None or form is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            elif digest not in seen:
                seen.add(digest)
                yield digest

    def stored(self) -> Iterator[tuple[Digest | None, int, str]]:
        base = self._blobs
        for algorithm in sorted(os.listdir(base)):
            alg_dir = os.path.join(base, algorithm)
            if not os.path.isdir(alg_dir):
                yield None, FORM_RAW, alg_dir
                continue
            for prefix in sorted(os.listdir(alg_dir)):
                pre_dir = os.path.join(alg_dir, prefix)
                if not os.path.isdir(pre_dir):
                    yield None, FORM_RAW, pre_dir
                    continue
                for name in sorted(os.listdir(pre_dir)):
                    hexdigest, form = split_form(name)
                    digest = _digest_of(algorithm, prefix, hexdigest) if form is not None else None
                    yield digest, FORM_RAW if form is None else form, os.path.join(pre_dir, name)

    def hash(self, location: str, algorithm: str) -> tuple[str, int]:
        fd = os.open(location, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return hash_form(split_form(os.path.basename(location))[1] or FORM_RAW, fd, algorithm)
        finally:
            os.close(fd)

    def quarantine(self, location: str, label: str) -> str:
        target = self.root / "quarantine" / f"{label}-{int(time.time())}-{os.path.basename(location)}"
        shutil.move(location, target)
        return str(target)

    def quarantine_bytes(self, data: bytes, label: str) -> str:
        target = self.root / "quarantine" / f"{label}-{int(time.time())}-{uuid.uuid4().hex[:8]}"
        target.write_bytes(data)
        return str(target)

    def debris(self) -> int:
        return sum(1 for sub in ("tmp", "trash") for _ in (self.root / sub).iterdir())

    def check_writable(self) -> None:
        probe = self.root / "tmp" / f".health-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.unlink(probe)




def _digest_of(algorithm: str, prefix: str, name: str) -> Digest | None:
    if algorithm not in ALGORITHMS or name[:2] != prefix:
        return None
    try:
        return Digest.parse(f"{algorithm}:{name}")
    except ValueError:
        return None
