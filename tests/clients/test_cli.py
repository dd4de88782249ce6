"""`berth-client`, run as a user runs it (a process of its own), against a real `berth serve`: output, JSON,
progress on stderr, and the documented exit codes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from berth_client.cli import EXIT
from tests.clients.conftest import HISTORY, MANY, Site
from tests.serving import ROOT


def run(*args: str, token: str | None = None, url: str | None = None, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = dict(env or os.environ, PYTHONPATH=str(ROOT))
    for name in ("BERTH_TOKEN", "BERTH_URL"):
        environment.pop(name, None)
    if token:
        environment["BERTH_TOKEN"] = token
    if url:
        environment["BERTH_URL"] = url
    return subprocess.run([sys.executable, "-m", "berth_client", *args], env=environment, input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_digest_with_the_host_in_front(site: Site) -> None:
    done = run("digest", f"{site.server.host}/{site.repo('tools')}:latest", token=site.owner_token)
    assert (done.returncode, done.stdout) == (0, site.index + "\n")
    arm = run("digest", "--platform", "linux/arm64", f"{site.repo('tools')}:multi", token=site.owner_token,
              url=site.url)
    assert arm.stdout == site.arm64 + "\n"


def test_tags_table_json_and_progress(site: Site) -> None:
    table = run("tags", site.repo("tools"), token=site.owner_token, url=site.url)
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["TAG", "DIGEST", "KIND"] and [line.split()[0] for line in lines[1:]] == [
        "latest", "multi", "v1"]
    assert table.stderr == ""  # one page: nothing to report
    paged = run("tags", "--json", "--page-size", "2", site.repo("many"), token=site.owner_token, url=site.url)
    assert paged.returncode == 0
    assert [t["tag"] for t in json.loads(paged.stdout)] == [f"tag-{i}" for i in range(MANY)]
    progress = paged.stderr.splitlines()
    assert len(progress) == -(-MANY // 2) or len(progress) == MANY // 2 + 1
    assert progress[0] == "berth-client: 2 tags…" and progress[-1] == f"berth-client: {MANY} tags, done"
    newest = run("tags", "--sort", "time", "--filter", "tag-3", "--json", site.repo("many"), token=site.owner_token,
                 url=site.url)
    assert [t["tag"] for t in json.loads(newest.stdout)] == ["tag-3"]


def test_history_repos_projects_inspect(site: Site) -> None:
    history = run("history", "--json", f"{site.repo('tools')}:latest", token=site.owner_token, url=site.url)
    assert [c["digest"] for c in json.loads(history.stdout)] == [site.index, site.image]
    table = run("history", f"{site.repo('tools')}:latest", token=site.owner_token, url=site.url).stdout.splitlines()
    assert table[0].split() == ["TIME", "DIGEST", "BY"] and [line.split()[1] for line in table[1:]] == [
        site.index, site.image]
    repos = run("repos", "--json", site.project, token=site.owner_token, url=site.url)
    assert {r["name"] for r in json.loads(repos.stdout)} == {
        site.repo(n) for n in ("tools", "old", "many", "results", "built")}
    projects = run("projects", "--json", token=site.owner_token, url=site.url)
    assert [p["id"] for p in json.loads(projects.stdout)] == [site.project]
    shown = run("inspect", f"{site.repo('tools')}:v1", token=site.owner_token, url=site.url).stdout
    assert f"digest:         {site.image}" in shown and "platform:       linux/amd64" in shown
    layers = run("inspect", f"{site.repo('built')}:v1", token=site.owner_token, url=site.url).stdout
    assert [line.split("  ")[-1] for line in layers.splitlines() if line.startswith("  layer ")] == [
        HISTORY[0], HISTORY[2]]
    assert 'entrypoint:     ["/bin/analyse"]' in layers and "label lab:      genomics" in layers
    detail = json.loads(run("inspect", "--json", "--platform", "linux/arm64", f"{site.repo('tools')}:multi",
                            token=site.owner_token, url=site.url).stdout)
    assert detail["digest"] == site.arm64 and detail["config"]["architecture"] == "arm64"


def test_trash_restore_and_delete_tag(site: Site) -> None:
    name = site.repo("old")
    assert run("trash", name, token=site.reader_token, url=site.url).returncode == EXIT["not-allowed"]
    trashed = run("trash", name, token=site.owner_token, url=site.url)
    assert trashed.returncode == 0 and "trash" in trashed.stderr
    hidden = run("digest", f"{name}:v1", token=site.reader_token, url=site.url)
    assert hidden.returncode == EXIT["not-found"] and "trash" in hidden.stderr
    assert run("restore", name, token=site.owner_token, url=site.url).returncode == 0
    assert run("digest", f"{name}:v1", token=site.reader_token, url=site.url).stdout == site.image + "\n"
    assert run("delete-tag", f"{name}:v1", token=site.reader_token, url=site.url).returncode == EXIT["not-allowed"]
    missing = run("delete-tag", f"{name}:never", token=site.owner_token, url=site.url)
    assert missing.returncode == EXIT["not-found"]


@pytest.mark.parametrize(("args", "code"), [
    ((), "usage"),
    (("tags",), "usage"),
    (("tags", "--sort", "size", "x/y"), "usage"),
    (("tags", "--page-size", "0", "x/y"), "usage"),
    (("digest", "syn1/tools:bad:tag"), "usage"),
])
def test_usage_errors(args: tuple[str, ...], code: str, site: Site) -> None:
    assert run(*args, url=site.url).returncode == EXIT[code]


def test_exit_codes_of_refusals(site: Site) -> None:
    assert run("digest", f"{site.repo('tools')}:v1").returncode == EXIT["usage"]  # no registry named
    missing = run("digest", f"{site.repo('tools')}:nope", token=site.owner_token, url=site.url)
    assert missing.returncode == EXIT["not-found"] and missing.stderr.startswith("berth-client: ")
    forged = run("tags", site.repo("tools"), token="berth_0_forged", url=site.url)
    assert forged.returncode == EXIT["unauthorized"]
    stranger = run("digest", f"{site.repo('tools')}:v1", token=site.stranger_token, url=site.url)
    assert stranger.returncode in (EXIT["not-allowed"], EXIT["not-found"]) and stranger.stderr.strip()
    down = run("digest", "127.0.0.1:1/syn1/tools:v1")
    assert down.returncode == EXIT["failure"] and "cannot reach" in down.stderr


def test_login_stores_and_verifies(site: Site, tmp_path: Path) -> None:
    authfile = tmp_path / "auth.json"
    env = dict(os.environ, REGISTRY_AUTH_FILE=str(authfile), HOME=str(tmp_path))
    nothing = run("login", site.server.host, env=env)
    assert nothing.returncode == EXIT["unauthorized"] and "podman login" in nothing.stderr
    bad = run("login", "--token-stdin", site.server.host, stdin="berth_0_forged\n", env=env)
    assert bad.returncode == EXIT["unauthorized"] and not authfile.exists()  # nothing stored unchecked
    stored = run("login", "--token-stdin", site.server.host, stdin=site.owner_token + "\n", env=env)
    assert stored.returncode == 0 and "as owner" in stored.stdout
    entry = json.loads(authfile.read_text())["auths"][site.server.host]
    assert base64.b64decode(entry["auth"]).decode() == f"owner:{site.owner_token}"
    assert authfile.stat().st_mode & 0o077 == 0
    again = run("login", site.server.host, env=env)
    assert again.returncode == 0 and str(authfile) in again.stdout
    assert run("digest", f"{site.server.host}/{site.repo('tools')}:v1", env=env).stdout == site.image + "\n"
