"""`berth` as its users run it: a subprocess in their working directory. Every failure is one line `berth: ...` on
stderr with exit 2 (usage) or 1 (failure), never a traceback; every command says what it did on stderr and prints
what a script wants on stdout."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas import BlobStore, Digest
from cas.layout import FORM_RAW
from registry_core.accounts import Accounts
from registry_core.registry import Registry
from tests.conftest import PLACES, new_place
from tests.engines import Engines
from tests.registry_core.values import name_of
from tests.serving import ROOT, Place, free_port, start_server

Run = subprocess.CompletedProcess[str]


def berth(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30) -> Run:
    environment = {k: v for k, v in os.environ.items() if k != "BERTH_DATA"} | {"PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.run([sys.executable, "-m", "adapters.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def fails(result: Run, says: str, status: int = 1) -> None:
    """Exit `status`, one line `berth: ...` on stderr containing `says`, nothing on stdout, no traceback."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert result.stderr.startswith("berth: ") and result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def ok(result: Run) -> Run:
    assert result.returncode == 0 and "Traceback" not in result.stderr, (result.returncode, result.stderr)
    return result


@dataclass(frozen=True)
class Home:
    """The caller's working directory, and the store its commands name (`place.flags()`): a data directory in it
    (as `berth serve` would create), or a PostgreSQL schema and an S3 prefix of its own."""
    cwd: Path
    place: Place

    def run(self, *args: str) -> Run:
        return berth(*args, *self.place.flags(), cwd=self.cwd)


@pytest.fixture(params=PLACES)
def home(request: pytest.FixtureRequest) -> Home:
    """A store made as `berth serve` makes it, once per store (test ids `[embedded]`, `[distributed]`): every
    command on a store says the same on both."""
    place = new_place(request.param, request)
    place.open_registry().close()
    return Home(place.directory.parent, place)


@pytest.fixture
def data_home(tmp_path: Path) -> Path:
    """For the tests about files: a working directory with a data directory `data` in it."""
    Registry.open(tmp_path / "data").close()
    return tmp_path


def admin(home: Home, *args: str) -> Run:
    return ok(home.run(*args))


def test_version_is_the_installed_one(tmp_path: Path) -> None:
    assert ok(berth("--version", cwd=tmp_path)).stdout == f"berth {metadata.version('berth')}\n"


