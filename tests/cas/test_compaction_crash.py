"""Crash tests of compaction: a real child process runs a compaction pass and is killed with SIGKILL at each named
point (cas/compaction.py). The parent reopens the directory: the blob is served byte for byte from exactly one
complete form (the original before the switch's commit, the compressed one after it), fsck finds no damage, and
the next compaction and collection passes leave no debris."""

from __future__ import annotations

from pathlib import Path

import pytest

from cas import BlobStore, check
from cas.layout import FORM_FRAMES_V1, FORM_RAW
from tests.cas.test_compaction import text
from tests.cas.test_crash import CLEANUP, run_child

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
