"""A store over a data directory copied into the distributed store (cas/transfer.py, under `berth move-up`), against
the real engines (tests/engines.py): every blob good in the source is served byte for byte by the target in the form
it was kept in; a blob whose bytes fail verification (a corrupt file, a corrupt compressed form, corrupt inline bytes)
is never copied as good: it becomes a MISSING record for its holders (a push of the same bytes heals it) or is left
out when nothing holds it; fsck finds the target clean; an interrupted transfer resumes; a target that is not empty
is refused."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cas import BlobStore, BlobUnknown, Digest, check
from cas.layout import FORM_FRAMES_V1, FORM_RAW, STATE_MISSING, BlobRecord, blob_path
from cas.transfer import TransferRefused, TransferReport, transfer
from tests.engines import Engines

Open = Callable[[str], BlobStore]


@pytest.fixture(scope="module")
def distributed(engines: Engines) -> Open:
    """A distributed store on the module's database and bucket: a schema and prefix per name."""
    database, bucket = engines.postgres.create_database(), engines.s3.create_bucket()

    def open_store(place: str) -> BlobStore:
        return BlobStore.distributed(f"{database}?schema={place}",
                                     f"s3://{bucket}/{place}?endpoint={engines.s3.endpoint}")
    return open_store


def fresh() -> str:
    return "m" + uuid.uuid4().hex[:12]


# A blob of the source: (bytes kind, size, referenced, damaged). Kinds: incompressible (kept raw), text (kept
# compressed after a compaction pass), inline (kept in the index).
blob_specs = st.lists(st.tuples(st.sampled_from(("random", "text", "inline")), st.integers(0, 300_000), st.booleans(),
                                st.booleans()), min_size=1, max_size=6)


