"""Request headers and query parameters of the OCI Distribution protocol, parsed into values or refused with the
protocol's error (errors.ProtocolError): Content-Range and Content-Length of uploads, Range of blob GETs, Accept of
manifest GETs, `n`/`last`/`after` of listings, `digest` of uploads. Pure functions of the request: the fuzz test
(tests/adapters/test_parser_fuzz.py) holds every one to "a value or a domain error, never anything else"."""

from __future__ import annotations

import re

from starlette.requests import Request

from cas import Digest, InvalidRange

from . import errors

# Numbers in headers and queries: ASCII digits only (str.isdigit also takes '²' and other Unicode digits, which
# int() then refuses), at most 19 of them (2**63 > 10**18: every size and offset fits; longer strings never reach
# int(), whose cost grows with the length).
_NUMBER = re.compile(r"[0-9]{1,19}")
_SPAN = re.compile(r"(?:bytes[= ])?([0-9]{1,19})-([0-9]{1,19})(?:/(?:[0-9]{1,19}|\*))?")


def number(text: str | None) -> int | None:
    return int(text) if text is not None and _NUMBER.fullmatch(text) else None


def content_range(request: Request) -> tuple[int | None, int | None]:
    """(offset, length) from Content-Range `<start>-<end>` (also `bytes <start>-<end>[/size]` and `bytes=`), and
    Content-Length. None where the client said nothing."""
    length = number(request.headers.get("content-length"))
    text = request.headers.get("content-range")
    if text is None:
        return None, length
    match = _SPAN.fullmatch(text.strip()) if len(text) <= 80 else None
    if match is None or int(match[2]) < int(match[1]):
        raise errors.ProtocolError(416, "BLOB_UPLOAD_INVALID", f"malformed Content-Range {text[:60]!r}: expected "
                                   "<start>-<end> in bytes, end >= start")
    start, end = match.groups()
    offset, span = int(start), int(end) - int(start) + 1
    if length is not None and length != span:
        raise errors.ProtocolError(400, "SIZE_INVALID",
                                   f"Content-Range covers {span} bytes but Content-Length is {length}")
    return offset, span


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as (offset, length); None to serve the whole blob (RFC 9110 lets a server ignore a
    Range it does not support, such as several ranges). InvalidRange when unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec or len(spec) > 60:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first == "" or _NUMBER.fullmatch(first)) or not (last == "" or _NUMBER.fullmatch(last)):
        return None
    if first == "":
        if last == "" or int(last) == 0 or size == 0:  # RFC 9110 14.1.2: no suffix of an empty blob is satisfiable
            raise InvalidRange(f"range {header!r} asks for no bytes")
        n = min(int(last), size)
        return size - n, n
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise InvalidRange(f"range {header!r} is outside a blob of {size} bytes")
    return start, end - start + 1


def accept(request: Request) -> list[str]:
    return media_types(request.headers.getlist("accept"))


def media_types(lines: list[str]) -> list[str]:
    # c/image sends one Accept line per media type: merge every line, drop parameters (q=...).
    types = []
    for line in lines:
        for item in line.split(","):
            media = item.split(";", 1)[0].strip().lower()
            if media:
                types.append(media)
    return types


def page_size(request: Request) -> int | None:
    n = request.query_params.get("n")
    if n is None:
        return None
    if not _NUMBER.fullmatch(n) or len(n) > 9:
        raise errors.ProtocolError(400, "PAGINATION_NUMBER_INVALID", f"n must be a non-negative integer, got {n!r}")
    return int(n)


def seq(text: str | None) -> int:
    """The feed's `after`: a non-negative integer, 0 when absent."""
    if text is None:
        return 0
    if not _NUMBER.fullmatch(text):
        raise errors.ProtocolError(400, "PAGINATION_NUMBER_INVALID",
                                   f"after must be a non-negative integer (an event's seq), got {text[:40]!r}")
    return int(text)


def query_digest(request: Request, param: str) -> Digest:
    text = request.query_params.get(param)
    if text is None:
        raise errors.ProtocolError(400, "DIGEST_INVALID", f"the {param} query parameter is required")
    return Digest.parse(text)
