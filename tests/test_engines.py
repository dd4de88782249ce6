"""The engine fixtures themselves: both servers answer, as tests/engines.py promises."""

from __future__ import annotations

import psycopg

from tests.engines import Engines


def test_postgres_and_s3_answer(engines: Engines) -> None:
    with psycopg.connect(engines.postgres.create_database()) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
        assert row is not None and int(row[0]) >= 150000
    client = engines.s3.client()
    bucket = engines.s3.create_bucket()
    client.put_object(Bucket=bucket, Key="k", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="k", Range="bytes=1-3")["Body"].read() == b"ell"
