"""cas: Berth's content-addressed blob store. Usable on its own: it imports nothing else of Berth's.

    from cas import BlobStore
    with BlobStore("/var/lib/berth") as store:
        info = store.ingest(open("layer.tar.gz", "rb"))
        # Join a write transaction: reference atomically with your own writes. `transact` re-runs `work` if the
        # index map had to grow; `with store.index.write() as txn:` is the same without the retry.
        store.index.transact(lambda txn: store.refs.take(txn, "my-holder", info.digest))
"""

from .digest import ALGORITHMS, DEFAULT_ALGORITHM, Digest, new_hasher
from .errors import (
    BlobUnknown,
    CasError,
    DigestMismatch,
    IncompatibleStore,
    IndexFull,
    InvalidDigest,
    InvalidHolder,
    OffsetMismatch,
    SizeMismatch,
    UnsupportedDigest,
    UploadBusy,
    UploadUnknown,
)
from .fsck import FsckReport, check
from .gc import GcReport, Retention
from .index import Index, Table, Transaction, WriteTransaction
from .reader import BlobReader, InvalidRange
from .store import BlobInfo, BlobStore, StoreConfig
from .uploads import UploadStatus

__all__ = [
    "ALGORITHMS", "DEFAULT_ALGORITHM", "BlobInfo", "BlobReader", "BlobStore", "BlobUnknown", "CasError", "Digest",
    "DigestMismatch", "FsckReport", "GcReport", "IncompatibleStore", "Index", "IndexFull", "InvalidDigest",
    "InvalidHolder", "InvalidRange", "OffsetMismatch", "Retention", "SizeMismatch", "StoreConfig", "Table",
    "Transaction", "UnsupportedDigest", "UploadBusy", "UploadStatus", "UploadUnknown", "WriteTransaction", "check",
    "new_hasher",
]
