"""`berth move-up` as its users run it: the refusals that need no engine (no target named, no data directory, a data
directory another process has open), and a corrupt blob file reported with exit status 1 (tests/interop/
test_move_up.py moves a registry real clients built; tests/cas/test_transfer.py tests the copy itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cas import BlobStore, BlobUnknown
from cas.layout import blob_path
from tests.adapters.test_cli import berth, fails
from tests.engines import Engines

TARGET = ("--metadata", "postgresql://nobody@127.0.0.1:1/none", "--blobs", "s3://none?endpoint=http://127.0.0.1:1")


def test_move_up_needs_both_target_flags(tmp_path: Path) -> None:
    BlobStore.on_disk(tmp_path / "data").close()
    fails(berth("move-up", "--data", "data", cwd=tmp_path), "--metadata postgresql://… and --blobs s3://…")
    fails(berth("move-up", "--data", "data", *TARGET[:2], cwd=tmp_path), "and --blobs s3://…")


def test_move_up_needs_a_data_directory(tmp_path: Path) -> None:
    fails(berth("move-up", "--data", "nowhere", *TARGET, cwd=tmp_path), "no data directory")


def test_move_up_refuses_a_data_directory_another_process_has_open(tmp_path: Path) -> None:
    BlobStore.on_disk(tmp_path / "data").close()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from cas import BlobStore; "
                               f"s = BlobStore.on_disk({str(tmp_path / 'data')!r}); print('open', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        fails(berth("move-up", "--data", "data", *TARGET, cwd=tmp_path), "another process has")
    finally:
        holder.communicate("")
    # Closed: the refusal is gone (the target is what fails now: a URL that is not a bucket's, refused at once).
    fails(berth("move-up", "--data", "data", *TARGET[:3], "http://bucket", cwd=tmp_path), "not an s3://bucket URL")


def test_a_corrupt_blob_file_is_reported_and_not_copied_as_good(tmp_path: Path, engines: Engines) -> None:
    with BlobStore.on_disk(tmp_path / "data") as source:
        good, bad = source.ingest(b"good bytes" * 100), source.ingest(b"soon bad" * 100)
        source.index.transact(lambda txn: source.refs.take(txn, "m:syn1/app@sha256:1", bad.digest))
    path = blob_path(tmp_path / "data", bad.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"Soon bad" + path.read_bytes()[8:])
    target = ("--metadata", engines.postgres.create_database(), "--blobs", engines.s3.url(engines.s3.create_bucket()))
    result = berth("move-up", "--data", "data", "--json", *target, cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and "1 blob(s) failed verification" in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert [(f["digest"], f["holders"]) for f in report["failed"]] == [(str(bad.digest), 1)]
    assert report["failed"][0]["reason"].startswith("corrupt: its bytes hash to sha256:")
    assert report["files"]["count"] == 1
    with BlobStore.distributed(target[1], target[3]) as moved:
        assert moved.read_bytes(good.digest) == b"good bytes" * 100
        with pytest.raises(BlobUnknown):
            moved.stat(bad.digest)  # a MISSING record for its holder: never served