@pytest.mark.parametrize("args", [
    [], ["user"], ["user", "add"], ["token", "revoke"], ["token", "create", "ann", "--expires", "3q"],
    ["project", "create", "p"], ["grant", "syn1", "ann", "superuser"], ["serve", "--listen", "127.0.0.1:99999"],
    ["serve", "--policy", "nonsense"], ["selfcheck", "--data", "data"],
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    fails(berth(*args, cwd=tmp_path), "see `berth", status=2)
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("args", [
    ["user", "add", "ann"], ["token", "list", "ann"], ["project", "list"], ["grants", "syn1"], ["trash", "syn1"],
    ["fsck"], ["gc", "--dry-run"], ["gc", "--explain", "nope"],
])
def test_a_data_directory_that_does_not_exist_is_refused(tmp_path: Path, args: list[str]) -> None:
    """A typo in --data never reads as an empty registry: relative to the working directory, and not created."""
    fails(berth(*args, "--data", "dtaa", cwd=tmp_path), f"no data directory {tmp_path / 'dtaa'}")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_is_no_data_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    for args in (["user", "list"], ["gc"]):
        fails(berth(*args, cwd=tmp_path, env={"BERTH_DATA": "plain"}), f"{tmp_path / 'plain'} is not a Berth data")
    assert list((tmp_path / "plain").iterdir()) == []


def test_failures_say_why_in_one_line(home: Home) -> None:
    admin(home, "user", "add", "ann", "--certified")
    project = admin(home, "project", "create", "p", "--owner", "ann").stdout.strip()
    for args, says in [
        (["user", "add", "public"], "'public' cannot be a user name"),
        (["user", "add", "ann"], "user ann already exists"),
        (["user", "certify", "bob"], "no user bob"),
        (["user", "uncertify", "bob"], "no user bob"),
        (["user", "remove", "bob"], "no user bob"),
        (["user", "remove", "ann"], f"ann owns {project}"),
        (["token", "create", "bob"], "no user bob"),
        (["token", "list", "bob"], "no user bob"),
        (["token", "revoke", "0123456789abcdef"], "no token 0123456789abcdef"),
        (["project", "create", "q", "--owner", "bob"], "no user bob"),
        (["project", "create", "p", "--owner", "ann"], f"ann already owns a project named 'p': {project}"),
        (["grant", project, "bob", "view"], "no user bob"),
        (["grant", "syn424242", "ann", "view"], "no project syn424242"),
        (["grant", "myorg/app", "ann", "view"], "is not inside a project"),
        (["revoke", project, "ann"], f"ann has no grant on {project}"),
        (["grants", "syn424242"], "no project syn424242"),
        (["grants", "NOPE"], "invalid project id"),
        (["trash", "syn424242"], "no project syn424242"),
        (["trash", f"{project}/never-pushed"], f"no repository {project}/never-pushed"),
        (["restore", project], f"{project} is not in the trash"),
        (["restore", "syn424242"], "no project syn424242"),
        (["purge", project], f"{project} is not in the trash"),
        (["purge", f"{project}/never-pushed"], f"no repository {project}/never-pushed"),
        (["gc", "--explain", "nope"], "malformed digest 'nope'"),
    ]:
        fails(home.run(*args), says)


def test_users_and_tokens(home: Home) -> None:
    run = admin(home, "user", "add", "ann")
    assert run.stdout == "" and "added user ann (not certified, not an admin)" in run.stderr
    assert "ann is certified" in admin(home, "user", "certify", "ann").stderr
    assert "(unchanged)" in admin(home, "user", "certify", "ann").stderr
    assert "ann is a site admin" in admin(home, "user", "admin", "ann").stderr
    assert re.fullmatch(r"ann\tcertified=True\tadmin=True\t\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\n",
                        admin(home, "user", "list").stdout)
    admin(home, "user", "uncertify", "ann")
    admin(home, "user", "unadmin", "ann")
    assert admin(home, "user", "list").stdout.startswith("ann\tcertified=False\tadmin=False\t")

    run = admin(home, "token", "create", "ann", "--scope", "download,modify", "--expires", "30d", "--label", "ci")
    secret = run.stdout.strip()
    assert re.fullmatch(r"berth_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", secret) and "shown once" in run.stderr
    token_id = secret.split("_")[1]
    listed = admin(home, "token", "list", "ann").stdout
    assert re.fullmatch(rf"{token_id}\tdownload,modify\tactive\texpires \d{{4}}-.* UTC\tci\n", listed)
    assert f"revoked token {token_id} of ann" in admin(home, "token", "revoke", token_id).stderr
    assert "already revoked" in admin(home, "token", "revoke", token_id).stderr
    assert "\trevoked\t" in admin(home, "token", "list", "ann").stdout

    secret = admin(home, "token", "create", "ann").stdout.strip()
    with home.place.open_registry() as registry:
        assert Accounts(registry.store).authenticate(secret) is not None
    run = admin(home, "user", "remove", "ann")
    assert "removed user ann: 2 token(s) deleted" in run.stderr
    with home.place.open_registry() as registry:
        accounts = Accounts(registry.store)
        assert accounts.authenticate(secret) is None and accounts.tokens("ann") == []
    assert admin(home, "user", "list").stdout == ""


def test_projects_grants_and_the_trash(home: Home) -> None:
    for name in ("ann", "bob"):
        admin(home, "user", "add", name)
    run = admin(home, "project", "create", "demo", "--owner", "ann")
    project = run.stdout.strip()
    assert re.fullmatch(r"syn\d+", project) and f"created project demo ({project}) owned by ann" in run.stderr
    repo = f"{project}/app"
    with home.place.open_registry() as registry:
        registry.ingest_blob(name_of(repo), b"{}", Digest.of(b"{}"))  # a push made the repository

    assert "bob has edit on" in admin(home, "grant", project, "bob", "edit").stderr
    admin(home, "grant", project, "public", "view")
    assert admin(home, "grants", repo).stdout == ("ann\tadmin\towner\n"
                                                  "bob\tedit\tinherited from the project\n"
                                                  "public\tview\tinherited from the project\n")
    assert "no longer apply to it" in admin(home, "grant", repo, "bob", "download").stderr
    assert admin(home, "grants", repo).stdout == (
        "ann\tadmin\towner\n"
        "bob\tdownload\tlocal\n"
        "bob\tedit\tinherited (ignored: the repository has grants of its own)\n"
        "public\tview\tinherited (ignored: the repository has grants of its own)\n")
    assert admin(home, "grants", project).stdout == "ann\tadmin\towner\nbob\tedit\tlocal\npublic\tview\tlocal\n"
    assert "apply to it again" in admin(home, "revoke", repo, "bob").stderr
    assert "revoked bob's edit on" in admin(home, "revoke", project, "bob").stderr

    assert "is in the trash" in admin(home, "trash", repo).stderr
    assert "already in the trash" in admin(home, "trash", repo).stderr
    assert f"restored {repo}" in admin(home, "restore", repo).stderr
    admin(home, "trash", project)
    assert re.fullmatch(rf"{project}\tdemo\tann\t\d{{4}}-.* UTC\ttrashed\n", admin(home, "project", "list").stdout)
    assert "in the trash" in admin(home, "grants", project).stderr
    assert f"purged {project}: 1 repositor(ies)" in admin(home, "purge", project).stderr
    assert admin(home, "project", "list").stdout == ""
    admin(home, "user", "remove", "ann")  # no project left to own


def test_gc_says_what_waits_and_until_when(home: Home) -> None:
    with home.place.open_store() as store:
        digest = store.ingest(b"unreferenced").digest
    run = admin(home, "gc", "--dry-run")
    assert run.stdout == ""
    assert re.search(r"1 unreferenced blob, 12 bytes, waits for its grace period \(1d\): a pass may delete it from "
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in (23h 59m|1d)\)", run.stderr), run.stderr
    explained = admin(home, "gc", "--explain", str(digest)).stdout
    assert re.match(rf"{digest}: unreferenced; in its grace period until \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC "
                    r"\(in (23h 59m|1d)\)\n  12 bytes\n$", explained), explained
    assert "deleted 0 blob(s)" in admin(home, "gc").stderr


def test_fsck_says_no_damage_then_names_the_missing_blob(home: Home) -> None:
    """Clean, then with a blob's bytes gone from where the store keeps them (its file, or its object in the
    bucket), dropped through the store's own keeper of bytes: exit 1, the digest named."""
    data = b"fsck me, " * 100
    with home.place.open_store() as store:
        digest = store.ingest(data).digest
    run = admin(home, "fsck")
    assert run.stdout == f"checked 1 blob files ({len(data)} bytes re-hashed)\nno damage\n", run.stdout
    with home.place.open_store() as store:
        store.blobs.drop_form(digest, FORM_RAW)
    run = home.run("fsck")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"missing: {digest}" in run.stdout and run.stdout.endswith("damage found\n"), run.stdout


def test_selfcheck_works_in_a_temporary_directory(data_home: Path) -> None:
    def snapshot() -> list[tuple[str, int, int]]:
        return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (data_home / "data").rglob("*"))

    before = snapshot()
    scratch = data_home / "scratch"
    scratch.mkdir()
    run = ok(berth("selfcheck", "--mib", "1", "--dir", "scratch", cwd=data_home, env={"BERTH_DATA": "data"}))
    assert "read back     identical" in run.stdout and "no damage" in run.stdout
    assert f"selfcheck in {scratch}" in run.stderr
    assert snapshot() == before and list(scratch.iterdir()) == []
    fails(berth("selfcheck", "--mib", "1", "--dir", "nowhere", cwd=data_home), "no directory")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    server = start_server(tmp_path / "live", workers=1)
    yield server.host, server.log
    server.stop()


def test_serve_says_where_and_refuses_a_busy_port(running: tuple[str, Path], tmp_path: Path) -> None:
    host, log = running
    assert f"serving http://{host}/" in log.read_text() and "policy open: no login" in log.read_text()
    started = time.monotonic()
    # Another berth serve would share the port through SO_REUSEPORT: refused, before its data directory exists.
    fails(berth("serve", "--data", "other", "--listen", host, "--workers", "1", cwd=tmp_path, timeout=20),
          f"{host} is already in use")
    with socket.socket() as listener:  # any other server
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fails(berth("serve", "--data", "other", "--listen", f"127.0.0.1:{port}", cwd=tmp_path, timeout=20),
              f"127.0.0.1:{port} is already in use")
    assert time.monotonic() - started < 10 and not (tmp_path / "other").exists()


def test_scripts_berth_keeps_the_callers_working_directory(data_home: Path, tmp_path_factory: pytest.TempPathFactory
                                                            ) -> None:
    """The real scripts/berth and bootstrap.sh, in a copy of the checkout whose .venv is a stand-in running this
    worktree's code (a pip install here would change the shared venv): a relative --data is the caller's."""
    checkout = tmp_path_factory.mktemp("checkout")
    (checkout / "scripts").mkdir()
    for name in ("scripts/berth", "scripts/bootstrap.sh", "pyproject.toml"):
        shutil.copy2(ROOT / name, checkout / name)
    bin_dir = checkout / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    for name, body in (("berth", f'exec "{sys.executable}" -m adapters.cli "$@"'),
                       ("pip", 'echo "scripts/berth ran pip" >&2; exit 99')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    (checkout / ".venv" / ".installed-test").touch()  # the venv was installed after pyproject.toml changed
    os.utime(checkout / "pyproject.toml", (time.time() - 60, time.time() - 60))
    env = {k: v for k, v in os.environ.items() if k != "BERTH_DATA"} | {"PYTHONPATH": str(ROOT)}

    def script(*args: str) -> Run:
        return subprocess.run([str(checkout / "scripts" / "berth"), *args], cwd=data_home, env=env,
                              capture_output=True, text=True, timeout=30)

    ok(script("user", "add", "ann", "--data", "./data"))
    assert ok(script("user", "list", "--data", "data")).stdout.startswith("ann\t")
    fails(script("user", "list", "--data", "./missing"), f"no data directory {data_home / 'missing'}")
    assert not (checkout / "data").exists() and not (checkout / "missing").exists()


@given(data=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1),
       password=st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="!$&*;?#[]'\" "),
                        min_size=1), prefix=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))
