"""`berth-client`: the Python client as a command, for shells and CI jobs.

It is not `berth` (the server's own command, adapters/cli.py, which works on the data directory on the server's
machine and needs the server installed): this one works over HTTP from anywhere, with only httpx.

The registry comes from `--url`, else the host in front of the name, as docker writes it
(`127.0.0.1:5000/syn123/tools:latest`), else BERTH_URL. Listings print a table, or JSON with `--json`; progress
goes to stderr.

Exit codes (what a script tests):
  0  done
  1  any other failure (server unavailable, an answer the client cannot read, a conflict)
  2  usage: bad arguments, or a request the server calls invalid
  3  not found: no such project, repository, tag or manifest, or one in the trash
  4  not allowed: the policy refuses (403); the message names the rule
  5  unauthorized: no valid token where one is needed (401): `berth-client login`
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any, TextIO, TypeVar

from berth_client import calls, credentials
from berth_client.client import Client
from berth_client.errors import BerthError, Invalid, NotAllowed, NotFound, Unauthorized, Unavailable
from berth_client.values import Commit, ImageDetail, Repository, Tag

__all__ = ["EXIT", "main"]

T = TypeVar("T")
PROG = "berth-client"
EXIT = {"ok": 0, "failure": 1, "usage": 2, "not-found": 3, "not-allowed": 4, "unauthorized": 5}


class Usage(Exception):
    """A mistake in the command line the parser cannot see (no registry named)."""


def _exit_code(error: BerthError) -> int:
    for kind, code in ((Invalid, 2), (NotFound, 3), (NotAllowed, 4), (Unauthorized, 5)):
        if isinstance(error, kind):
            return code
    return 1


def _split_host(text: str) -> tuple[str | None, str]:
    """`127.0.0.1:5000/syn123/tools:latest` -> ("127.0.0.1:5000", "syn123/tools:latest"). Docker's rule: a first
    component with a dot or a colon, or `localhost`, is a registry host (a Berth name never has either)."""
    first, slash, rest = text.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, text


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {key: _jsonable(item) for key, item in asdict(value).items()}
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


class Command:
    """One run: the parsed arguments, the client, and where output and progress go."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args, self.out, self.err = args, out, err
        self._client: Client | None = None

    def target(self, text: str) -> str:
        """The argument without its host; the host, if there was one, names the registry."""
        host, rest = _split_host(text)
        if host is not None and self.args.url is None:
            self.args.url = host
        return rest

    def client(self) -> Client:
        if self._client is None:
            url = self.args.url or os.environ.get("BERTH_URL")
            if not url:
                raise Usage("no registry: give --url URL, set BERTH_URL, or write the host in front "
                            "(127.0.0.1:5000/syn123/tools:latest)")
            self._client = Client(url, self.args.token)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def listing(self, pages: Iterator[calls.Page[T]], noun: str) -> list[T]:
        """Every item, saying on stderr how far it got once there is more than one page."""
        items: list[T] = []
        for number, page in enumerate(pages, 1):
            items.extend(page.items)
            if page.next is not None or number > 1:
                self.err.write(f"{PROG}: {len(items)} {noun}{'…' if page.next is not None else ', done'}\n")
                self.err.flush()
        return items

    def emit(self, value: Any, rows: Callable[[], list[list[str]]]) -> None:
        if self.args.json:
            json.dump(_jsonable(value), self.out, indent=2)
            self.out.write("\n")
        else:
            table = rows()
            if len(table) > 1:
                _table(table, self.out)

    # The commands, one method each (the subcommand's name with '-' as '_').

    def login(self) -> None:
        self.args.url = self.args.url or self.args.registry
        token = sys.stdin.readline().strip() if self.args.token_stdin else None
        if self.args.token_stdin and not token:
            raise Usage("--token-stdin: no token on stdin")
        if token:
            self.args.token = token
        client = self.client()
        if client.credential is None:
            raise Unauthorized(f"no token for {credentials.host_of(client.url)}: run `podman login` or "
                               f"`docker login` to it, set BERTH_TOKEN, or pipe one to `{PROG} login --token-stdin`")
        me = client.me()
        if me.user is None:
            raise Unauthorized(f"the token from {client.credential.source} is not an account's")
        if token:
            where = credentials.store(credentials.host_of(client.url), self.args.username or me.user, token)
            self.err.write(f"{PROG}: token stored in {where}\n")
        source = "given on stdin" if token else f"from {client.credential.source}"
        self.out.write(f"logged in to {client.url} as {me.user} (token {source})\n")

    def projects(self) -> None:
        found = self.listing(self.client().pages(calls.projects(self.args.page_size)), "projects")
        self.emit(found, lambda: [["PROJECT", "NAME", "OWNER", "REPOSITORIES", "PERMISSION"]] + [
            [p.id, p.name, p.owner, str(p.repositories), p.permission or "-"] for p in found])

    def repos(self) -> None:
        project = self.target(self.args.project)
        found: list[Repository] = self.listing(
            self.client().pages(calls.repositories(project, self.args.filter, self.args.page_size)), "repositories")
        self.emit(found, lambda: [["REPOSITORY", "TAGS", "SIZE", "LAST PUSH", "BY"]] + [
            [r.name, str(r.tags), _size(r.size), _time(r.last_push.time if r.last_push else None),
             (r.last_push.actor if r.last_push else None) or "-"] for r in found])

    def tags(self) -> None:
        repo = self.target(self.args.repository)
        listing = calls.tags(repo, self.args.sort, self.args.filter, self.args.page_size)
        found: list[Tag] = self.listing(self.client().pages(listing), "tags")
        self.emit(found, lambda: [["TAG", "DIGEST", "KIND", "PLATFORMS", "SIZE", "PUSHED", "BY"]] + [
            [t.tag, t.digest, t.kind, ",".join(t.platforms) or "-", _size(t.size), _time(t.pushed_at),
             t.pushed_by or "-"] for t in found])

    def digest(self) -> None:
        ref = calls.parse_reference(self.target(self.args.reference))
        detail = self.client().inspect(str(ref), platform=self.args.platform)
        self.out.write(detail.digest + "\n")

    def history(self) -> None:
        ref = calls.parse_reference(self.target(self.args.reference))
        if ref.tag is None:
            raise Invalid("history is a tag's: give REPOSITORY:TAG")
        found: list[Commit] = self.client().history(ref.repository, ref.tag)
        self.emit(found, lambda: [["TIME", "DIGEST", "BY"]] + [
            [_time(c.time), c.digest or "(removed)", c.actor or "-"] for c in found])

    def inspect(self) -> None:
        ref = calls.parse_reference(self.target(self.args.reference))
        detail = self.client().inspect(str(ref), platform=self.args.platform)
        if self.args.json:
            self.emit(detail, list)
        else:
            _describe(detail, self.out)

    def trash(self) -> None:
        target = self.target(self.args.target)
        self.client().trash(target)
        self.err.write(f"{PROG}: {target} is in the trash (restore it with `{PROG} restore {target}`)\n")

    def restore(self) -> None:
        target = self.target(self.args.target)
        self.client().restore(target)
        self.err.write(f"{PROG}: {target} is restored\n")

    def delete_tag(self) -> None:
        ref = calls.parse_reference(self.target(self.args.reference))
        if ref.tag is None:
            raise Invalid("delete-tag removes a tag: give REPOSITORY:TAG")
        self.client().delete_tag(ref.repository, ref.tag)
        self.err.write(f"{PROG}: deleted the tag {ref}\n")


