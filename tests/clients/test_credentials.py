"""Where the token comes from: given, BERTH_TOKEN, or the credentials file `podman login` wrote (a real one)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from berth_client import BerthError, Client, credentials
from tests.clients.conftest import Site, podman_login

CLEAN = ("BERTH_TOKEN", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG")


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment with no credentials anywhere: HOME is an empty directory."""
    for name in CLEAN:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def auth_entry(user: str, token: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{token}".encode()).decode()}


def user_of(url: str, token: str | None = None) -> str | None:
    with Client(url, token) as client:
        return client.me().user


def test_podman_login_is_enough(site: Site, bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    authfile = tmp_path / "auth.json"
    podman_login(site.server.host, site.owner_token, authfile, tmp_path)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    with Client(site.url) as client:
        assert client.credential is not None and client.credential.source == str(authfile)
        assert client.me().user == "owner"
        assert client.digest(site.repo("tools"), "v1") == site.image
    with Client(site.server.host) as client:  # named as podman names it: http on loopback
        assert client.me().user == "owner"


def test_the_order_of_sources(site: Site, bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = site.server.host
    docker = bare / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text(json.dumps({"auths": {f"http://{host}/v1/": auth_entry("x", site.reader_token)}}))
    with Client(site.url) as client:  # Docker's file, its key written with a scheme and a path
        assert client.credential is not None and client.credential.source == str(docker)
        assert client.me().user == "reader"
    podman = bare / ".config" / "containers" / "auth.json"
    podman.parent.mkdir(parents=True)
    podman.write_text(json.dumps({"auths": {host: auth_entry("x", site.stranger_token), "other:1": {}}}))
    assert user_of(site.url) == "stranger"  # podman's own file comes before Docker's
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers" / "auth.json").write_text(json.dumps({"auths": {host: auth_entry("x", site.owner_token)}}))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert user_of(site.url) == "owner"
    monkeypatch.setenv("BERTH_TOKEN", site.reader_token)
    assert user_of(site.url) == "reader"  # the environment before any file
    assert user_of(site.url, site.stranger_token) == "stranger"  # and a given token before everything
    assert credentials.find("http://elsewhere:1", environ={"HOME": str(bare)}) is None


def test_a_docker_credential_helper(site: Site, bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`credsStore` in Docker's config: the helper is asked as Docker asks it (`get`, the host on stdin)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-berthtest"
    asked = tmp_path / "asked"
    helper.write_text(f"#!/bin/sh\n[ \"$1\" = get ] || exit 1\ncat > {asked}\n"
                      f"printf '{{\"Username\":\"u\",\"Secret\":\"{site.owner_token}\"}}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"auths": {}, "credsStore": "berthtest"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    assert user_of(site.url) == "owner"
    assert asked.read_text() == site.server.host


def test_unreadable_files_are_passed_over(bare: Path) -> None:
    docker = bare / ".docker"
    docker.mkdir()
    (docker / "config.json").write_text("{not json")
    (bare / ".config" / "containers").mkdir(parents=True)
    (bare / ".config" / "containers" / "auth.json").write_text(json.dumps({"auths": {"h:1": {"auth": "!!"}}}))
    assert credentials.find("http://h:1") is None


def test_store_keeps_the_other_entries(bare: Path, tmp_path: Path) -> None:
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {"other:1": auth_entry("x", "theirs")}, "credHelpers": {}}))
    environ = {"REGISTRY_AUTH_FILE": str(authfile), "HOME": str(bare)}
    assert credentials.store("h:1", "me", "mine", environ) == authfile
    stored = json.loads(authfile.read_text())
    assert stored["auths"]["other:1"] == auth_entry("x", "theirs") and stored["credHelpers"] == {}
    assert credentials.find("http://h:1", environ=environ) == credentials.Credential("mine", str(authfile), "me")
    assert authfile.stat().st_mode & 0o077 == 0
    authfile.write_text("[1, 2]")
    with pytest.raises(BerthError, match="not a credentials file"):
        credentials.store("h:1", "me", "mine", environ)
    assert authfile.read_text() == "[1, 2]" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".auth")] == []
    default = credentials.store("h:2", "me", "mine", {"HOME": str(bare)})
    assert default == bare / ".docker" / "config.json"  # Docker's file, which podman reads too
