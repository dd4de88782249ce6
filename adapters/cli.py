"""The `berth` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence

from cas import BlobStore, Digest, check
from registry_core.accounts import AccountError, Accounts
from registry_core.manifests import DEFAULT_MAX_MANIFEST
from registry_core.policy import load_policy
from registry_core.projects import ProjectError, Projects
from registry_core.registry import Registry

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


def _registry(args: argparse.Namespace) -> Registry:
    return Registry.open(args.data)


def _duration(text: str) -> float:
    """`30d`, `12h`, `45m`, `90s` or plain seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"a duration like 30d, 12h, 45m or 90s, not {text!r}")
    return float(int(number) * units[unit])


def _fail(message: str) -> int:
    print(f"berth: {message}", file=sys.stderr)
    return 1


def cmd_user(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        accounts = Accounts(registry.store)
        try:
            if args.action == "add":
                user = accounts.add_user(args.name, args.certified, args.admin)
            elif args.action == "certify":
                user = accounts.update_user(args.name, certified=True)
            else:
                for user in accounts.users():
                    print(f"{user.name}\tcertified={user.certified}\tadmin={user.admin}")
                return 0
        except AccountError as exc:
            return _fail(str(exc))
    print(f"user {user.name}: certified={user.certified} admin={user.admin}", file=sys.stderr)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        accounts = Accounts(registry.store)
        try:
            if args.action == "create":
                record, secret = accounts.create_token(args.user, args.scope.split(","), args.expires, args.label)
                print(f"token {record.id} for {record.user}: scopes {','.join(record.scopes)}; "
                      f"{'expires ' + time.ctime(record.expires) if record.expires else 'no expiry'}. "
                      "The secret below is shown once; use it as the password of docker/podman/skopeo login.",
                      file=sys.stderr)
                print(secret)
            elif args.action == "list":
                for t in accounts.tokens(args.user):
                    state = "revoked" if t.revoked else ("expired" if not t.active(time.time()) else "active")
                    print(f"{t.id}\t{','.join(t.scopes)}\t{state}\t{t.label}")
            else:
                accounts.revoke(args.token_id)
                print(f"token {args.token_id} revoked", file=sys.stderr)
        except AccountError as exc:
            return _fail(str(exc))
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        if Accounts(registry.store).user(args.owner) is None:
            return _fail(f"no user {args.owner}")
        project = Projects(registry.store).create(args.name, args.owner)
    print(f"project {project.name} ({project.id}) owned by {project.owner}", file=sys.stderr)
    print(project.id)
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        projects = Projects(registry.store)
        try:
            if args.command == "grant":
                projects.grant(args.target, args.principal, args.level)
                print(f"{args.principal} has {args.level} on {args.target}", file=sys.stderr)
            elif not projects.revoke(args.target, args.principal):
                return _fail(f"{args.principal} had no grant on {args.target}")
        except (ProjectError, ValueError) as exc:
            return _fail(str(exc))
    return 0


def cmd_trash(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        projects = Projects(registry.store)
        try:
            if args.command == "trash":
                projects.trash(args.target)
            elif args.command == "restore":
                if not projects.restore(args.target):
                    return _fail(f"{args.target} is not in the trash")
            else:
                if not projects.is_trashed(args.target if "/" in args.target else f"{args.target}/x"):
                    return _fail(f"{args.target} is not in the trash: trash it first")
                repos = [args.target] if "/" in args.target else registry.repositories(f"{args.target}/")
                dropped = sum(registry.purge_repository(repo) for repo in repos)
                projects.forget(args.target)
                print(f"purged {len(repos)} repositor(ies), {dropped} manifest(s); `berth gc` reclaims the space",
                      file=sys.stderr)
        except (ProjectError, ValueError) as exc:
            return _fail(str(exc))
    return 0


def first_start(registry: Registry, data: str, listen: str) -> None:
    """On an empty data directory under the project policy: an admin account, and how to get going."""
    accounts = Accounts(registry.store)
    if accounts.users():
        return
    accounts.add_user("admin", certified=True, admin=True)
    print("berth: first start: created the site admin 'admin'. To push within a minute:\n"
          f"  TOKEN=$(scripts/berth token create admin --scope view,download,modify --data {data})\n"
          f"  PROJECT=$(scripts/berth project create demo --owner admin --data {data})\n"
          f"  echo \"$TOKEN\" | podman login --tls-verify=false -u admin --password-stdin {listen}\n"
          f"  podman push --tls-verify=false IMAGE {listen}/$PROJECT/my-repo:v1", file=sys.stderr, flush=True)


M_ARENA_MAX = -8  # glibc malloc.h


def _lean_memory() -> None:
    """Before the workers fork. (1) Import the app here and freeze what exists out of the cyclic GC: the workers
    share these pages instead of each importing, and the GC touching, a private copy. (2) At most two malloc arenas
    per process: glibc gives each new thread an arena of its own, and the upload and pipeline threads left ~20 MiB
    of half-empty arenas per worker (measured: peak PSS of 8 parallel skopeo pushes 115 -> 93 MiB). Python objects
    come from pymalloc under the GIL, so fewer arenas cost no contention."""
    import ctypes
    import gc

    import adapters.http.app  # noqa: F401

    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)


def cmd_serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"berth serve: --listen must be HOST:PORT, got {args.listen!r}", file=sys.stderr)
        return 2
    # Create (or check) the data directory once, before the workers fork: each opens it again for itself.
    with Registry.open(args.data) as registry:
        load_policy(args.policy, registry)  # a bad --policy fails here, not in every worker
        if args.policy == "project":
            first_start(registry, args.data, args.listen)
    os.environ["BERTH_POLICY"] = args.policy
    os.environ["BERTH_DATA"] = os.path.abspath(args.data)
    os.environ["BERTH_MAX_MANIFEST"] = str(args.max_manifest)
    if args.public_url:
        os.environ["BERTH_PUBLIC_URL"] = args.public_url
    if args.forwarded_header:
        os.environ["BERTH_FORWARDED_HEADER"] = args.forwarded_header
    print(f"berth: serving {os.environ['BERTH_DATA']} on http://{args.listen}/v2/ "
          f"({args.workers} worker(s), policy {args.policy})", file=sys.stderr, flush=True)
    _lean_memory()
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
    p.add_argument("--policy", default="project",
                   help="who may do what: 'project' (projects, grants, tokens; the default), 'open' (everything "
                        "allowed, no login: local development only) or module:callable")
    p.add_argument("--max-manifest", type=int, default=DEFAULT_MAX_MANIFEST, metavar="BYTES",
                   help="largest manifest accepted (default: %(default)s; the spec requires at least 4 MiB)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--public-url", default=os.environ.get("BERTH_PUBLIC_URL"), metavar="URL",
                   help="how clients reach the registry, e.g. https://registry.example.org (behind a TLS proxy); "
                        "the token realm names it (default: the request's Host)")
    p.add_argument("--forwarded-header", default=os.environ.get("BERTH_FORWARDED_HEADER"), metavar="NAME",
                   help="a header a trusted proxy sets to the client's address, e.g. X-Forwarded-For (its last "
                        "hop counts); unset: the peer's address (never trust it without such a proxy)")
    p.set_defaults(func=cmd_serve)

    p = with_data(sub.add_parser("user", help="accounts: add NAME [--certified] [--admin] | certify NAME | list"))
    p.add_argument("action", choices=["add", "certify", "list"])
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--certified", action="store_true", help="may push (with an edit grant)")
    p.add_argument("--admin", action="store_true", help="site admin: every level on every project")
    p.set_defaults(func=cmd_user)

    p = with_data(sub.add_parser("token", help="personal access tokens: create USER --scope ... | list USER | "
                                               "revoke TOKEN_ID"))
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("user", nargs="?", default="", help="the user (create, list) or the token id (revoke)")
    p.add_argument("--scope", default="view,download", help="comma-separated: view, download, modify")
    p.add_argument("--expires", type=_duration, default=None, help="lifetime, e.g. 30d (default: none)")
    p.add_argument("--label", default="", help="what the token is for")
    p.set_defaults(func=lambda a: cmd_token(argparse.Namespace(**{**vars(a), "token_id": a.user})))

    p = with_data(sub.add_parser("project", help="create NAME --owner USER (prints the new project id)"))
    p.add_argument("action", choices=["create"])
    p.add_argument("name")
    p.add_argument("--owner", required=True)
    p.set_defaults(func=cmd_project)

    p = with_data(sub.add_parser("grant", help="grant TARGET PRINCIPAL LEVEL (TARGET: syn123 or syn123/repo; "
                                               "PRINCIPAL: a user or 'public')"))
    p.add_argument("target")
    p.add_argument("principal")
    p.add_argument("level", choices=["view", "download", "edit", "edit-delete", "admin"])
    p.set_defaults(func=cmd_grant)
    p = with_data(sub.add_parser("revoke", help="revoke TARGET PRINCIPAL"))
    p.add_argument("target")
    p.add_argument("principal")
    p.set_defaults(func=cmd_grant)
    for name, text in (("trash", "put a project or repository in the trash (it answers nothing; its name stays "
                                 "reserved)"),
                       ("restore", "take it out of the trash"),
                       ("purge", "drop a trashed project's or repository's manifests and tags for good")):
        p = with_data(sub.add_parser(name, help=text))
        p.add_argument("target")
        p.set_defaults(func=cmd_trash)

    sub.add_parser("bench", help="benchmarks: --url URL, or --compare (Berth beside CNCF Distribution); "
                                 "see `berth bench --help`", add_help=False)

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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the harness has its own options (benchmarks/harness/run.py)
        from benchmarks.harness.run import main as bench
        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
