"""The distributed engines the tests start (a throwaway PostgreSQL cluster and a SeaweedFS S3 server) live in
benchmarks/harness/engines.py, so that `berth bench --compare --distributed` starts its own the same way without
importing tests/. This name stays for the tests (`from tests.engines import Engines`)."""

from benchmarks.harness.engines import *  # noqa: F403
from benchmarks.harness.engines import _as_cluster_user, _postgres_bin, _weed  # noqa: F401
