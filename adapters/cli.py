"""The `berth` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from cas import BlobStore, Digest, check
from registry_core.manifests import DEFAULT_MAX_MANIFEST

DEFAULT_DATA = "./berth-data"


def _store(args: argparse.Namespace) -> BlobStore:
    return BlobStore(args.data)


def cmd_selfcheck(args: argparse.Namespace) -> int:
    """Exercise the engine on the data directory: ingest, chunked upload, read back, fsck."""
    size = args.mib << 20
    data = os.urandom(size)
    chunk = 8 << 20
    with _store(args) as store:
        started = time.perf_counter()
        info = store.ingest(data[i:i + chunk] for i in range(0, size, chunk))
        ingest_s = time.perf_counter() - started
        print(f"ingest        {size >> 20} MiB  {size / ingest_s / 2**20:8.0f} MiB/s  {info.digest}")

        other = os.urandom(size)
        expected = Digest.of(other)
        started = time.perf_counter()
        session = store.uploads.create()
        for offset in range(0, size, chunk):
            store.uploads.append(session.id, [other[offset:offset + chunk]], offset=offset)
        store.uploads.finish(session.id, expected)
        upload_s = time.perf_counter() - started
        print(f"chunked       {size >> 20} MiB  {size / upload_s / 2**20:8.0f} MiB/s  {expected}")

        ok = store.read_bytes(info.digest) == data and store.read_bytes(expected) == other
        print(f"read back     {'identical' if ok else 'DIFFERENT'}")
        report = check(store)
        for line in report.lines():
            print(f"fsck          {line}")
    return 0 if ok and not report.damaged else 1


def cmd_fsck(args: argparse.Namespace) -> int:
    with _store(args) as store:
        report = check(store, repair=args.repair)
    for line in report.lines():
        print(line)
    return 1 if report.damaged and not args.repair else 0


def cmd_gc(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.explain:
            for text in args.explain:
                why = store.gc.explain(Digest.parse(text))
                print(f"{why.digest}: {why.reason}")
                for holder in why.holders:
                    print(f"  held by {holder}")
            return 0
        report = store.gc.run(dry_run=args.dry_run)
    verb = "would delete" if report.dry_run else "deleted"
    for digest, size in report.collected:
        print(f"{verb} {digest} ({size} bytes)")
    print(f"{verb} {len(report.collected)} blob(s), {report.bytes_freed} bytes; "
          f"{report.leased} kept by a lease; {report.debris_files} debris file(s) and "
          f"{report.expired_uploads} idle upload(s) removed")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"berth serve: --listen must be HOST:PORT, got {args.listen!r}", file=sys.stderr)
        return 2
    # Create (or check) the data directory once, before the workers fork: each opens it again for itself.
    BlobStore(args.data).close()
    os.environ["BERTH_DATA"] = os.path.abspath(args.data)
    os.environ["BERTH_MAX_MANIFEST"] = str(args.max_manifest)
    print(f"berth: serving {os.environ['BERTH_DATA']} on http://{args.listen}/v2/ "
          f"({args.workers} worker(s), policy {args.policy})", file=sys.stderr, flush=True)
    # granian: the lowest CPU per request and per uploaded GiB measured here (see README, "Why granian").
    # Never task_impl=rust: it breaks anyio.to_thread (PERF-NOTES).
    Granian("adapters.http:app_from_env", factory=True, interface=Interfaces.ASGI, address=host.strip("[]"),
            port=int(port), workers=args.workers, log_access=args.access_log, backlog=2048).serve()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="berth", description="Berth: a container registry built as a storage engine")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_data(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data", default=os.environ.get("BERTH_DATA", DEFAULT_DATA),
                       help="data directory (default: $BERTH_DATA or %(default)s)")
        return p

    p = with_data(sub.add_parser("serve", help="run the registry (OCI Distribution v1.1) on the data directory"))
    p.add_argument("--listen", default="127.0.0.1:5000", help="HOST:PORT to listen on (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server processes (default: one per core)")
    p.add_argument("--policy", choices=["open"], default="open",
                   help="who may do what: 'open' allows everything (local development)")
    p.add_argument("--max-manifest", type=int, default=DEFAULT_MAX_MANIFEST, metavar="BYTES",
                   help="largest manifest accepted (default: %(default)s; the spec requires at least 4 MiB)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = with_data(sub.add_parser("selfcheck", help="exercise the storage engine and report its speed"))
    p.add_argument("--mib", type=int, default=256, help="size of each test blob in MiB")
    p.set_defaults(func=cmd_selfcheck)

    p = with_data(sub.add_parser("fsck", help="re-hash every blob and cross-check the index"))
    p.add_argument("--repair", action="store_true", help="repair what can be repaired (never drops referenced data)")
    p.set_defaults(func=cmd_fsck)

    p = with_data(sub.add_parser("gc", help="delete blobs nobody references once their grace period is over"))
    p.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    p.add_argument("--explain", nargs="+", metavar="DIGEST", help="say why these blobs are retained")
    p.set_defaults(func=cmd_gc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
