"""`berth move-up`'s refusals that need no engine: no target named, no data directory, a data directory another process
has open (tests/interop/test_move_up.py moves a real registry; tests/cas/test_transfer.py the copy itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cas import BlobStore
from tests.adapters.test_cli import berth, fails

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
