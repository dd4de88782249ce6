"""A child process for the crash tests: performs one scenario on a data directory and is killed with SIGKILL,
either by a crash point (BERTH_CRASHPOINT, see cas/crashpoints.py) or by the parent at a random moment.

Usage: python crash_child.py SCENARIO DATA_DIR [ARGS...]
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys

from cas import BlobStore, Digest, StoreConfig

CONFIG = StoreConfig(grace=0.0, lease=0.0, upload_ttl=3600.0)


def blob(seed: int, size: int = 3 << 20) -> bytes:
    return random.Random(seed).randbytes(size)


def main() -> None:
    scenario, data = sys.argv[1], sys.argv[2]
    store = BlobStore.on_disk(data, config=CONFIG)
    if scenario == "ingest":  # ingest blob(seed)
        store.ingest(blob(int(sys.argv[3])))
    elif scenario == "upload":  # append two chunks to a fresh session, then finish
        data_ = blob(int(sys.argv[3]))
        session = store.uploads.create()
        print(session.id, flush=True)
        half = len(data_) // 2
        store.uploads.append(session.id, [data_[:half]], offset=0)
        store.uploads.finish(session.id, Digest.of(data_), [data_[half:]], offset=half)
    elif scenario == "finish":  # finish an existing session that already holds all the bytes
        store.uploads.finish(sys.argv[3], Digest.parse(sys.argv[4]))
    elif scenario == "references":  # take references on all given digests in one transaction, die inside it
        digests = [Digest.parse(d) for d in sys.argv[4:]]
        with store.index.write() as txn:
            for digest in digests:
                store.refs.take(txn, sys.argv[3], digest)
            if os.environ.get("DIE_INSIDE_TXN"):
                os.kill(os.getpid(), signal.SIGKILL)
    elif scenario == "gc":
        store.gc.run()
    elif scenario == "compact":  # one compaction pass over what the parent stored
        with store.gc.exclusive(wait=True):
            store.compaction.run()
    elif scenario == "churn":  # random work forever; journal what returned (the parent kills us at random)
        churn(store, sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    store.close()


def churn(store: BlobStore, journal_path: str, seed: int) -> None:
    rng = random.Random(seed)
    journal = open(journal_path, "a")  # noqa: SIM115 - open until the parent kills this process

    def log(**entry: object) -> None:
        journal.write(json.dumps(entry) + "\n")
        journal.flush()
        os.fsync(journal.fileno())

    stored: list[str] = []
    while True:
        op = rng.random()
        if op < 0.4 or not stored:
            data = blob(rng.randrange(40), rng.choice([0, 1, 5000, 300_000, 2 << 20]))
            info = store.ingest(data)
            stored.append(str(info.digest))
            log(op="ingest", digest=str(info.digest), size=info.size)
        elif op < 0.6:
            data = blob(rng.randrange(40), rng.choice([1, 70_000, 3 << 20]))
            session = store.uploads.create()
            step = max(1, len(data) // 3)
            for offset in range(0, len(data), step):
                store.uploads.append(session.id, [data[offset:offset + step]], offset=offset)
            info = store.uploads.finish(session.id, Digest.of(data))
            stored.append(str(info.digest))
            log(op="ingest", digest=str(info.digest), size=info.size)
        elif op < 0.8:
            holder = f"h{rng.randrange(5)}"
            chosen = rng.sample(stored, min(3, len(stored)))
            try:
                with store.index.write() as txn:
                    for text in chosen:
                        store.refs.take(txn, holder, Digest.parse(text))
            except KeyError:  # collected by GC (grace 0) before we referenced it
                continue
            log(op="take", holder=holder, digests=chosen)
        elif op < 0.9:
            holder = f"h{rng.randrange(5)}"
            with store.index.write() as txn:
                store.refs.drop_all(txn, holder)
            log(op="drop_all", holder=holder)
        else:
            store.gc.run()
            log(op="gc")


if __name__ == "__main__":
    main()