def _describe(detail: ImageDetail, out: TextIO) -> None:
    lines = [("digest", detail.digest), ("media type", detail.media_type), ("kind", detail.kind),
             ("size", _size(detail.size))]
    if detail.tag:
        lines += [("tag", detail.tag), ("pushed", f"{_time(detail.pushed_at)} by {detail.pushed_by or '-'}")]
    if detail.platforms:
        lines.append(("platforms", ", ".join(detail.platforms)))
    if detail.artifact_type:
        lines.append(("artifact type", detail.artifact_type))
    if detail.config:
        config = detail.config
        lines += [("created", _time(config.created)), ("platform", config.platform or "-")]
        if config.entrypoint is not None:
            lines.append(("entrypoint", json.dumps(list(config.entrypoint))))
        if config.cmd is not None:
            lines.append(("cmd", json.dumps(list(config.cmd))))
        lines += [(f"label {key}", value) for key, value in sorted(config.labels.items())]
    for label, value in lines:
        out.write(f"{label + ':':15} {value}\n")
    for child in detail.children:
        out.write(f"  manifest {child.digest}  {child.platform or '-'}  {_size(child.size)}\n")
    for layer in detail.layers:
        out.write(f"  layer {layer.digest}  {_size(layer.size)}  {layer.created_by or ''}".rstrip() + "\n")
    for referrer in detail.referrers:
        out.write(f"  referrer {referrer.digest}  {referrer.artifact_type or referrer.media_type}\n")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description="Berth's JSON API from the shell.",
                                  epilog="exit codes: 0 done, 1 failure, 2 usage, 3 not found, 4 not allowed, "
                                         "5 unauthorized",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--url", help="the registry, e.g. http://127.0.0.1:5000 (default: the host written in front "
                                   "of the name, else BERTH_URL)")
    top.add_argument("--token", help="a personal access token (default: BERTH_TOKEN, else what `podman login` or "
                                     "`docker login` stored for the host)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, listing: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if listing:
            sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
            sub.add_argument("--page-size", type=int, default=calls.MAX_PAGE, metavar="N",
                             help="items asked for per request (1-1000)")
        else:
            sub.set_defaults(json=False)
        return sub

    login = command("login", "check (or, with --token-stdin, store) the token for a registry")
    login.add_argument("registry", metavar="HOST", help="e.g. 127.0.0.1:5000")
    login.add_argument("--token-stdin", action="store_true",
                       help="read a token from stdin, check it and store it where podman and docker read it")
    login.add_argument("-u", "--username", help="the name stored beside the token (Berth ignores it)")
    command("projects", "the projects you may view", listing=True)
    repos = command("repos", "a project's repositories", listing=True)
    repos.add_argument("project", metavar="PROJECT", help="e.g. syn123")
    repos.add_argument("--filter", help="only names containing this")
    tags = command("tags", "a repository's tags", listing=True)
    tags.add_argument("repository", metavar="REPOSITORY", help="e.g. syn123/tools")
    tags.add_argument("--sort", choices=calls.SORTS, default="name", help="by name, or newest push first")
    tags.add_argument("--filter", help="only tags containing this")
    for name, help in (("digest", "the digest a tag points at"),
                       ("inspect", "an image's config, layers, platforms and referrers")):
        sub = command(name, help)
        sub.add_argument("reference", metavar="REPOSITORY:TAG", help="or REPOSITORY@DIGEST")
        sub.add_argument("--platform", metavar="OS/ARCH", help="one image of an index, e.g. linux/arm64")
        if name == "inspect":
            sub.add_argument("--json", action="store_true", help="print JSON")
    history = command("history", "where a tag pointed, newest first")
    history.add_argument("reference", metavar="REPOSITORY:TAG")
    history.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for name, help in (("trash", "put a project or repository in the trash (administer)"),
                       ("restore", "take a project or repository out of the trash (administer)")):
        command(name, help).add_argument("target", metavar="TARGET", help="syn123 or syn123/tools")
    command("delete-tag", "remove a tag (edit-delete)").add_argument("reference", metavar="REPOSITORY:TAG")
    return top


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit:  # argparse has printed the usage and why
        return int(exit.code or 0)
    if getattr(args, "page_size", 1) not in range(1, calls.MAX_PAGE + 1):
        err.write(f"{PROG}: --page-size must be 1 to {calls.MAX_PAGE}\n")
        return EXIT["usage"]
    run = Command(args, out, err)
    try:
        getattr(run, args.command.replace("-", "_"))()
    except Usage as error:
        err.write(f"{PROG}: {error}\n")
        return EXIT["usage"]
    except Unavailable as error:
        wait = f" (retry after {error.retry_after:g} s)" if error.retry_after is not None else ""
        err.write(f"{PROG}: {error.message}{wait}\n")
        return EXIT["failure"]
    except BerthError as error:
        err.write(f"{PROG}: {error.message}\n")
        return _exit_code(error)
    except BrokenPipeError:  # `berth-client tags … | head`
        return EXIT["ok"]
    finally:
        run.close()
    return EXIT["ok"]


def entry() -> None:
    sys.exit(main())
