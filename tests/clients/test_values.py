"""The client's parsing at the edge, without a server: API answers to values, references, errors, the platform's
listing shape."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth_client import ImageDetail, NotAllowed, NotFound, ProtocolError, Tag, Unavailable, registry_url
from berth_client.calls import Reference, parse_reference, synapse_tags, tags
from berth_client.errors import BerthError, Invalid, error_for
from berth_client.values import parse_time

TAG = {"tag": "latest", "digest": "sha256:" + "a" * 64, "media_type": "application/vnd.oci.image.index.v1+json",
       "kind": "index", "platforms": ["linux/amd64", "linux/arm64"], "size": 1234,
       "pushed_at": "2026-12-02T03:40:00.123456Z", "pushed_by": None, "added_later": {"ignored": True}}


def test_a_tag_and_a_detail_parse() -> None:
    tag = Tag.from_json(TAG)
    assert tag.platforms == ("linux/amd64", "linux/arm64") and tag.pushed_by is None
    assert tag.pushed_at == datetime(2026, 12, 2, 3, 40, 0, 123456, tzinfo=UTC)
    detail = ImageDetail.from_json(TAG | {"manifest_size": 300, "artifact_type": None, "config": None, "layers": [],
                                          "children": [{"digest": "sha256:" + "b" * 64, "media_type": "m",
                                                        "platform": "linux/arm64", "size": 5}], "referrers": []})
    assert detail.child("linux/arm64").size == 5 and detail.tag == "latest"
    with pytest.raises(NotFound, match="linux/amd64"):
        detail.child("linux/amd64")


@pytest.mark.parametrize("broken", [{k: v for k, v in TAG.items() if k != "digest"}, TAG | {"size": "x"},
                                    TAG | {"pushed_at": "yesterday"}, TAG | {"pushed_at": "2026-12-02T03:40:00"},
                                    TAG | {"tag": 3}])
def test_a_broken_answer_is_a_protocol_error(broken: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        Tag.from_json(broken)


@given(st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)), st.integers(0, 6))
def test_rfc3339_times(moment: datetime, digits: int) -> None:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond:06d}"[:digits + 1] if digits else "") + "Z"
    parsed = parse_time(text)
    assert parsed.tzinfo is not None and parsed.replace(microsecond=0) == moment.replace(microsecond=0)
    assert parse_time(moment.isoformat()) == moment  # +00:00 as well as Z


_component = st.from_regex(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", fullmatch=True).filter(lambda s: len(s) < 30)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)


@given(st.lists(_component, min_size=1, max_size=4).map("/".join), _tag,
       st.text("0123456789abcdef", min_size=64, max_size=64))
def test_references_round_trip(repo: str, tag: str, hexdigest: str) -> None:
    assert parse_reference(f"{repo}:{tag}") == Reference(repo, tag, None)
    assert str(parse_reference(f"{repo}:{tag}")) == f"{repo}:{tag}"
    assert parse_reference(f"{repo}@sha256:{hexdigest}") == Reference(repo, None, f"sha256:{hexdigest}")
    assert parse_reference(repo) == Reference(repo, "latest", None)


@pytest.mark.parametrize("text", [":latest", "syn1/tools:", "syn1/tools:-x", "syn1/tools@sha256", "syn1/t@:x",
                                  "syn1/Tools:v1", "syn1//t:v1", "syn1/t:bad:tag", "syn1/a b"])
def test_bad_references(text: str) -> None:
    with pytest.raises(Invalid):
        parse_reference(text)


def test_errors_by_status() -> None:
    body = {"error": {"code": "DENIED", "message": "reader has only download on syn1/app"}}
    denied = error_for(403, body)
    assert isinstance(denied, NotAllowed) and str(denied) == "reader has only download on syn1/app"
    busy = error_for(503, {"error": {"code": "UNAVAILABLE", "message": "busy"}}, "7")
    assert isinstance(busy, Unavailable) and busy.retry_after == 7.0
    assert error_for(429, None, "Wed, 21 Oct 2015 07:28:00 GMT").retry_after is None  # type: ignore[attr-defined]
    odd = error_for(418, "<html>teapot</html>")
    assert type(odd) is BerthError and "418" in odd.message


def test_a_listing_page_and_its_marker() -> None:
    listing = tags("syn1/a.b", "time", "v", n=5)
    call = listing.page("v3")
    assert call.path == "/api/v1/repositories/syn1/a.b/-/tags"
    assert dict(call.params) == {"n": "5", "sort": "time", "filter": "v", "last": "v3"}
    page = call.parse({"tags": [TAG], "next": "latest"})
    assert page.next == "latest" and page.items[0].tag == "latest"
    with pytest.raises(ProtocolError):
        call.parse({"repositories": []})
    with pytest.raises(Invalid):
        tags("syn1/a", n=1001)


def test_the_platform_listing_call() -> None:
    call = synapse_tags("syn1/a", "TAG", True, 5, 10)
    assert call.path == "/api/v1/repositories/syn1/a/-/synapse/tags"
    assert dict(call.params) == {"sort": "TAG", "ascending": "true", "limit": "5", "offset": "10"}
    assert call.parse({"totalNumberOfResults": 0, "results": []}) == {"totalNumberOfResults": 0, "results": []}
    with pytest.raises(ProtocolError):
        call.parse({"results": []})
    with pytest.raises(Invalid):
        synapse_tags("syn1/a", "NAME")


@pytest.mark.parametrize(("named", "url"), [
    ("127.0.0.1:5000", "http://127.0.0.1:5000"), ("localhost:5000/", "http://localhost:5000"),
    ("[::1]:5000", "http://[::1]:5000"), ("localhost.example.org", "https://localhost.example.org"),
    ("registry.example.org", "https://registry.example.org"), ("http://10.0.0.1:80", "http://10.0.0.1:80")])
def test_a_registry_named_as_container_tools_name_it(named: str, url: str) -> None:
    assert registry_url(named) == url
