"""Real clients logging in with a personal access token (Docker token auth) under the project policy."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_core.accounts import Accounts
from registry_core.projects import Projects
from tests.interop.conftest import Run
from tests.interop.images import write_layout
from tests.serving import Place, Server, start_server


@pytest.fixture(scope="module")
def secured(place: Place) -> Iterator[tuple[Server, str, str, str]]:
    """A project-policy server with a certified pusher and a download-only reader on one project (on each store,
    tests/conftest.py `place`)."""
    server = start_server(place, policy="project")
    with place.open_registry() as registry:
        accounts, projects = Accounts(registry.store), Projects(registry.store)
        accounts.add_user("pusher", certified=True)
        accounts.add_user("reader")
        push_secret = accounts.create_token("pusher", ["view", "download", "modify"])[1]
        read_secret = accounts.create_token("reader", ["download"])[1]
        project = projects.create("interop", "pusher").id
        projects.grant(project, "reader", "download")
    yield server, project, push_secret, read_secret
    server.stop()


def test_skopeo_login_push_and_pull(secured: tuple[Server, str, str, str], skopeo: Run, tmp_path: Path,
                                    client_env: dict[str, str]) -> None:
    server, project, push_secret, read_secret = secured
    write_layout(tmp_path / "img")
    authfile = str(tmp_path / "auth.json")
    target = f"docker://{server.host}/{project}/app:v1"
    denied = subprocess.run(["skopeo", "--policy", client_env["BERTH_POLICY"], "copy", "--dest-tls-verify=false",
                             f"oci:{tmp_path / 'img'}:v1", target], env=client_env, capture_output=True, text=True,
                            timeout=120)
    assert denied.returncode != 0  # anonymous: nothing is public here
    skopeo("login", "--tls-verify=false", "--authfile", authfile, "-u", "anyone", "-p", push_secret, server.host)
    skopeo("copy", "--dest-tls-verify=false", "--authfile", authfile, f"oci:{tmp_path / 'img'}:v1", target)
    creds = f"reader:{read_secret}"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, target, f"oci:{tmp_path / 'back'}:v1")
    index = json.loads((tmp_path / "back" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == json.loads((tmp_path / "img" / "index.json").read_text()
                                                         )["manifests"][0]["digest"]
    refused = subprocess.run(["skopeo", "--policy", client_env["BERTH_POLICY"], "copy", "--dest-tls-verify=false",
                              "--dest-creds", creds, f"oci:{tmp_path / 'img'}:v1",
                              f"docker://{server.host}/{project}/app:v2"],
                             env=client_env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "denied" in refused.stderr.lower()  # a reader cannot push


def test_podman_login_push_and_pull(secured: tuple[Server, str, str, str], podman: tuple[Run, str], skopeo: Run,
                                    tmp_path: Path) -> None:
    server, project, push_secret, _ = secured
    run, storage = podman
    write_layout(tmp_path / "img")
    skopeo("copy", f"oci:{tmp_path / 'img'}:v1", f"{storage}localhost/berth-test/login:v1")
    authfile = str(tmp_path / "auth.json")
    run("login", "--tls-verify=false", "--authfile", authfile, "-u", "pusher", "-p", push_secret, server.host)
    remote = f"{server.host}/{project}/podman:v1"
    run("push", "--tls-verify=false", "--authfile", authfile, "localhost/berth-test/login:v1", remote)
    run("rmi", "-a", "-f")
    run("pull", "--tls-verify=false", "--authfile", authfile, remote)
    assert remote in run("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
