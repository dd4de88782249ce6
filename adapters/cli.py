"""The `berth` command line: serve, administer (users, tokens, projects, grants, trash), collect garbage, check.

What every command keeps to:
- It says on stderr what it did, and prints what a script wants (ids, secrets, listings) on stdout.
- A mistake is one line `berth: ...` on stderr and a non-zero exit: 2 for a usage error, 1 for a failure; never a
  traceback (main() turns every domain error into its message). Acting on something that does not exist fails.
- `--data` (or $BERTH_DATA) is a path relative to the caller's working directory, and must name an existing data
  directory: only `serve` creates one, so a mistyped path never reads as an empty registry.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import shlex
import socket
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from adapters.logs import granian_config
from adapters.settings import (
    CONFIG_ENV,
    Settings,
    SettingsError,
    StoreSettings,
    parse_listen,
    policy_problem,
    render,
    workers,
)
from cas import BlobStore, CasError, Digest, StoreMissing, Usage, check
from cas.gc import utc
from cas.transfer import TransferReport
from registry_core.accounts import Accounts, PersonalToken, User
from registry_core.errors import RegistryError
from registry_core.events import EVENT_TYPES
from registry_core.policy import load_policy
from registry_core.projects import IGNORED, INHERITED, LEVELS, LOCAL, OWNER, Projects
from registry_core.registry import Registry, RegistryConfig
from registry_core.webhooks import CLOUDEVENTS, FORMATS, Webhooks

DEFAULT_DATA = "./berth-data"


class Failure(Exception):
    """A command that cannot do what was asked: its message is the whole answer (exit 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line like every other failure (argparse's exit status, 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"berth: {message} (see `{self.prog} --help`)\n")


def _say(text: str) -> None:
    """What a command did, for the person at the terminal (stdout stays for what a script reads)."""
    print(text, file=sys.stderr, flush=True)


# -- values from the command line -------------------------------------------------------------------------------------
def _duration(text: str) -> float:
    """`30d`, `12h`, `45m`, `90s` or plain seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"a duration like 30d, 12h, 45m or 90s, not {text!r}")
    return float(int(number) * units[unit])


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"a whole number above 0, not {text!r}")
    return int(text)


def _listen(text: str) -> str:
    """HOST:PORT (an IPv6 host in brackets): a mistake in the flag is a usage error (the settings check it too)."""
    try:
        parse_listen(text, "")
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc).lstrip(": ")) from None
    return text


def _policy(text: str) -> str:
    problem = policy_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _span(seconds: float) -> str:
    """3h 12m, 2d 4h, 45s: the two largest units, for a person."""
    left = int(round(abs(seconds)))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, left = divmod(left, size)
        if amount or parts:
            parts.append(f"{amount}{unit}")
    kept = [p for p in parts[:2] if not p.startswith("0")]
    return " ".join(kept) or "0s"


def _when(moment: float, now: float) -> str:
    """`2026-11-22 14:03:12 UTC (in 3h 12m)`."""
    relative = f"in {_span(moment - now)}" if moment >= now else f"{_span(now - moment)} ago"
    return f"{utc(moment)} ({relative})"


# -- the data directory -----------------------------------------------------------------------------------------------
def existing_data(path: str) -> str:
    """The data directory as an absolute path, if it is one (Failure otherwise)."""
    full = os.path.abspath(path)
    hint = "check --data (or $BERTH_DATA); only `berth serve` creates a data directory"
    if not os.path.isdir(full):
        raise Failure(f"no data directory {full}: {hint}")
    if not os.path.isfile(os.path.join(full, "index", "data.mdb")):
        raise Failure(f"{full} is not a Berth data directory (no index/data.mdb in it): {hint}")
    return full


def _store(args: argparse.Namespace, create: bool = False) -> BlobStore:
    """The data directory's store, with the settings' grace, lease and upload lifetime (a `gc` pass uses its grace).
    A distributed store must exist already unless `create` (move-up): as with --data, only `serve` (and move-up)
    create one, so a mistyped schema name never reads as an empty registry."""
    settings: Settings = args.settings
    try:
        return settings.store.open_store(create)  # the data directory's, or the distributed one --metadata/--blobs name
    except SettingsError as exc:
        raise Failure(str(exc)) from None
    except StoreMissing as exc:
        raise Failure(f"{exc}: check --metadata (or $BERTH_METADATA); only `berth serve` and `berth move-up` create "
                      "a store") from None


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(_store(args), RegistryConfig(max_manifest=args.settings.store.max_manifest))


# -- users ------------------------------------------------------------------------------------------------------------
def _flags(user: User) -> str:
    return (f"{'certified' if user.certified else 'not certified'}, "
            f"{'a site admin' if user.admin else 'not an admin'}")


def cmd_user_add(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        user = Accounts(registry.store).add_user(args.name, args.certified, args.admin)
    _say(f"added user {user.name} ({_flags(user)}); `berth token create {user.name}` gives it a login")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        users = Accounts(registry.store).users()
    for user in users:
        print(f"{user.name}\tcertified={user.certified}\tadmin={user.admin}\t{utc(user.created)}"
              + ("\tdisabled" if user.disabled else ""))
    _say(f"{len(users)} user(s)")
    return 0


# action: (field, value, what the command does, what the user's state means afterwards)
USER_FLAGS = {
    "certify": ("certified", True, "let NAME push and delete (where a grant allows)",
                "is certified: may push and delete where a grant allows"),
    "uncertify": ("certified", False, "take certification back: NAME may no longer push or delete",
                  "is not certified: may not push or delete (unless a site admin)"),
    "admin": ("admin", True, "make NAME a site admin (every level on every project)",
              "is a site admin: every level on every project"),
    "unadmin": ("admin", False, "take site admin away from NAME", "is not a site admin"),
    "disable": ("disabled", True, "disable NAME: no sign-in, and its tokens stop working (they stay)",
                "is disabled: cannot sign in, its tokens do not work"),
    "enable": ("disabled", False, "enable NAME again (its tokens work again)", "is enabled"),
}


def cmd_user_flag(args: argparse.Namespace) -> int:
    field, value, _, meaning = USER_FLAGS[args.action]
    with _registry(args) as registry:
        accounts = Accounts(registry.store)
        before = accounts.user(args.name)
        if before is None:
            raise Failure(f"no user {args.name}")
        after = accounts.update_user(args.name, **{field: value})
    _say(f"{after.name} {meaning}" + (" (unchanged)" if getattr(before, field) == value else ""))
    return 0


def cmd_user_password(args: argparse.Namespace) -> int:
    """Set NAME's password for the portal's sign-in page: read from the terminal (asked twice) or from stdin's first
    line, never from the command line (it would show in `ps` and in shell history)."""
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"new password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise Failure("the two passwords differ; nothing changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    with _registry(args) as registry:
        Accounts(registry.store).set_password(args.name, password)
    _say(f"set the password of {args.name}: it signs in to the portal with it (registry clients still use tokens)")
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        tokens, grants = Projects(registry.store).remove_user(args.name)
    _say(f"removed user {args.name}: {tokens} token(s) deleted (they stop working at once), {grants} grant(s) dropped")
    return 0


# -- tokens -----------------------------------------------------------------------------------------------------------
def _expiry(token: PersonalToken) -> str:
    return f"expires {utc(token.expires)}" if token.expires else "no expiry"


def cmd_token_create(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        record, secret = Accounts(registry.store).create_token(args.user, args.scope.split(","), args.expires,
                                                               args.label)
    _say(f"token {record.id} for {record.user}: scopes {','.join(record.scopes)}; {_expiry(record)}. The secret "
         "below is shown once; use it as the password of docker/podman/skopeo login.")
    print(secret)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        accounts = Accounts(registry.store)
        if accounts.user(args.user) is None:
            raise Failure(f"no user {args.user}")
        tokens, now = accounts.tokens(args.user), registry.store.clock()
    for t in tokens:
        state = "revoked" if t.revoked else ("active" if t.active(now) else "expired")
        print(f"{t.id}\t{','.join(t.scopes)}\t{state}\t{_expiry(t)}\t{t.label}")
    _say(f"{len(tokens)} token(s) for {args.user}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        accounts = Accounts(registry.store)
        before = accounts.token(args.token_id)
        record = accounts.revoke(args.token_id)  # AccountError for an unknown id
    if before is not None and before.revoked:
        _say(f"token {record.id} of {record.user} was already revoked")
    else:
        _say(f"revoked token {record.id} of {record.user}: it stops working at once")
    return 0


# -- projects, grants, trash ------------------------------------------------------------------------------------------
def cmd_project_create(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        project = Projects(registry.store).create(args.name, args.owner)
    _say(f"created project {project.name} ({project.id}) owned by {project.owner}; "
         f"its repositories are {project.id}/<name>")
    print(project.id)
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        projects = Projects(registry.store)
        found = [(p, projects.is_trashed(p.id)) for p in projects.all()]
    for project, trashed in found:
        print(f"{project.id}\t{project.name}\t{project.owner}\t{utc(project.created)}\t"
              f"{'trashed' if trashed else 'active'}")
    _say(f"{len(found)} project(s), {sum(t for _, t in found)} in the trash")
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        projects = Projects(registry.store)
        target = projects.check_target(args.target)
        before = projects.grants(target)
        projects.grant(target, args.principal, args.level)
        project_grants = projects.grants(target.split("/", 1)[0]) if "/" in target else {}
    replaced = f" (was {before[args.principal]})" if args.principal in before else ""
    _say(f"{args.principal} has {args.level} on {target}{replaced}")
    if not before and project_grants:
        _say(f"{target} now has grants of its own: the {len(project_grants)} grant(s) of its project no longer "
             "apply to it (see `berth grants " + target + "`)")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        projects = Projects(registry.store)
        target = projects.check_target(args.target)
        level = projects.grants(target).get(args.principal)
        if level is None or not projects.revoke(target, args.principal):
            raise Failure(f"{args.principal} has no grant on {target} (see `berth grants {target}`)")
        left = projects.grants(target)
    _say(f"revoked {args.principal}'s {level} on {target}")
    if "/" in target and not left:
        _say(f"{target} has no grants of its own any more: its project's grants apply to it again")
    return 0


SOURCES = {OWNER: "owner", LOCAL: "local", INHERITED: "inherited from the project",
           IGNORED: "inherited (ignored: the repository has grants of its own)"}


def cmd_grants(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        projects = Projects(registry.store)
        target = projects.check_target(args.target)
        sharing, trashed = projects.sharing(target), projects.is_trashed(target)
    for grant in sharing:
        print(f"{grant.principal}\t{grant.level}\t{SOURCES[grant.source]}")
    _say(f"grants on {target}; site admins have admin everywhere (`berth user list`)"
         + ("; it is in the trash: everything is refused until `berth restore`" if trashed else ""))
    return 0


def cmd_trash(args: argparse.Namespace) -> int:
    target = args.target  # a valid target is its own canonical text; trash() refuses any other
    with _registry(args) as registry:
        if not Projects(registry.store).trash(target):
            _say(f"{target} was already in the trash")
            return 0
    _say(f"{target} is in the trash: every operation on it is refused (whatever tokens were issued) and its name "
         f"stays reserved; `berth restore {target}` takes it back, `berth purge {target}` drops it")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    target = args.target  # as in cmd_trash
    with _registry(args) as registry:
        if not Projects(registry.store).restore(target):
            raise Failure(f"{target} is not in the trash")
    _say(f"restored {target}: it answers as before")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        purged = registry.purge(args.target)
    _say(f"purged {purged.target}: {purged.repositories} repositor(ies), {purged.manifests} manifest(s); `berth gc` "
         "reclaims the space once the blobs' grace period is over")
    return 0


# -- webhooks ---------------------------------------------------------------------------------------------------------
def _webhooks(registry: Registry) -> Webhooks:
    return Webhooks(registry.store, registry.outbox)


def cmd_webhook_add(args: argparse.Namespace) -> int:
    events = tuple(t.strip() for t in args.events.split(",") if t.strip()) if args.events else ()
    with _registry(args) as registry:
        endpoint = _webhooks(registry).add(args.name, args.url, authorization=args.authorization, secret=args.secret,
                                           events=events, format=args.format, batch=args.batch)
    _say(f"added webhook {endpoint.name}: {endpoint.format} POSTs to {endpoint.url} of "
         f"{', '.join(endpoint.events) if endpoint.events else 'every event'} committed from now on; a running "
         "`berth serve` starts delivering within a second")
    return 0


def cmd_webhook_list(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        webhooks = _webhooks(registry)
        rows = [(e, webhooks.state(e.name), len(webhooks.dead(e.name))) for e in webhooks.endpoints()]
    for endpoint, state, dead in rows:
        shown = endpoint.shown()  # secrets by presence only
        extras = [f"authorization={shown['authorization']}"] if shown["authorization"] else []
        extras += ["secret=set"] if shown["secret"] else []
        progress = f"delivered-through={state.cursor if state else 0}\tdead={dead}"
        if state and state.attempts:
            progress += f"\tretrying seq {state.current} (try {state.attempts + 1}: {state.last_error})"
        print(f"{endpoint.name}\t{endpoint.url}\t{shown['format']}\t"
              f"events={','.join(endpoint.events) if endpoint.events else 'all'}\t{progress}"
              + "".join(f"\t{extra}" for extra in extras))
    _say(f"{len(rows)} webhook(s)")
    return 0


def cmd_webhook_remove(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        dead = _webhooks(registry).remove(args.name)
    _say(f"removed webhook {args.name}" + (f" and its {dead} dead letter(s)" if dead else "")
         + "; nothing more is sent to it")
    return 0


def cmd_webhook_dead(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        letters = _webhooks(registry).dead(args.name)
    for letter in letters:
        print(f"{letter.endpoint}\t{letter.seq}\t{letter.attempts} tries\t{utc(letter.time)}\t"
              f"{'re-queued' if letter.replay else 'dead'}\t{letter.error}")
    _say(f"{len(letters)} dead letter(s); `berth webhook replay NAME --all` sends them again")
    return 0


def cmd_webhook_replay(args: argparse.Namespace) -> int:
    if args.seq is None and not args.all:
        raise Failure("say which dead letters: --seq N or --all (see `berth webhook dead`)")
    with _registry(args) as registry:
        count = _webhooks(registry).replay(args.name, args.seq)
    _say(f"re-queued {count} dead letter(s) of webhook {args.name}: a running `berth serve` sends them before its "
         "next new event")
    return 0


def _webhook_parser(group: argparse._SubParsersAction[_Parser], command: Callable[..., _Parser]) -> None:
    p = command(group, "add", cmd_webhook_add, "send events to URL from now on (POSTs, at least once)")
    p.add_argument("name")
    p.add_argument("url")
    p.add_argument("--secret", default=None, help="sign each body: header Berth-Signature: sha256=<hex HMAC-SHA256 "
                                                  "of the body with this secret> (as GitHub's X-Hub-Signature-256)")
    p.add_argument("--authorization", default=None, metavar="VALUE",
                   help="a static Authorization header value, e.g. 'Bearer abc' (stored; never shown in full)")
    p.add_argument("--events", default=None, metavar="TYPE,...", help="only these event types (default: all): "
                   + ", ".join(EVENT_TYPES))
    p.add_argument("--format", choices=FORMATS, default=CLOUDEVENTS,
                   help="cloudevents (CloudEvents 1.0 JSON, the default) or compat (the Distribution notification "
                        "envelope, for an existing listener)")
    p.add_argument("--batch", action="store_true",
                   help="cloudevents: up to 100 events per POST in CloudEvents' JSON batch mode "
                        "(application/cloudevents-batch+json) instead of one")
    command(group, "list", cmd_webhook_list, "every webhook: name, URL, format, events, progress (never secrets)")
    command(group, "remove", cmd_webhook_remove, "stop sending to a webhook and forget it").add_argument("name")
    command(group, "dead", cmd_webhook_dead, "events given up after the retry limit").add_argument("name", nargs="?")
    p = command(group, "replay", cmd_webhook_replay, "send dead letters again (in order, with fresh tries)")
    p.add_argument("name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seq", type=_positive, default=None, metavar="N", help="the dead letter of event N")
    which.add_argument("--all", action="store_true", help="all of the webhook's dead letters")


# -- the store --------------------------------------------------------------------------------------------------------
def cmd_selfcheck(args: argparse.Namespace) -> int:
    """Exercise the engine in a temporary store (never the live data): ingest, chunked upload, read back, fsck."""
    size, chunk = args.mib << 20, 8 << 20
    if args.dir is not None and not os.path.isdir(args.dir):
        raise Failure(f"no directory {os.path.abspath(args.dir)} (--dir)")
    within = os.path.abspath(args.dir) if args.dir is not None else None
    with (tempfile.TemporaryDirectory(prefix="berth-selfcheck-", dir=within) as scratch,
          BlobStore.on_disk(scratch) as store):
        _say(f"selfcheck in {scratch} (a temporary store, removed afterwards)")
        data = os.urandom(size)
        started = time.perf_counter()
        info = store.ingest(data[i:i + chunk] for i in range(0, size, chunk))
        ingest_s = time.perf_counter() - started
        print(f"ingest        {args.mib} MiB  {size / ingest_s / 2**20:8.0f} MiB/s  {info.digest}")

        other = os.urandom(size)
        expected = Digest.of(other)
        started = time.perf_counter()
        session = store.uploads.create()
        for offset in range(0, size, chunk):
            store.uploads.append(session.id, [other[offset:offset + chunk]], offset=offset)
        store.uploads.finish(session.id, expected)
        upload_s = time.perf_counter() - started
        print(f"chunked       {args.mib} MiB  {size / upload_s / 2**20:8.0f} MiB/s  {expected}")

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


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def cmd_gc(args: argparse.Namespace) -> int:
    with _store(args) as store:
        now, lease = store.clock(), store.config.lease
        if args.explain:
            for why in [store.gc.explain(Digest.parse(text)) for text in args.explain]:  # all parsed, then shown
                due = why.collectable_at
                print(f"{why.digest}: {why.reason}" + (f" (in {_span(due - now)})" if due and due > now else ""))
                if why.stored:
                    print(f"  {why.size} bytes")
                for holder in why.holders:
                    print(f"  held by {holder}")
            return 0
        if args.dry_run:
            report = store.gc.run(dry_run=True)
            _say(_usage_line(store.compaction.usage()))
        else:
            with store.gc.exclusive(wait=True):  # never beside the server's own scheduled pass
                report = store.gc.run()
    verb = "would delete" if report.dry_run else "deleted"
    for digest, size in report.collected:
        print(f"{verb} {digest} ({size} bytes)")
    _say(f"{verb} {len(report.collected)} blob(s), {_mib(report.bytes_freed)}"
         + (f"; {report.leased} past their grace period but kept by a lease (a client asked for them within "
            f"{_span(lease)})" if report.leased else "")
         + ("" if report.dry_run else f"; removed {report.debris_files} debris file(s) and "
                                      f"{report.expired_uploads} idle upload session(s)"))
    if report.first_due is None or report.last_due is None:
        _say("no unreferenced blob waits for its grace period")
    elif report.waiting == 1:
        _say(f"1 unreferenced blob, {_mib(report.waiting_bytes)}, waits for its grace period ({_span(report.grace)}): "
             f"a pass may delete it from {_when(report.first_due, now)}")
    else:
        when = (f"them from {_when(report.first_due, now)}" if report.first_due == report.last_due else
                f"the first from {_when(report.first_due, now)}, the last from {_when(report.last_due, now)}")
        _say(f"{report.waiting} unreferenced blobs, {_mib(report.waiting_bytes)}, wait for their grace period "
             f"({_span(report.grace)}): a pass may delete {when}")
    return 0


def _usage_line(usage: Usage) -> str:
    """Stored against original bytes: what compression at rest saves (cas/compaction.py)."""
    waiting = f"; {usage.pending} wait for a compaction pass" if usage.pending else ""
    return (f"stored {_mib(usage.stored_bytes)} for {_mib(usage.original_bytes)} of blobs ({usage.ratio:.2f}); "
            f"{usage.compressed} of {usage.blobs} blob(s) kept compressed{waiting}")


def cmd_compact(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.dry_run:
            _say(_usage_line(store.compaction.usage()))
            return 0
        with store.gc.exclusive(wait=True):  # never beside the server's own collection or compaction pass
            report = store.compaction.run(max_seconds=args.max_seconds)
        usage = store.compaction.usage()
    for digest, original, stored in report.compressed:
        print(f"compressed {digest} ({original} -> {stored} bytes)")
    for damage in report.damaged:
        print(f"not compacted, run berth fsck: {damage}")
    _say(f"assessed {report.assessed} blob(s): {len(report.compressed)} compressed ({_mib(report.bytes_saved)} "
         f"saved), {report.kept_raw} kept as they are; removed {report.debris} superseded file(s)")
    _say(_usage_line(usage))
    return 1 if report.damaged else 0


# -- moving up --------------------------------------------------------------------------------------------------------
def cmd_move_up(args: argparse.Namespace) -> int:
    """Copy the data directory (--data) into the distributed store (--metadata, --blobs), which must be empty."""
    from cas.lmdb_index import open_elsewhere
    from registry_core.relocation import LEFT_BEHIND, counts, relocate

    store = args.settings.store
    if not (store.metadata and store.blobs):
        raise Failure("move-up copies the data directory (--data) into the distributed store: name it with "
                      "--metadata postgresql://… and --blobs s3://…")
    data = existing_data(args.data)
    if open_elsewhere(Path(data) / "index"):
        raise Failure(f"another process has {data} open (a running `berth serve`, or another berth command): stop "
                      "it first; move-up copies a data directory nobody writes meanwhile")
    last = [time.monotonic()]

    def progress(report: TransferReport) -> None:
        if time.monotonic() - last[0] >= 10:  # a line now and then for a long move, not one per blob
            last[0] = time.monotonic()
            _say(f"... {report.blobs} blob(s), {_mib(report.blob_bytes)} so far")

    with BlobStore.on_disk(data) as source, _store(args, create=True) as target:
        report = relocate(source, target, progress)
    copied = counts(report)
    if args.json:
        print(json.dumps({
            "source": data, "resumed": report.resumed, **{what.replace(" ", "_"): n for what, n in copied.items()},
            "blobs": report.blobs + report.inline, "blob_bytes": report.blob_bytes + report.inline_bytes,
            "files": {"count": report.blobs, "bytes": report.blob_bytes, "stored_bytes": report.stored_bytes,
                      "compressed": report.compressed, "already_in_target": report.already},
            "inline": {"count": report.inline, "bytes": report.inline_bytes},
            "failed": [{"digest": f.digest, "reason": f.reason, "holders": f.holders, "outcome": f.outcome()}
                       for f in report.failed],
            "skipped": _left_out(report, LEFT_BEHIND), "rows": report.rows}, indent=2))
    else:
        print(f"blobs\t{report.blobs + report.inline}\t{_mib(report.blob_bytes + report.inline_bytes)}"
              f"\t({report.blobs} in the bucket, {_mib(report.stored_bytes)} stored, {report.compressed} compressed"
              + (f", {report.already} copied by the earlier run" if report.already else "")
              + f"; {report.inline} inline in the index)")
        for what, count in copied.items():
            print(f"{what}\t{count}")
        for failure in report.failed:
            print(f"failed\t{failure.digest}\t{failure.reason}: {failure.outcome()}")
        for item in _left_out(report, LEFT_BEHIND):
            print(f"skipped\t{item['what']}\t{item['reason']}")
    moved = f"moved {data} into the distributed store" + (" (resumed)" if report.resumed else "")
    if report.failed:
        _say(f"{moved}, but {len(report.failed)} blob(s) failed verification and were not copied as good (above; "
             f"`berth fsck --data {data}` says more); pushing the same bytes again heals them")
        return 1
    _say(f"{moved}: every blob verified. Start `berth serve --metadata … --blobs …` on each node; the data "
         "directory is left as it was")
    return 0


def _left_out(report: TransferReport, behind: dict[str, str]) -> list[dict[str, str | int]]:
    """What the move did not copy, and why (beside the failed blobs)."""
    out: list[dict[str, str | int]] = []
    if report.uploads:
        out.append({"what": f"{report.uploads} open upload session(s)", "count": report.uploads,
                    "reason": behind["uploading"]})
    if report.collecting:
        out.append({"what": f"{report.collecting} blob(s) being collected", "count": report.collecting,
                    "reason": "a collection pass of the source had claimed them (nothing references them)"})
    if report.missing:
        out.append({"what": f"{report.missing} blob record(s) already missing in the source", "count": report.missing,
                    "reason": "copied as missing records (the holders that name them kept): push them again"})
    for table, reason in behind.items():
        if table != "uploading":
            out.append({"what": f"table {table}", "count": 0, "reason": reason})
    return out


# -- serve ------------------------------------------------------------------------------------------------------------
POLICIES = {"project": "log in with a personal access token; projects and grants decide who may do what",
            "open": "no login, everyone may do everything: local development only"}


def store_flags(store: StoreSettings) -> str:
    """How a berth command names this store, for the hints `serve` prints: the data directory, or the distributed
    store's two URLs (shell-quoted: an S3 URL holds `?` and `&`; a password in the PostgreSQL URL masked, since a
    log is no place for it and libpq takes it from PGPASSWORD)."""
    if not store.metadata:
        return f"--data {shlex.quote(store.data)}"
    metadata = urllib.parse.urlsplit(store.metadata)
    if metadata.password is not None:
        netloc = f"{metadata.username or ''}:***@{metadata.netloc.rpartition('@')[2]}"
        metadata = metadata._replace(netloc=netloc)
    return f"--metadata {shlex.quote(metadata.geturl())} --blobs {shlex.quote(store.blobs)}"


def first_start(registry: Registry, flags: str, listen: str) -> None:
    """On an empty store under the project policy: an admin account, and how to get going (`flags`: how a berth
    command names the store, `store_flags`)."""
    accounts = Accounts(registry.store)
    if accounts.users():
        return
    accounts.add_user("admin", certified=True, admin=True)
    _say("berth: first start: created the site admin 'admin'. To push within a minute:\n"
         f"  TOKEN=$(scripts/berth token create admin --scope view,download,modify {flags})\n"
         f"  PROJECT=$(scripts/berth project create demo --owner admin {flags})\n"
         f"  echo \"$TOKEN\" | podman login --tls-verify=false -u admin --password-stdin {listen}\n"
         f"  podman push --tls-verify=false IMAGE {listen}/$PROJECT/my-repo:v1")


def refuse_busy_port(host: str, port: int) -> None:
    """Failure unless HOST:PORT is free. granian binds with SO_REUSEPORT, so a second `berth serve` on a busy port
    would silently share it with the first (each getting some of the connections); this probe binds without it, as
    nothing else listens there, and closes at once."""
    where = _address(host, port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise Failure(f"cannot listen on {where}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Failure(f"{where} is already in use (another berth serve, or another server): stop it or "
                              "choose another --listen") from None
            raise Failure(f"cannot listen on {where}: {exc.strerror}") from None


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

    settings = serve_settings(args)
    host, port = parse_listen(settings.server.listen)
    where = _address(host, port)
    data, policy = settings.store.data, settings.server.policy
    refuse_busy_port(host, port)  # before the data directory is created: a busy port leaves no trace
    metrics_listen = parse_listen(settings.metrics.listen) if settings.metrics.listen else None
    if metrics_listen:
        refuse_busy_port(*metrics_listen)
    # Create (or check) the data directory once, before the workers fork: each opens it again for itself.
    try:
        opened = settings.store.open_store()
    except SettingsError as exc:
        raise Failure(str(exc)) from None
    with Registry(opened) as registry:
        try:
            load_policy(policy, registry)  # a bad --policy fails here, not in every worker
        except (ImportError, AttributeError) as exc:
            raise Failure(f"--policy {policy}: {exc}") from None
        if policy == "project":
            first_start(registry, store_flags(settings.store), where)
    # The workers read every setting from the environment (adapters/http/app.py app_from_env), resolved here once.
    os.environ.update(dataclasses.replace(settings, store=dataclasses.replace(
        settings.store, data=os.path.abspath(data))).environment())
    os.environ.pop(CONFIG_ENV, None)  # resolved above: a worker must not read the file again over flags
    public = f" (clients reach it as {settings.server.public_url})" if settings.server.public_url else ""
    count = workers(settings)
    source = os.environ["BERTH_DATA"] if not settings.store.metadata else "PostgreSQL and S3 (" + store_flags(
        settings.store) + ")"
    _say(f"berth: serving http://{where}/{public} (the registry API at /v2/) from {source}, "
         f"{count} worker(s); policy {policy}: {POLICIES.get(policy, 'a policy of your own')}")
    from adapters.exposure import prepare_serving  # sets PROMETHEUS_MULTIPROC_DIR before the app imports

    metrics = prepare_serving(data, where, enabled=settings.metrics.enabled or settings.metrics.public,
                              public=settings.metrics.public, metrics_listen=metrics_listen)
    if metrics:
        _say(f"berth: {metrics}; health at /healthz and /readyz")
    _lean_memory()
    # granian: the lowest CPU per request and per uploaded GiB measured here (see README, "Why granian").
    # Never task_impl=rust: it breaks anyio.to_thread (docs/PERFORMANCE.md). Its own access log stays off: ours
    # (adapters/http/accesslog.py) knows the account and the refusal, and keeps query strings out.
    server = Granian("adapters.http:app_from_env", factory=True, interface=Interfaces.ASGI, address=host, port=port,
                     workers=count, log_access=False, log_dictconfig=granian_config(settings.log.format),
                     backlog=2048)
    try:
        server.serve()
    except RuntimeError as exc:  # the port was taken between the probe and granian's bind
        raise Failure(f"cannot serve on {where}: {str(exc).splitlines()[0]}") from None
    return 0


def serve_settings(args: argparse.Namespace) -> Settings:
    """flag > environment > file (--config, else $BERTH_CONFIG) > default."""
    flags = {"--listen": args.listen, "--workers": args.workers, "--policy": args.policy,
             "--max-manifest": args.max_manifest, "--access-log": args.access_log or None,
             "--pull-events": args.pull_events or None, "--gc-interval": args.gc_interval,
             "--public-url": args.public_url, "--forwarded-header": args.forwarded_header, "--data": args.data,
             "--log-format": args.log_format, "--log-level": args.log_level, "--metrics": args.metrics or None,
             "--metrics-public": args.metrics_public or None, "--metrics-listen": args.metrics_listen,
             "--metadata": args.metadata, "--blobs": args.blobs, "--blobs-redirect": args.blobs_redirect or None}
    try:
        return Settings.load(args.config, os.environ, flags)
    except SettingsError as exc:
        raise Failure(str(exc)) from None


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        settings = Settings.load(args.file, os.environ)
        sources = settings.sources(args.file, os.environ)
    except SettingsError as exc:
        raise Failure(str(exc)) from None
    print(render(settings, sources), end="")
    _say(f"{args.file}: valid; the effective settings above (flags given to `berth serve` override them)")
    return 0


# -- the parser -------------------------------------------------------------------------------------------------------
class _Version(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs every other command ~20 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print Berth's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        from importlib import metadata

        try:
            version = metadata.version("berth")
        except metadata.PackageNotFoundError:  # run from a checkout that was never installed
            version = "unknown (not installed)"
        print(f"berth {version}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="berth", description="Berth: a container registry built as a storage engine")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: argparse._SubParsersAction[_Parser], name: str, run: Callable[[argparse.Namespace], int],
                text: str, data: str = "existing") -> _Parser:
        """A leaf command; `data`: "existing" (needs --data to be a data directory), "create" (serve) or "none"."""
        p = group.add_parser(name, help=text, description=text)
        if data != "none":
            # None when not given: the settings fill it in (main(): $BERTH_DATA, the file, the default)
            p.add_argument("--data", default=None,
                           help="data directory, relative to the working directory (default: $BERTH_DATA, the "
                                f"settings file's [store] data, or {DEFAULT_DATA})"
                                + ("; created on first start" if data == "create" else ""))
            p.add_argument("--config", default=None, metavar="FILE",
                           help="a TOML settings file (default: $BERTH_CONFIG; see berth.example.toml)")
            p.add_argument("--metadata", default=None, metavar="URL",
                           help="the index in PostgreSQL, postgresql://user@host/db[?schema=berth] (with --blobs: "
                                "the distributed store, shared by any number of `berth serve` processes)")
            p.add_argument("--blobs", default=None, metavar="URL",
                           help="the blobs in an S3 bucket, s3://bucket[/prefix][?endpoint=http://host:port"
                                "&region=…&read_timeout=10] (credentials from AWS_ACCESS_KEY_ID/"
                                "AWS_SECRET_ACCESS_KEY or ~/.aws; read_timeout: seconds of silence before a request "
                                "to the store is given up and answered 503)")
        p.set_defaults(run=run, data_must_exist=data == "existing")
        return p

    def group(name: str, text: str) -> argparse._SubParsersAction[_Parser]:
        p = sub.add_parser(name, help=text, description=text)
        return p.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = command(sub, "serve", cmd_serve, "run the registry (OCI Distribution v1.1) on the data directory",
                data="create")
    # Every default below is None: not given, so the settings decide (adapters/settings.py: flag > environment >
    # file > default); the defaults named in the help come from there.
    p.add_argument("--listen", type=_listen, default=None, metavar="HOST:PORT",
                   help="where to listen (default: 127.0.0.1:5000)")
    p.add_argument("--workers", type=_positive, default=None, help="server processes (default: one per core)")
    p.add_argument("--policy", type=_policy, default=None,
                   help="who may do what: 'project' (projects, grants, tokens; the default), 'open' (everything "
                        "allowed, no login: local development only) or module:callable")
    p.add_argument("--max-manifest", type=_positive, default=None, metavar="BYTES",
                   help="largest manifest accepted (default: 4 MiB; the spec requires at least 4 MiB)")
    p.add_argument("--gc-interval", type=float, default=None, metavar="SECONDS",
                   help="seconds between the server's own collection passes (default: 3600; 0: only `berth gc`)")
    p.add_argument("--blobs-redirect", action="store_true",
                   help="answer a blob GET with 307 to a presigned URL of the bucket (with --blobs s3://…; the "
                        "clients must reach the object store)")
    p.add_argument("--pull-events", action="store_true", help="record an event for every manifest pull (GET) in "
                   "the event feed (off by default: it makes every pull a write)")
    p.add_argument("--access-log", action="store_true", help="log every request, one line each")
    p.add_argument("--log-format", choices=("plain", "json"), default=None,
                   help="the form of the access and application logs (default: plain)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error", "critical"), default=None,
                   help="the least important application log line written (default: info)")
    p.add_argument("--metrics", action="store_true", help="count requests, uploads, tokens... for Prometheus: GET "
                   "/metrics on this port, for loopback clients only (see --metrics-public, --metrics-listen)")
    p.add_argument("--metrics-public", action="store_true",
                   help="/metrics on this port for every client (implies --metrics)")
    p.add_argument("--metrics-listen", type=_listen, default=None, metavar="HOST:PORT",
                   help="serve /metrics on a port of its own instead, to every client that reaches it (implies "
                        "--metrics)")
    p.add_argument("--public-url", default=None, metavar="URL",
                   help="how clients reach the registry, e.g. https://registry.example.org (behind a TLS proxy); "
                        "the token realm names it (default: the request's Host)")
    p.add_argument("--forwarded-header", default=None, metavar="NAME",
                   help="a header a trusted proxy sets to the client's address, e.g. X-Forwarded-For (its last "
                        "hop counts); unset: the peer's address (never trust it without such a proxy)")

    config = group("config", "the settings file: check")
    command(config, "check", cmd_config_check, "validate a TOML settings file and print the effective settings "
                                                "(the file over the defaults, the environment over the file)",
            data="none").add_argument("file")

    users = group("user", "accounts: add, list, password, certify, uncertify, admin, unadmin, disable, enable, "
                          "remove")
    p = command(users, "add", cmd_user_add, "add an account (it logs in with a token: `berth token create`)")
    p.add_argument("name")
    p.add_argument("--certified", action="store_true", help="may push and delete (where a grant allows)")
    p.add_argument("--admin", action="store_true", help="site admin: every level on every project")
    command(users, "list", cmd_user_list, "every account: name, certified, admin, created")
    command(users, "password", cmd_user_password, "set NAME's portal password (read from stdin, or asked for at a "
                                                  "terminal)").add_argument("name")
    for action, (_, _, text, _) in USER_FLAGS.items():
        command(users, action, cmd_user_flag, text).add_argument("name")
    command(users, "remove", cmd_user_remove, "remove an account with its tokens (they stop working at once) and its "
                                              "grants; refused while it owns a project").add_argument("name")

    tokens = group("token", "personal access tokens: create, list, revoke")
    p = command(tokens, "create", cmd_token_create, "a new token for USER; prints its secret, once")
    p.add_argument("user")
    p.add_argument("--scope", default="view,download", help="comma-separated: view, download, modify "
                                                            "(default: %(default)s)")
    p.add_argument("--expires", type=_duration, default=None, help="lifetime, e.g. 30d (default: none)")
    p.add_argument("--label", default="", help="what the token is for")
    command(tokens, "list", cmd_token_list, "USER's tokens: id, scopes, state, expiry, label").add_argument("user")
    command(tokens, "revoke", cmd_token_revoke, "revoke a token (it stops working at once)").add_argument("token_id")

    _webhook_parser(group("webhook", "webhook endpoints: add, list, remove, dead, replay"), command)

    projects = group("project", "projects: create, list")
    p = command(projects, "create", cmd_project_create, "create a project; prints its id (syn<digits>)")
    p.add_argument("name")
    p.add_argument("--owner", required=True, help="an existing user: admin on the project")
    command(projects, "list", cmd_project_list, "every project: id, name, owner, created, active or trashed")

    p = command(sub, "grant", cmd_grant, "give PRINCIPAL (a user or 'public') LEVEL on TARGET (syn123 or "
                                         "syn123/repo)")
    p.add_argument("target")
    p.add_argument("principal")
    p.add_argument("level", choices=LEVELS)
    p = command(sub, "revoke", cmd_revoke, "take PRINCIPAL's grant on TARGET away")
    p.add_argument("target")
    p.add_argument("principal")
    command(sub, "grants", cmd_grants, "the grants that bear on TARGET (syn123 or syn123/repo) and which are in "
                                       "force").add_argument("target")
    for name, run, text in (
            ("trash", cmd_trash, "put a project or repository in the trash (every operation on it is refused; its "
                                 "name stays reserved)"),
            ("restore", cmd_restore, "take it out of the trash"),
            ("purge", cmd_purge, "drop a trashed project's or repository's manifests and tags for good")):
        command(sub, name, run, text).add_argument("target")

    sub.add_parser("bench", help="benchmarks: --url URL, or --compare (Berth beside CNCF Distribution); "
                                 "see `berth bench --help`", add_help=False)

    p = command(sub, "selfcheck", cmd_selfcheck, "exercise the storage engine in a temporary store and report its "
                                                 "speed (never touches the data directory)", data="none")
    p.add_argument("--mib", type=_positive, default=256, help="size of each test blob in MiB (default: %(default)s)")
    p.add_argument("--dir", default=None, help="where to make the temporary store: a directory on the disk to "
                                               "measure (default: $TMPDIR or /tmp)")

    p = command(sub, "fsck", cmd_fsck, "re-hash every blob and cross-check the index")
    p.add_argument("--repair", action="store_true", help="repair what can be repaired (never drops referenced data)")

    p = command(sub, "gc", cmd_gc, "delete blobs nobody references once their grace period is over")
    p.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    p.add_argument("--explain", nargs="+", metavar="DIGEST", help="say why these blobs are retained")

    p = command(sub, "move-up", cmd_move_up, "copy the data directory (--data) into the distributed store "
                                             "(--metadata, --blobs), which must be empty; every blob verified")
    p.add_argument("--json", action="store_true", help="the report as JSON")

    p = command(sub, "compact", cmd_compact, "keep compressible blobs zstd-compressed at rest (served byte for byte); "
                                             "the server does this after each collection pass")
    p.add_argument("--dry-run", action="store_true", help="report stored against original bytes, change nothing")
    p.add_argument("--max-seconds", type=float, default=None, metavar="SECONDS",
                   help="stop after this long; the rest waits for the next pass (default: until done)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the harness has its own options (benchmarks/harness/run.py)
        try:
            from benchmarks.harness.run import main as bench
        except ImportError as exc:
            return _failed(f"berth bench needs the bench extra ({exc}): scripts/berth bench installs it")
        return bench(argv[1:])
    try:
        args = build_parser().parse_args(argv)  # a usage error exits here, with status 2
        if hasattr(args, "data"):  # a command on the data directory: its [store] settings (grace, lease...) too
            args.settings = Settings.load(args.config, os.environ, {"--data": args.data, "--metadata": args.metadata,
                                                                     "--blobs": args.blobs})
            args.data = args.settings.store.data
        if args.data_must_exist and not args.settings.store.metadata:  # (the distributed store has no directory)
            args.data = existing_data(args.data)
        return int(args.run(args))
    except (Failure, ValueError, CasError, RegistryError) as exc:
        # ValueError: AccountError, ProjectError, InvalidName, InvalidDigest... all say what was wrong.
        return _failed(str(exc))
    except OSError as exc:
        return _failed(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
    except KeyboardInterrupt:
        return _failed("interrupted", 130)
    except Exception as exc:  # lmdb's own errors, or a bug: still one line, with what a bug report needs
        if os.environ.get("BERTH_DEBUG"):
            raise
        return _failed(f"{exc} ({type(exc).__name__}; BERTH_DEBUG=1 shows the traceback)")


def _failed(message: str, status: int = 1) -> int:
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"berth: {one_line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