def test_store_flags_read_back_as_the_store_without_its_password(data: str, password: str, prefix: str) -> None:
    """What `serve` prints as the store's flags splits back (shlex) into the flags that name the same store, and a
    password in the PostgreSQL URL never reaches the log."""
    from urllib.parse import quote

    from adapters.cli import store_flags
    from adapters.settings import StoreSettings

    assert shlex.split(store_flags(StoreSettings(data=data))) == ["--data", data]
    blobs = f"s3://bucket/{prefix}?endpoint=http://127.0.0.1:9000&region=us-east-1"
    metadata = f"postgresql://berth:{quote(password, safe='')}@127.0.0.1:5432/db?schema=berth"
    flags = store_flags(StoreSettings(data=data, metadata=metadata, blobs=blobs))
    assert shlex.split(flags) == ["--metadata", "postgresql://berth:***@127.0.0.1:5432/db?schema=berth",
                                  "--blobs", blobs]  # whatever the password, `***` in its place


def test_a_distributed_store_named_wrong_is_refused_in_one_line(engines: Engines, tmp_path: Path) -> None:
    """The distributed equivalent of a mistyped --data: one line saying what is wrong, at once (not after the
    connection pool's 30 s of retries), nothing created; a schema no Berth made is refused, not created empty
    (only `serve` and `move-up` create a store)."""
    blobs = f"s3://{engines.s3.create_bucket()}?endpoint={engines.s3.endpoint}"
    fails(berth("user", "list", "--metadata", engines.postgres.create_database(), cwd=tmp_path),
          "store.metadata (--metadata) and store.blobs (--blobs) go together")
    nobody = f"postgresql://berth@127.0.0.1:{free_port()}/berth"  # no server there
    for url, says in [(engines.postgres.url("t_no_such_database"), 'database "t_no_such_database" does not exist'),
                           (nobody, "the PostgreSQL server cannot be reached: ")]:
        started = time.monotonic()
        fails(berth("user", "list", "--metadata", url, "--blobs", blobs, cwd=tmp_path), says)
        assert time.monotonic() - started < 10
    database = engines.postgres.create_database()
    BlobStore.distributed(f"{database}?schema=berth", blobs).close()  # a store, as `berth serve` makes one
    fails(berth("user", "list", "--metadata", f"{database}?schema=bertj", "--blobs", blobs, cwd=tmp_path),
          "no Berth store in the PostgreSQL schema 'bertj' of the database")  # a typo: no empty registry read
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = 'bertj'").fetchone() is None
    assert "0 user(s)" in ok(berth("user", "list", "--metadata", f"{database}?schema=berth", "--blobs", blobs,
                                   cwd=tmp_path)).stderr
    assert list(tmp_path.iterdir()) == []
