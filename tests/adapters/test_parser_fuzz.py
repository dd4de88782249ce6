"""Every header and query parser of the HTTP edge, fuzzed: for any input, a value or a domain error, never anything
else (an unexpected exception is a 500 to a client)."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from adapters.http import errors
from adapters.http.app import _route, challenge_scope
from adapters.http.auth import _basic_password
from adapters.http.headers import accept, byte_range, content_range, page_size, query_digest
from cas import InvalidDigest, InvalidRange
from registry_core.names import InvalidName, InvalidReference, RepositoryName, parse_reference
from registry_core.tokens import Scope

# Header values as servers hand them over: latin-1 text of any byte, plus the digits other scripts have.
TEXT = st.text(alphabet=st.characters(max_codepoint=255) | st.sampled_from("²³¹٣߃۵𝟗"), max_size=120)
NUMBERISH = st.from_regex(r"(bytes[= ])?[0-9²¹ -]{0,30}(/[0-9*]{0,5})?", fullmatch=True)
FUZZ = settings(max_examples=400, deadline=None)


def request(headers: dict[str, str], query: str = "") -> Request:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query.encode("latin-1", "replace"),
                    "headers": raw})


@FUZZ
@given(st.one_of(TEXT, NUMBERISH), st.one_of(st.none(), TEXT, NUMBERISH))
def testcontent_range(value: str, length: str | None) -> None:
    headers = {"content-range": value} | ({"content-length": length} if length is not None else {})
    try:
        offset, span = content_range(request(headers))
    except errors.ProtocolError as exc:
        assert exc.status in (400, 416)
        return
    assert offset is not None and span is not None and offset >= 0 and span >= 1


@FUZZ
@given(st.one_of(TEXT, NUMBERISH), st.integers(0, 1 << 40))
def testbyte_range(value: str, size: int) -> None:
    try:
        span = byte_range(value, size)
    except InvalidRange:
        return
    if span is not None:
        offset, length = span
        assert 0 <= offset < size and length >= 1 and offset + length <= size


@FUZZ
@given(TEXT)
def test_page_size_and_digest_queries(value: str) -> None:
    from urllib.parse import quote

    query = f"n={quote(value)}&digest={quote(value)}"
    try:
        n = page_size(request({}, query))
        assert n is None or n >= 0
    except errors.ProtocolError as exc:
        assert exc.code == "PAGINATION_NUMBER_INVALID"
    with contextlib.suppress(errors.ProtocolError, InvalidDigest):
        query_digest(request({}, query), "digest")


@FUZZ
@given(st.lists(TEXT, max_size=4))
def testaccept(lines: list[str]) -> None:
    req = Request({"type": "http", "method": "GET", "path": "/", "query_string": b"",
                   "headers": [(b"accept", line.encode("latin-1", "replace")) for line in lines]})
    assert all(item == item.strip().lower() and item for item in accept(req))


@FUZZ
@given(TEXT)
def test_authorization_and_scopes(value: str) -> None:
    password = _basic_password(value)
    assert password is None or isinstance(password, str)
    scope = Scope.parse(value)
    assert scope is None or (scope.type and scope.name)


@FUZZ
@given(st.text(alphabet="abc/_.-:syn0123456789ABZ@", max_size=80), st.sampled_from(["GET", "PUT", "DELETE"]))
def test_paths_names_and_references(path: str, method: str) -> None:
    kind, name, argument = _route(path)
    for text in (name, argument):
        with contextlib.suppress(InvalidName):
            RepositoryName.parse(text)
        with contextlib.suppress(InvalidReference):
            parse_reference(text)
    if kind and kind != "catalog" and (kind, method) in {("manifest", "GET"), ("blob", "GET"), ("uploads", "POST")}:
        assert challenge_scope(kind, method, name or "x", argument or None).startswith("repository:")
