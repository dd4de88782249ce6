"""berth_client.Client and AsyncClient against a real `berth serve`: every call, paging across page boundaries,
permission failures, a trashed repository."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth_client import (
    AsyncClient,
    Client,
    Commit,
    Invalid,
    NotAllowed,
    NotFound,
    Repository,
    Tag,
    Unauthorized,
    Unavailable,
)
from berth_client.values import parse_time
from tests.clients.conftest import HISTORY, MANY, OCI_MANIFEST, SIGNATURE, Site, put_manifest
from tests.serving import free_port


class Counting(httpx.HTTPTransport):
    """The real transport, counting requests: a listing must cost one request per page, never one per tag."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


@pytest.fixture
def owner(site: Site) -> Iterator[Client]:
    with Client(site.url, site.owner_token) as client:
        yield client


@pytest.fixture
def reader(site: Site) -> Iterator[Client]:
    with Client(site.url, site.reader_token) as client:
        yield client


def test_me(site: Site, owner: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    me = owner.me()
    assert (me.user, me.admin) == ("owner", False) and me.certified
    assert set(me.scopes) == {"view", "download", "modify"}
    for name in ("BERTH_TOKEN", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    with Client(site.url) as anonymous:
        assert anonymous.credential is None and anonymous.me().user is None


def test_projects_and_repositories(site: Site, owner: Client) -> None:
    projects = {p.id: p for p in owner.projects()}
    project = projects[site.project]
    assert (project.name, project.owner, project.trashed) == ("analysis", "owner", False)
    assert project == owner.project(site.project)
    repositories = {r.name: r for r in owner.repositories(site.project)}
    assert set(repositories) == {site.repo(name) for name in ("tools", "old", "many", "results", "built")}
    tools = repositories[site.repo("tools")]
    assert (tools.project, tools.tags, tools.trashed) == (site.project, 3, False)
    assert tools.size > 0 and tools.last_push is not None and tools.last_push.actor == "owner"
    assert tools.last_push.tag == "multi"  # the last of the fixture's pushes to tools
    assert tools.last_push.time > datetime.now(UTC) - timedelta(hours=1)
    assert owner.repository(site.repo("tools")) == tools
    assert [r.name for r in owner.repositories(site.project, filter="man")] == [site.repo("many")]


def test_tags_of_an_image_and_an_index(site: Site, owner: Client) -> None:
    tags = {t.tag: t for t in owner.tags(site.repo("tools"))}
    assert list(tags) == ["latest", "multi", "v1"]  # by name
    assert (tags["v1"].digest, tags["v1"].kind, tags["v1"].platforms) == (site.image, "image", ("linux/amd64",))
    assert tags["v1"].media_type == OCI_MANIFEST
    assert (tags["multi"].digest, tags["multi"].kind) == (site.index, "index")
    assert sorted(tags["multi"].platforms) == ["linux/amd64", "linux/arm64"]
    assert tags["latest"].digest == site.index
    assert all(t.pushed_by == "owner" and t.size > 0 for t in tags.values())
    by_time = [t.tag for t in owner.tags(site.repo("tools"), sort="time")]
    assert by_time[-1] == "v1" and set(by_time) == set(tags)  # v1 was pushed first; newest come first
    assert [t.tag for t in owner.tags(site.repo("tools"), filter="mul")] == ["multi"]
    with pytest.raises(Invalid):
        list(owner.tags(site.repo("tools"), sort="size"))


def test_artifact_tag(site: Site, owner: Client) -> None:
    tags = {t.tag: t for t in owner.tags(site.repo("results"))}
    assert (tags["v1"].digest, tags["v1"].kind, tags["v1"].platforms) == (site.artifact, "artifact", ())
    assert tags["sig"].digest == site.signature


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=1, max_value=MANY + 2))
def test_paging_across_page_boundaries(site: Site, n: int) -> None:
    transport = Counting()
    with Client(site.url, site.owner_token, transport=transport) as client:
        names = [t.tag for t in client.tags(site.repo("many"), n=n)]
        assert names == [f"tag-{i}" for i in range(MANY)]
        pages = len(transport.requests)
        # one request per page: a page that ends exactly on the last tag may be followed by one empty page
        assert math.ceil(MANY / n) <= pages <= MANY // n + 1
        assert all(r.url.params["n"] == str(n) for r in transport.requests)
        by_time = [t.tag for t in client.tags(site.repo("many"), sort="time", n=n)]
        assert sorted(by_time) == names  # every tag once, in whatever order the marker walks


