"""cas: Berth's content-addressed blob store. Usable on its own: it imports nothing else of Berth's.

    from cas import BlobStore
    with BlobStore.on_disk("/var/lib/berth") as store:       # LMDB + files; or BlobStore.in_memory()
        info = store.ingest(open("layer.tar.gz", "rb"))
        # Join a write transaction: reference atomically with your own writes. `transact` re-runs `work` if the
        # index map had to grow; `with store.index.write() as txn:` is the same without the retry.
        store.index.transact(lambda txn: store.refs.take(txn, "my-holder", info.digest))
"""

from .blobs import BlobBytes, Staged
from .compaction import CompactionReport, Usage
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
    StoreMissing,
    StoreUnavailable,
    UndeclaredTable,
    UnsupportedDigest,
    UploadBusy,
    UploadUnknown,
)
from .fsck import FsckReport, check
from .gc import GcReport, Retention
from .index import Index, Table, Transaction, WriteTransaction
from .lmdb_index import LmdbIndex
from .local_blobs import LocalBlobs
from .memory_blobs import MemoryBlobs
from .memory_index import MemoryIndex
from .reader import BlobReader, InvalidRange
from .store import BlobInfo, BlobStore, StoreConfig
from .table_shape import TableShape, ValueStruct
from .uploads import UploadStatus

__all__ = [
    "ALGORITHMS", "DEFAULT_ALGORITHM", "BlobBytes", "BlobInfo", "BlobReader", "BlobStore", "BlobUnknown", "CasError",
    "CompactionReport",
    "Digest", "DigestMismatch", "FsckReport", "GcReport", "IncompatibleStore", "Index", "IndexFull", "InvalidDigest",
    "InvalidHolder", "InvalidRange", "LmdbIndex", "LocalBlobs", "MemoryBlobs", "MemoryIndex", "OffsetMismatch",
    "Retention", "SizeMismatch", "Staged", "StoreConfig", "StoreMissing", "StoreUnavailable", "Table", "TableShape",
    "Transaction",
    "UndeclaredTable", "UnsupportedDigest", "UploadBusy", "UploadStatus", "UploadUnknown", "Usage", "ValueStruct",
    "WriteTransaction", "check", "new_hasher",
]
