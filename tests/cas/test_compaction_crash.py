"""Crash tests of compaction: a real child process runs a compaction pass and is killed with SIGKILL at each named
point (cas/compaction.py). The parent reopens the directory: the blob is served byte for byte from exactly one
complete form (the original before the switch's commit, the compressed one after it), fsck finds no damage, and
the next compaction and collection passes leave no debris."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cas import BlobStore, check
from cas.layout import FORM_FRAMES_V1, FORM_RAW
from tests.cas.test_compaction import text
from tests.cas.test_crash import CHILD, CLEANUP, ROOT, run_child

pytestmark = pytest.mark.crash

POINTS = {  # crash point -> the form the record names afterwards
    "compact.before_publish": FORM_RAW,
    "compact.after_publish": FORM_RAW,
    "compact.after_commit": FORM_FRAMES_V1,
    "compact.after_drop": FORM_FRAMES_V1,
}


def blob_files(data: Path) -> list[str]:
    return sorted(path.name for path in (data / "blobs").rglob("*") if path.is_file())


@pytest.mark.parametrize("crashpoint", sorted(POINTS))
def test_kill_during_compaction(tmp_path: Path, crashpoint: str) -> None:
    data = tmp_path / "data"
    original = text(11, 3 << 20)
    with BlobStore.on_disk(data) as store:
        digest = store.ingest(original).digest
        store.index.transact(lambda txn: store.refs.take(txn, "manifest:test", digest))  # GC must keep it
    run_child(data, "compact", crashpoint=crashpoint)

    with BlobStore.on_disk(data, config=CLEANUP) as store:
        info = store.stat(digest)
        assert info.form == POINTS[crashpoint] and info.size == len(original)
        assert store.read_bytes(digest) == original
        with store.open(digest, (1 << 20) - 3, 1 << 20) as reader:
            assert reader.read() == original[(1 << 20) - 3:(2 << 20) - 3]
        report = check(store)
        assert not report.damaged, report.lines()

        store.compaction.run()  # finishes or redoes the interrupted pass, and removes its debris
        store.compaction.run()  # clears what the first one left listed in `superseded`
        store.gc.run()  # the staging file a kill left in tmp/
        assert store.stat(digest).form == FORM_FRAMES_V1
        assert blob_files(data) == [f"{digest.hex}.zf1"]
        assert list((data / "tmp").iterdir()) == []
        after = check(store)
        assert not after.damaged and after.superseded == 0 and after.temp == 0, after.lines()
        assert store.read_bytes(digest) == original
        with store.index.read() as txn:
            assert txn.count(store.tables.compaction) == 0 and txn.count(store.tables.superseded) == 0


@pytest.mark.parametrize("seed", range(3))
def test_kill_at_a_random_moment_of_compaction(tmp_path: Path, seed: int) -> None:
    data = tmp_path / "data"
    blobs = [text(seed * 10 + i, (1 + i) << 20) for i in range(4)]
    with BlobStore.on_disk(data) as store:
        digests = [store.ingest(blob).digest for blob in blobs]
        for digest in digests:
            store.index.transact(lambda txn, d=digest: store.refs.take(txn, "manifest:test", d))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BERTH_CRASHPOINT", None)
    child = subprocess.Popen([sys.executable, str(CHILD), "compact", str(data)], env=env)
    time.sleep(random.Random(seed).uniform(0.3, 1.5))  # start-up takes ~0.3 s; the pass ~0.1 s per MiB loaded
    child.send_signal(signal.SIGKILL)
    child.wait(30)

    with BlobStore.on_disk(data, config=CLEANUP) as store:
        for digest, blob in zip(digests, blobs, strict=True):
            assert store.read_bytes(digest) == blob
        assert not check(store).damaged
        store.compaction.run()
        store.compaction.run()
        store.gc.run()
        assert [store.stat(d).form for d in digests] == [FORM_FRAMES_V1] * 4
        assert blob_files(data) == sorted(f"{d.hex}.zf1" for d in digests)
        after = check(store)
        assert not after.damaged and after.superseded == 0 and after.temp == 0, after.lines()