def test_listing_is_lazy(site: Site) -> None:
    transport = Counting()
    with Client(site.url, site.owner_token, transport=transport) as client:
        tags = client.tags(site.repo("many"), n=2)
        assert transport.requests == []  # nothing asked before the first tag is wanted
        assert next(tags).tag == "tag-0" and next(tags).tag == "tag-1"
        assert len(transport.requests) == 1
        assert next(tags).tag == "tag-2" and len(transport.requests) == 2


def test_history_of_a_moved_tag(site: Site, owner: Client) -> None:
    now, before = owner.history(site.repo("tools"), "latest")
    assert (now.digest, before.digest) == (site.index, site.image)
    assert now.time >= before.time and now.actor == before.actor == "owner"
    assert owner.digest(site.repo("tools"), "latest") == site.index
    assert [c.digest for c in owner.history(site.repo("tools"), "v1")] == [site.image]


def test_image_detail(site: Site, owner: Client) -> None:
    layout_manifest = json.loads((site.layout / "blobs" / "sha256" / site.image.split(":")[1]).read_bytes())
    detail = owner.tag(site.repo("tools"), "v1")
    assert (detail.tag, detail.digest, detail.kind, detail.pushed_by) == ("v1", site.image, "image", "owner")
    assert detail.manifest_size == (site.layout / "blobs" / "sha256" / site.image.split(":")[1]).stat().st_size
    assert [layer.digest for layer in detail.layers] == [layer["digest"] for layer in layout_manifest["layers"]]
    assert [layer.size for layer in detail.layers] == [layer["size"] for layer in layout_manifest["layers"]]
    assert detail.config is not None and detail.config.platform == "linux/amd64"
    assert detail.children == () and detail.referrers == ()
    by_digest = owner.manifest(site.repo("tools"), site.image)
    assert (by_digest.digest, by_digest.tag, by_digest.layers) == (site.image, None, detail.layers)
    assert owner.inspect(f"{site.repo('tools')}@{site.image}") == by_digest


def test_layers_with_the_history_lines_that_made_them(site: Site, owner: Client) -> None:
    detail = owner.tag(site.repo("built"), "v1")
    assert detail.digest == site.built
    assert [layer.created_by for layer in detail.layers] == [HISTORY[0], HISTORY[2]]  # ENV made no layer
    config = detail.config
    assert config is not None
    assert (config.entrypoint, config.cmd, dict(config.labels)) == (("/bin/analyse",), ("--all",), {"lab": "genomics"})
    assert config.created == datetime(2026, 12, 1, 10, tzinfo=UTC)


def test_index_detail_and_one_platform(site: Site, owner: Client) -> None:
    index = owner.inspect(f"{site.repo('tools')}:multi")
    assert (index.kind, index.digest, index.config, index.layers) == ("index", site.index, None, ())
    assert sorted(c.platform or "" for c in index.children) == ["linux/amd64", "linux/arm64"]
    arm = owner.inspect(f"{site.repo('tools')}:multi", platform="linux/arm64")
    assert arm.digest == site.arm64 and arm.config is not None and arm.config.architecture == "arm64"
    with pytest.raises(NotFound, match="linux/s390x"):
        owner.inspect(f"{site.repo('tools')}:multi", platform="linux/s390x")
    assert owner.inspect(site.repo("tools")).digest == site.index  # no tag: latest


def test_referrers_of_an_artifact(site: Site, owner: Client) -> None:
    detail = owner.tag(site.repo("results"), "v1")
    assert detail.kind == "artifact" and detail.platforms == ()
    assert [(r.digest, r.artifact_type) for r in detail.referrers] in (
        [(site.signature, SIGNATURE)],
        [(site.signature, "application/vnd.unknown.config.v1+json")])  # oras sets no artifactType: the config's


def test_tag_results_in_the_platform_shape(site: Site, owner: Client) -> None:
    shape = owner.tag_results(site.repo("tools"))
    newest_first = list(owner.tags(site.repo("tools"), sort="time"))
    assert shape["totalNumberOfResults"] == 3
    assert [(r["tag"], r["digest"]) for r in shape["results"]] == [(t.tag, t.digest) for t in newest_first]
    for result, tag in zip(shape["results"], newest_first, strict=True):
        assert result["createdOn"].endswith("Z") and parse_time(result["createdOn"]) == tag.pushed_at
    by_name = owner.tag_results(site.repo("many"), sort="TAG", ascending=True, limit=3, offset=2)
    assert by_name["totalNumberOfResults"] == MANY
    assert [r["tag"] for r in by_name["results"]] == ["tag-2", "tag-3", "tag-4"]
    assert [r["tag"] for r in owner.tag_results(site.repo("many"), sort="TAG", ascending=True, offset=5)["results"]
            ] == ["tag-5", "tag-6"]


