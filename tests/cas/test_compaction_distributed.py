"""Compression at rest on the distributed store (PostgreSQL + S3 in SeaweedFS, tests/engines.py): a compressed form
is one more object (`blobs/<alg>/<hex>.zf1`), read by ranged GETs of the frames a range touches. The same checks as
tests/cas/test_compaction.py's for files and memory, fewer examples (every step is a few round trips): any range is
the original before and after a pass, a reader on another node and one that outlives a collector's retire read the
compressed object, fsck hashes it, and the state machine of pushes, references, collections and passes agrees."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from cas import BlobStore, Digest, StoreConfig
from cas.frames import FRAME_SIZE
from cas.layout import FORM_FRAMES_V1, FORM_RAW
from cas.s3_blobs import S3Blobs
from tests.cas.test_compaction import CompactionMachine, assert_serves, serves_through_a_pass, text
from tests.engines import Engines

F = FRAME_SIZE
Open = Callable[..., BlobStore]


@pytest.fixture(scope="module")
def distributed(engines: Engines) -> Open:
    """Opens a distributed store on the module's database and bucket: a new schema and prefix for each new name."""
    database, bucket = engines.postgres.create_database(), engines.s3.create_bucket()

    def open_store(name: str | None = None, config: StoreConfig | None = None) -> BlobStore:
        place = name or "c" + uuid.uuid4().hex[:12]
        return BlobStore.distributed(f"{database}?schema={place}", f"s3://{bucket}/{place}?endpoint="
                                     f"{engines.s3.endpoint}", config=config)
    return open_store


@pytest.fixture
def store(distributed: Open) -> Iterator[BlobStore]:
    with distributed() as opened:
        yield opened


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data(), what=st.sampled_from(["random", "text", "mixture"]),
       size=st.sampled_from([0, 1, F - 1, F + 1, 3 * F + 17]) | st.integers(0, 3 * F), seed=st.integers(0, 1000))
def test_any_range_is_the_original_before_and_after_compaction(distributed: Open, data: st.DataObject, what: str,
                                                               size: int, seed: int) -> None:
    with distributed() as store:
        serves_through_a_pass(store, data, what, size, seed)


def test_a_compressed_blob_is_one_object_read_by_ranges_from_any_node(distributed: Open) -> None:
    original = text(7, 40 * F + 123)
    name = "c" + uuid.uuid4().hex[:12]
    with distributed(name) as one, distributed(name) as two:
        digest = one.ingest(original).digest
        early = one.open(digest, F - 10, 3 * F)  # opened on the raw object: its GET is under way
        report = one.compaction.run()
        assert [d for d, _, _ in report.compressed] == [digest]
        blobs = one.blobs
        assert isinstance(blobs, S3Blobs)
        assert not blobs.contains(digest, FORM_RAW) and blobs.contains(digest, FORM_FRAMES_V1)
        forms = {form: location for d, form, location in blobs.stored() if d == digest}
        assert forms.keys() == {FORM_FRAMES_V1} and forms[FORM_FRAMES_V1].endswith(f"{digest.hex}.zf1")
        assert blobs.hash(forms[FORM_FRAMES_V1], "sha256") == (digest.hex, len(original))
        with early:
            assert early.read() == original[F - 10:F - 10 + 3 * F]
        info = two.stat(digest)  # the other node reads the switched record and the compressed object
        assert info.form == FORM_FRAMES_V1 and info.stored_size is not None and info.stored_size < len(original) // 2
        assert_serves(two, digest, original, [(0, 1), (F - 3, 7), (17 * F + 5, 2 * F), (len(original) - 1, 1)])

        # A collector's steps take the compressed form too; a reader opened before the retire finishes from trash/.
        reader = two.open(digest, 20 * F, 4 * F)
        assert blobs.retire(digest) and not blobs.contains(digest, FORM_FRAMES_V1)
        assert list(blobs.retired()) == [digest]
        with reader:
            assert reader.read() == original[20 * F:24 * F]
        blobs.restore(digest)
        assert blobs.contains(digest, FORM_FRAMES_V1) and list(blobs.retired()) == []
        assert two.read_bytes(digest) == original
        assert blobs.retire(digest)
        blobs.purge(digest)
        assert list(blobs.retired()) == [] and list(blobs.stored()) == []


class DistributedCompactionMachine(CompactionMachine):
    """tests/cas/test_compaction.py's machine on a distributed store of its own."""

    def __init__(self, open_store: Open) -> None:
        RuleBasedStateMachine.__init__(self)
        self.root = ""  # nothing on disk
        self.store = open_store(config=StoreConfig(grace=0.0, lease=0.0))
        self.blobs: dict[Digest, bytes] = {}
        self.held: dict[str, set[Digest]] = {}


def test_compaction_beside_pushes_references_and_collection(distributed: Open) -> None:
    run_state_machine_as_test(lambda: DistributedCompactionMachine(distributed), settings=settings(
        max_examples=6, stateful_step_count=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]))
