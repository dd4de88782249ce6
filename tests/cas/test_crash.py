"""Crash tests: a real child process is killed with SIGKILL inside ingest, finish, a reference transaction and GC
(at named crash points, and at random moments), then the parent reopens the directory and checks that committed
data survived, partial data is invisible, fsck finds no damage, and the next GC reclaims the debris."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from cas import BlobStore, BlobUnknown, Digest, StoreConfig, check, files

pytestmark = pytest.mark.crash

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parents[2]
CLEANUP = StoreConfig(grace=0.0, lease=0.0, upload_ttl=0.0)


def blob(seed: int, size: int = 3 << 20) -> bytes:
    return random.Random(seed).randbytes(size)


def run_child(data: Path, *args: str, crashpoint: str | None = None, extra_env: dict[str, str] | None = None,
              expect_kill: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    env.pop("BERTH_CRASHPOINT", None)
    if crashpoint:
        env["BERTH_CRASHPOINT"] = crashpoint
    done = subprocess.run([sys.executable, str(CHILD), *args[:1], str(data), *args[1:]], env=env,
                          capture_output=True, text=True, timeout=120)
    if expect_kill:
        assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)
    else:
        assert done.returncode == 0, done.stderr
    return done


def assert_clean_after_gc(data: Path) -> None:
    """fsck finds no damage; one GC pass (grace 0) removes all debris; fsck still clean and debris-free.

    The one exception is the documented one: a process killed between creating a file and renaming it to its
    real name leaves a `.creating-` file that is debris only after CREATING_MIN_AGE. Such a file may remain after
    the first pass and must go in a pass once it is old enough (the floor is lowered here instead of waiting).
    """
    with BlobStore.on_disk(data, config=CLEANUP) as store:
        before = check(store)
        assert not before.damaged, before.lines()
        store.gc.run()
        young = [p.name for sub in ("tmp", "uploads") for p in (data / sub).iterdir()]
        assert all(name.startswith(files.CREATING_PREFIX) for name in young), young
        if young:
            with mock.patch.object(files, "CREATING_MIN_AGE", 0.0):
                store.gc.run()
        after = check(store)
        assert not after.damaged, after.lines()
        assert after.unindexed == [] and after.doomed == 0 and after.temp == 0, after.lines()
        assert list((data / "uploads").iterdir()) == []


def test_kill_during_ingest_before_publish(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_child(data, "ingest", "1", crashpoint="ingest.before_publish")
    with BlobStore.on_disk(data) as store, pytest.raises(BlobUnknown):
        store.stat(Digest.of(blob(1)))
    assert len(list((data / "tmp").iterdir())) == 1  # the fsynced temp file is debris
    assert_clean_after_gc(data)


def test_kill_after_rename_before_commit_leaves_an_invisible_orphan(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_child(data, "ingest", "2", crashpoint="publish.after_rename")
    digest = Digest.of(blob(2))
    with BlobStore.on_disk(data) as store:
        with pytest.raises(BlobUnknown):
            store.stat(digest)
        report = check(store)
        assert report.unindexed == [str(digest)] and not report.damaged
    assert_clean_after_gc(data)


def test_kill_right_after_commit_keeps_the_blob(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_child(data, "ingest", "3", crashpoint="publish.after_commit")
    with BlobStore.on_disk(data) as store:
        assert store.read_bytes(Digest.of(blob(3))) == blob(3)
        assert not check(store).damaged


@pytest.mark.parametrize("crashpoint", ["upload.after_chunk", "upload.after_progress"])
def test_kill_after_a_chunk_then_resume_where_the_status_says(tmp_path: Path, crashpoint: str) -> None:
    data = tmp_path / "data"
    done = run_child(data, "upload", "4", crashpoint=crashpoint)
    session_id = done.stdout.split()[0]
    content = blob(4)
    half = len(content) // 2
    with BlobStore.on_disk(data) as store:
        # A chunk is accepted when the record with its offset commits: killed before that, the session is where it
        # was (the bytes written past it are cut off when it resumes); killed after, it is past the chunk.
        accepted = half if crashpoint == "upload.after_progress" else 0
        assert store.uploads.status(session_id).offset == accepted
        info = store.uploads.finish(session_id, Digest.of(content), [content[accepted:]], offset=accepted)
        assert store.read_bytes(info.digest) == content  # the running hash was rebuilt from the file
    assert_clean_after_gc(data)


@pytest.mark.parametrize("crashpoint", ["upload.before_publish", "publish.after_rename", "publish.after_commit"])
def test_kill_during_finish(tmp_path: Path, crashpoint: str) -> None:
    data = tmp_path / "data"
    content = blob(5)
    digest = Digest.of(content)
    with BlobStore.on_disk(data) as store:
        session = store.uploads.create()
        store.uploads.append(session.id, [content], offset=0)
    run_child(data, "finish", session.id, str(digest), crashpoint=crashpoint)
    with BlobStore.on_disk(data) as store:
        if crashpoint == "publish.after_commit":
            assert store.read_bytes(digest) == content
            with pytest.raises(KeyError):
                store.uploads.status(session.id)  # the session ended in the same commit
        else:
            with pytest.raises(BlobUnknown):
                store.stat(digest)
            if crashpoint == "upload.before_publish":
                # Nothing was published: the session is intact and the client can finish it again.
                assert store.read_bytes(store.uploads.finish(session.id, digest).digest) == content
            else:
                # The partial file was renamed into place but not committed: the session cannot go on,
                # and the client's retry (a new upload) publishes over the orphan.
                with pytest.raises(KeyError):
                    store.uploads.finish(session.id, digest)
                assert store.ingest(content, digest).digest == digest
                assert store.read_bytes(digest) == content
    assert_clean_after_gc(data)


@pytest.mark.parametrize("inside", [True, False])
def test_kill_during_a_reference_transaction_is_all_or_nothing(tmp_path: Path, inside: bool) -> None:
    data = tmp_path / "data"
    with BlobStore.on_disk(data) as store:
        digests = [str(store.ingest(blob(seed, 1000)).digest) for seed in range(10, 15)]
    env = {"DIE_INSIDE_TXN": "1"} if inside else {}
    run_child(data, "references", "manifest:x", *digests, extra_env=env, expect_kill=inside)
    with BlobStore.on_disk(data, config=CLEANUP) as store:
        with store.index.read() as txn:
            held = sorted(str(d) for d in store.refs.held_by(txn, "manifest:x"))
        assert held == ([] if inside else sorted(digests))
        assert not check(store).damaged
        collected = {str(d) for d, _ in store.gc.run().collected}
        assert collected == (set(digests) if inside else set())


@pytest.mark.parametrize("crashpoint", ["gc.after_claim", "gc.after_trash", "gc.after_decide"])
def test_kill_during_gc_between_its_steps(tmp_path: Path, crashpoint: str) -> None:
    data = tmp_path / "data"
    with BlobStore.on_disk(data) as store:
        digests = [store.ingest(blob(seed, 2000)).digest for seed in range(20, 26)]
    run_child(data, "gc", crashpoint=crashpoint)
    with BlobStore.on_disk(data) as store:
        for digest in digests:  # the claim committed: no record is served, whatever happened to the files
            with pytest.raises(BlobUnknown):
                store.stat(digest)
        report = check(store)
        # claimed: DELETING records in `doomed` until the decision; files retired into trash/ until purged
        doomed = 0 if crashpoint == "gc.after_decide" else len(digests)
        retired = 0 if crashpoint == "gc.after_claim" else len(digests)
        assert (report.doomed, report.temp, report.damaged) == (doomed, retired, False)
    assert_clean_after_gc(data)
    assert list((data / "blobs" / "sha256").glob("*/*")) == []


def test_kill_at_random_moments_under_churn(tmp_path: Path) -> None:
    """Random work (ingest, uploads, references, GC with grace 0) killed at random moments, eight times over the
    same directory. After each kill: every blob a journaled reference still holds reads back intact, fsck finds
    no damage, and GC leaves no debris."""
    data = tmp_path / "data"
    journal = tmp_path / "journal"
    rng = random.Random(20261122)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BERTH_CRASHPOINT", None)
    for round_ in range(8):
        child = subprocess.Popen([sys.executable, str(CHILD), "churn", str(data), str(journal), str(round_)],
                                 env=env, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.5, 2.5))
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait()

        held: dict[str, set[str]] = {}
        for line in journal.read_text().splitlines():
            entry = json.loads(line)
            if entry["op"] == "take":
                held.setdefault(entry["holder"], set()).update(entry["digests"])
            elif entry["op"] == "drop_all":
                held.pop(entry["holder"], None)
        with BlobStore.on_disk(data) as store:
            for digests in held.values():
                for text in digests:
                    assert Digest.of(store.read_bytes(text), Digest.parse(text).algorithm) == Digest.parse(text)
        # Cleaning up must not touch referenced blobs either: check again after the GC in assert_clean_after_gc.
        assert_clean_after_gc(data)
        with BlobStore.on_disk(data) as store:
            for digests in held.values():
                for text in digests:
                    assert store.stat(text).size >= 0
