"""Moving a registry into another store (`berth move-up`: an embedded data directory into PostgreSQL + S3): which of
the registry's tables move, and what a move copied, in the registry's words.

The copy is cas's (cas/transfer.py: every blob re-hashed on the way, rows copied as they are, all of them in one
transaction, resumable). Rows rather than a replay through the registry's API because the rows are the only place
some of it exists: tokens and passwords as hashes, the signing key (so that tokens issued before the move keep
verifying on every node), tag history with its times and actors, event sequence numbers and each webhook's progress
(deliveries go on where they were, nothing is sent twice), grants and the trash exactly as they were.
"""

from __future__ import annotations

from pathlib import Path

from cas import BlobStore
from cas.transfer import Progress, TransferReport, transfer

from . import schema
from .keys import LEGACY_FILE, signing_key
from .schema import DECLARED, META_TABLE

# Tables that stay behind: what only the running source had in flight. (registry_meta is not copied either: the
# target's declaration wrote its own, the same version.)
LEFT_BEHIND = {
    "login_failures": "the login throttle's failures of the last minute",
    "webhook_leases": "which worker of the source delivers to a webhook: the target's workers take leases of their own",
    "uploading": "open upload sessions by owner: the sessions are not moved, clients start those uploads again",
}

# What a move reports, in the registry's nouns: (what, the table whose rows count it).
COUNTED = (("repositories", "repos"), ("manifests", "manifests"), ("tags", "tags"), ("tag history entries", "history"),
           ("accounts", "users"), ("tokens", "pats"), ("passwords", "passwords"), ("projects", "projects"),
           ("grants", "grants"), ("in the trash", "trashed"), ("events", "events"), ("webhooks", "webhooks"),
           ("portal sessions", "sessions"))
# The counted ones first: a refusal names what a person recognises.
MOVED = (*(table for _, table in COUNTED),
         *sorted(DECLARED - LEFT_BEHIND.keys() - {META_TABLE} - {table for _, table in COUNTED}))


def relocate(source: BlobStore, target: BlobStore, progress: Progress | None = None) -> TransferReport:
    """Copy the registry in `source` (a data directory's store nobody else has open) into the empty `target`.
    cas.transfer.TransferRefused if the target is not empty; IncompatibleRegistry if either store's registry
    tables are of another format version."""
    schema.declare(source.index)
    schema.declare(target.index)
    root = source.root
    if root is not None and (Path(root) / LEGACY_FILE).exists():
        signing_key(source)  # a key still only in the earlier file moves into the index, and with it
    return transfer(source, target, MOVED, check_empty=LEFT_BEHIND, progress=progress)


def counts(report: TransferReport) -> dict[str, int]:
    """What the move copied, by the registry's nouns."""
    return {what: report.rows.get(table, 0) for what, table in COUNTED}
