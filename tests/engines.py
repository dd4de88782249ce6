"""The distributed engines the tests start (a throwaway PostgreSQL cluster and a SeaweedFS S3 server) live in
benchmarks/harness/engines.py, so that `berth bench --compare --distributed` starts its own the same way without
importing tests/. This name stays for the tests: it is that very module (every name, private ones too, and one
module object, so that a test patching it patches what the fixtures use)."""

import sys

from benchmarks.harness import engines

sys.modules[__name__] = engines