def test_errors_carry_the_servers_message(site: Site, owner: Client, reader: Client) -> None:
    with pytest.raises(NotFound) as missing:
        owner.digest(site.repo("tools"), "no-such-tag")
    assert missing.value.status == 404 and missing.value.code == "NOT_FOUND" and missing.value.message
    with pytest.raises(NotFound):
        owner.repository(site.repo("nothing-here"))
    with pytest.raises(NotAllowed) as denied:
        reader.delete_tag(site.repo("tools"), "v1")  # download may not delete
    assert denied.value.status == 403 and denied.value.message
    with pytest.raises(NotAllowed):
        reader.trash(site.repo("tools"))
    with Client(site.url, "berth_0000_not-a-token") as forged, pytest.raises(Unauthorized) as refused:
        forged.me()
    assert refused.value.status == 401
    with Client(site.url, site.stranger_token) as stranger:
        with pytest.raises((NotAllowed, NotFound)):
            stranger.digest(site.repo("tools"), "latest")  # no grant: nothing of the project shows
        assert site.project not in {p.id for p in stranger.projects()}
    assert reader.digest(site.repo("tools"), "v1") == site.image  # download sees


def test_unreachable_server_is_unavailable() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", "t") as client, pytest.raises(Unavailable) as down:
        client.me()
    assert "cannot reach" in down.value.message


def test_a_trashed_repository(site: Site, owner: Client, reader: Client) -> None:
    name = site.repo("old")
    trashed = owner.trash(name)
    try:
        assert isinstance(trashed, Repository) and trashed.trashed
        with pytest.raises(NotFound, match="trash"):
            reader.digest(name, "v1")
        with pytest.raises(NotFound, match="trash"):
            list(reader.tags(name))
        assert name not in {r.name for r in reader.repositories(site.project)}
        assert owner.repository(name).trashed  # its administrator still sees it
    finally:
        restored = owner.restore(name)
    assert isinstance(restored, Repository) and not restored.trashed
    assert reader.digest(name, "v1") == site.image


def test_delete_a_tag(site: Site, owner: Client) -> None:
    repo = site.repo("old")
    manifest = (site.layout / "blobs" / "sha256" / site.image.split(":")[1]).read_bytes()
    put_manifest(site.server, site.owner_token, repo, "doomed", manifest, OCI_MANIFEST)
    assert owner.digest(repo, "doomed") == site.image
    owner.delete_tag(repo, "doomed")
    with pytest.raises(NotFound):
        owner.digest(repo, "doomed")
    assert "doomed" not in {t.tag for t in owner.tags(repo)}
    history = owner.history(repo, "doomed")
    assert [c.digest for c in history] == [None, site.image]  # removed, and what it was before


def test_the_async_twin_answers_the_same(site: Site, owner: Client) -> None:
    async def everything() -> tuple[list[Tag], list[Tag], list[Commit], object, object, object, str, object]:
        async with AsyncClient(site.url, site.owner_token) as client:
            tags = [t async for t in client.tags(site.repo("tools"))]
            paged = [t async for t in client.tags(site.repo("many"), n=3)]
            history = await client.history(site.repo("tools"), "latest")
            detail = await client.tag(site.repo("tools"), "v1")
            arm = await client.inspect(f"{site.repo('tools')}:multi", platform="linux/arm64")
            repositories = [r async for r in client.repositories(site.project)]
            with pytest.raises(NotFound):
                await client.digest(site.repo("tools"), "no-such-tag")
            shape = await client.tag_results(site.repo("many"), sort="TAG", offset=1)
            return (tags, paged, history, detail, arm, repositories, await client.digest(site.repo("tools")), shape)

    tags, paged, history, detail, arm, repositories, digest, shape = asyncio.run(everything())
    assert shape == owner.tag_results(site.repo("many"), sort="TAG", offset=1)
    assert tags == list(owner.tags(site.repo("tools")))
    assert paged == list(owner.tags(site.repo("many")))
    assert history == owner.history(site.repo("tools"), "latest")
    assert detail == owner.tag(site.repo("tools"), "v1")
    assert arm == owner.inspect(f"{site.repo('tools')}:multi", platform="linux/arm64")
    assert repositories == list(owner.repositories(site.project))
    assert digest == site.index