def content(kind: str, size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    line = b"2026-12-02,syn1,%d,alpha beta gamma\n" % rng.randrange(10**6)
    text = (line * (size // len(line) + 1))[:size]
    return text[:4096] if kind == "inline" else text


def build(source: BlobStore, specs: list[tuple[str, int, bool, bool]]) -> dict[Digest, tuple[bytes, bool, bool]]:
    """The source's blobs: digest -> (bytes, referenced, damaged), after a compaction pass and the damage."""
    made: dict[Digest, tuple[bytes, bool, bool]] = {}
    for n, (kind, size, referenced, damaged) in enumerate(specs):
        data = content(kind, size, n) + n.to_bytes(4, "big")  # distinct blobs
        if kind == "inline":
            info = source.index.transact(lambda txn, data=data: source.ingest_inline(txn, data))
        else:
            info = source.ingest(data)
        if referenced:
            source.index.transact(lambda txn, d=info.digest: source.refs.take(txn, f"m:holder@{d}", d))
        made[info.digest] = (data, referenced, damaged)
    source.compaction.run()
    for digest, (_, _, damaged) in made.items():
        if damaged:
            damage(source, digest)
    return made


def damage(store: BlobStore, digest: Digest) -> None:
    """Flip one byte of the blob as the store keeps it: its file in its form, or its inline bytes."""
    with store.index.read() as txn:
        record = BlobRecord.unpack(txn.get(store.tables.blobs, digest.key) or b"")
        inline = txn.get(store.tables.inline, digest.key)
    if inline is not None:
        flipped = bytes([inline[0] ^ 1]) + inline[1:] if inline else b"x"
        store.index.transact(lambda txn: txn.put(store.tables.inline, digest.key, flipped))
        return
    assert store.root is not None
    path = Path(f"{blob_path(store.root, digest)}{'.zf1' if record.form == FORM_FRAMES_V1 else ''}")
    raw = bytearray(path.read_bytes())
    if not raw:
        path.write_bytes(b"x")  # an empty blob made one byte long
        return
    raw[len(raw) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(raw))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=blob_specs)
@example(specs=[("random", 1000, True, True), ("text", 200_000, True, True), ("inline", 100, True, True),
                ("random", 10, False, True), ("text", 100_000, False, False), ("random", 0, True, False)])
def test_good_blobs_arrive_whole_and_damaged_ones_never_as_good(specs: list[tuple[str, int, bool, bool]],
                                                               distributed: Open, tmp_path_factory:
                                                               pytest.TempPathFactory) -> None:
    with BlobStore.on_disk(tmp_path_factory.mktemp("source")) as source, distributed(fresh()) as target:
        made = build(source, specs)
        with source.index.read() as txn:
            forms = {d: BlobRecord.unpack(txn.get(source.tables.blobs, d.key) or b"").form for d in made}
        report = transfer(source, target, ())
        assert {f.digest for f in report.failed} == {str(d) for d, (_, _, bad) in made.items() if bad}
        for digest, (data, referenced, damaged) in made.items():
            with target.index.read() as txn:
                raw = txn.get(target.tables.blobs, digest.key)
                holders = list(txn.keys(target.tables.refs, prefix=digest.key + b"\0"))
            assert len(holders) == referenced
            if not damaged:
                assert target.read_bytes(digest) == data
                assert BlobRecord.unpack(raw or b"").form == forms[digest]  # kept as it was kept
            elif referenced:
                assert raw is not None and BlobRecord.unpack(raw).state == STATE_MISSING
                with pytest.raises(BlobUnknown):
                    target.stat(digest)
                target.ingest(data)  # the same bytes pushed again heal it, its holder intact
                assert target.read_bytes(digest) == data and target.stat(digest).size == len(data)
            else:
                assert raw is None
        assert not check(target).damaged
        assert report.blobs + report.inline == sum(not bad for _, _, bad in made.values())


def test_an_interrupted_transfer_resumes_and_a_full_target_is_refused(distributed: Open, tmp_path: Path) -> None:
    with BlobStore.on_disk(tmp_path / "source") as source, distributed(fresh()) as target:
        digests = [source.ingest(random.Random(n).randbytes(50_000)).digest for n in range(3)]

        def stop(report: TransferReport) -> None:
            if report.blobs == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            transfer(source, target, (), progress=stop)
        with target.index.read() as txn:
            assert txn.count(target.tables.blobs) == 0  # no row before the last step
        with BlobStore.on_disk(tmp_path / "other") as other, pytest.raises(TransferRefused, match="unfinished move"):
            transfer(other, target, ())
        report = transfer(source, target, ())
        assert report.resumed and report.already == 2 and report.blobs == 3
        assert [target.read_bytes(d) for d in digests] == [source.read_bytes(d) for d in digests]
        with pytest.raises(TransferRefused, match=r"not empty \(3 row\(s\) in blobs"):
            transfer(source, target, ())


def test_a_bucket_holding_blobs_is_refused_even_with_an_empty_index(distributed: Open, tmp_path: Path) -> None:
    place = fresh()
    with distributed(place) as used:
        used.ingest(b"someone else's blob")
    with distributed(place) as same, same.index.write() as txn:  # emptied: the bucket prefix holds the blob still
        for table in (same.tables.blobs, same.tables.gcqueue, same.tables.compaction):
            for key in list(txn.keys(table)):
                txn.delete(table, key)
    with BlobStore.on_disk(tmp_path / "source") as source, distributed(place) as target, \
            pytest.raises(TransferRefused, match="bucket holds blobs already"):
        transfer(source, target, ())


def test_forms_are_reported_with_their_sizes(distributed: Open, tmp_path: Path) -> None:
    with BlobStore.on_disk(tmp_path / "source") as source, distributed(fresh()) as target:
        text = b"2026-12-02,syn1,1,alpha beta gamma\n" * 4000
        noise = random.Random(1).randbytes(70_000)
        for data in (text, noise):
            source.ingest(data)
        source.compaction.run()
        report = transfer(source, target, ())
        assert (report.blobs, report.compressed, report.blob_bytes) == (2, 1, len(text) + len(noise))
        assert report.stored_bytes < report.blob_bytes
        with target.index.read() as txn:
            forms = sorted(BlobRecord.unpack(v).form for _, v in txn.scan(target.tables.blobs))
        assert forms == [FORM_RAW, FORM_FRAMES_V1]
