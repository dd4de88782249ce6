"""The HTTP client webhook delivery POSTs with: HTTP/1.1 over asyncio streams, one kept-alive connection per origin.

Why not httpx (which the rest of Berth's tests use): delivery POSTs one CloudEvent per request from the same
processes, on the same cores, that serve pushes, and httpx's AsyncClient spends ~2.6 ms of CPU per POST on loopback
(measured: 1000 POSTs to a Python receiver), about what a manifest PUT costs; these few lines spend ~0.4 ms with a
fresh connection and less with a kept one (issue 15: webhooks must not slow pushes by more than 10 %).

What a webhook needs of HTTP and nothing more: a POST with a body of known length, the answer's status (its body is
read only to re-use the connection, and a large or unframed one just closes it), no redirects (as before:
`follow_redirects=False`), TLS for https:// with the system's trust store and host name check. The caller bounds a
whole exchange with asyncio.timeout. Proxies from the environment are not used: endpoints are reached directly.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import quote, urlsplit

_DRAIN_LIMIT = 1 << 20  # an answer body beyond this is not read: the connection is closed instead
_NO_BODY = frozenset({204, 304})


class ProtocolError(Exception):
    """The endpoint's answer is not HTTP/1.x as we can read it."""


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HookClient:
    def __init__(self, user_agent: str) -> None:
        self._user_agent = user_agent
        self._idle: dict[tuple[str, str, int], _Connection] = {}
        self._tls: ssl.SSLContext | None = None

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for _, writer in idle.values():
            writer.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST `body` to `url`: the answer's status. Raises OSError (refused, reset...), ProtocolError or
        asyncio.IncompleteReadError (the answer broke off)."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        key = (parts.scheme, host, port)
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~") + (f"?{parts.query}" if parts.query else "")
        authority = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            authority += f":{port}"
        head = [f"POST {target} HTTP/1.1", f"Host: {authority}", f"User-Agent: {self._user_agent}",
                f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        kept = self._idle.pop(key, None)
        if kept is not None:
            try:
                return await self._exchange(key, kept, request)
            except (OSError, asyncio.IncompleteReadError):
                pass  # the endpoint closed the kept connection meanwhile: once more on a new one (at least once)
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        connection = await asyncio.open_connection(host, port, ssl=self._tls if tls else None,
                                                   limit=1 << 16)
        return await self._exchange(key, connection, request)

    async def _exchange(self, key: tuple[str, str, int], connection: _Connection, request: bytes) -> int:
        reader, writer = connection
        try:
            writer.write(request)
            await writer.drain()
            while True:
                line = await reader.readuntil(b"\r\n")
                version, _, rest = line.decode("latin-1").partition(" ")
                code = rest[:3]
                if not version.startswith("HTTP/1.") or not code.isdigit():
                    raise ProtocolError(f"not an HTTP/1.x answer: {line[:60]!r}")
                status = int(code)
                fields: dict[str, str] = {}
                while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                    name, colon, value = line.decode("latin-1").partition(":")
                    if not colon:
                        raise ProtocolError(f"a malformed header line: {line[:60]!r}")
                    fields[name.strip().lower()] = value.strip()
                if status >= 200:
                    break  # 1xx: an interim answer, the real one follows
            keep = await self._drain(reader, status, fields, version)
        except asyncio.LimitOverrunError:
            writer.close()
            raise ProtocolError("an answer line longer than 64 KiB") from None
        except BaseException:
            writer.close()
            raise
        if keep and key not in self._idle:  # another endpoint's task may have put one back meanwhile
            self._idle[key] = connection
        else:
            writer.close()
        return status

    @staticmethod
    async def _drain(reader: asyncio.StreamReader, status: int, fields: dict[str, str], version: str) -> bool:
        """Read the answer's body away; whether the connection can carry the next request."""
        connection = fields.get("connection", "").lower()
        keep = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        if status in _NO_BODY:
            return keep
        if "chunked" in fields.get("transfer-encoding", "").lower():
            total = 0
            while True:
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"a malformed chunk size: {size_line[:40]!r}") from None
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    return keep
                total += size
                if total > _DRAIN_LIMIT:
                    return False
                await reader.readexactly(size + 2)
        length = fields.get("content-length")
        if length is None or not length.isdigit():
            return False  # framed by the connection's end: not worth reading
        if int(length) > _DRAIN_LIMIT:
            return False
        await reader.readexactly(int(length))
        return keep
