"""The digest the client reports is the one `skopeo inspect` and the registry (Docker-Content-Digest) report, for an
image, an index and an artifact pushed by oras."""

from __future__ import annotations

import hashlib
import json

import pytest

from berth_client import Client
from tests.clients.conftest import Site, content_digest, skopeo, skopeo_env


@pytest.mark.parametrize(("repo", "tag", "kind"), [("tools", "v1", "image"), ("tools", "multi", "index"),
                                                   ("results", "v1", "artifact")])
def test_the_same_digest_everywhere(site: Site, repo: str, tag: str, kind: str, tmp_path_factory: pytest.TempPathFactory
                                    ) -> None:
    expected = {"image": site.image, "index": site.index, "artifact": site.artifact}[kind]
    env = skopeo_env(tmp_path_factory.mktemp("skopeo"))
    target = f"docker://{site.server.host}/{site.repo(repo)}:{tag}"
    creds = ("--tls-verify=false", "--creds", f"owner:{site.owner_token}")
    raw = skopeo(env, "inspect", "--raw", *creds, target).encode()
    by_skopeo = "sha256:" + hashlib.sha256(raw).hexdigest()  # the bytes skopeo fetched, hashed
    if kind != "artifact":  # `skopeo inspect` (not --raw) reads an image config, which an oras artifact lacks
        by_skopeo_inspect = json.loads(skopeo(env, "inspect", *creds, target))["Digest"]
        assert by_skopeo_inspect == by_skopeo
    with Client(site.url, site.owner_token) as client:
        tag_value = {t.tag: t for t in client.tags(site.repo(repo))}[tag]
        assert (tag_value.kind, tag_value.digest) == (kind, expected)
        assert client.digest(site.repo(repo), tag) == expected
        assert client.history(site.repo(repo), tag)[0].digest == expected
    assert by_skopeo == expected == content_digest(site.server, site.owner_token, site.repo(repo), tag)
