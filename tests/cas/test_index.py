"""Index.keys (the listing walk that runs in C) agrees with scan for any keys, prefix and start, 0xff included."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cas.index import Index

# Few distinct bytes, the extremes among them, so that prefixes, shared stems and 0xff carries are common.
_byte = st.sampled_from([b"\x00", b"\x01", b"a", b"\xfe", b"\xff"])
_key = st.lists(_byte, min_size=1, max_size=5).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(keys=st.sets(_key, max_size=30), prefix=st.lists(_byte, max_size=3).map(b"".join),
       start=st.none() | _key)
def test_keys_agree_with_scan(keys: set[bytes], prefix: bytes, start: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        index = Index(Path(tmp), map_size=1 << 24)
        table = index.table("t")
        with index.write() as txn:
            for k in keys:
                txn.put(table, k, b"v")
        with index.read() as txn:
            expected = [k for k, _ in txn.scan(table, prefix=prefix, start=start)]
            assert list(txn.keys(table, prefix=prefix, start=start)) == expected
        assert expected == sorted(k for k in keys if k.startswith(prefix) and (start is None or k >= start))
