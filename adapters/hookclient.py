"""The HTTP client webhook delivery POSTs with: HTTP/1.1 over asyncio streams, one kept-alive connection per origin,
the protocol spoken by h11 (python-hyper's sans-I/O HTTP/1.1: the parsing and framing are h11's, the sockets ours).

Why not httpx (which the rest of Berth's tests use): delivery POSTs one CloudEvent per request from the same
processes, on the same cores, that serve pushes, and httpx's AsyncClient spends ~2.6 ms of CPU per POST on loopback
(measured: 1000 POSTs to a Python receiver), about what a manifest PUT costs; h11 over a kept asyncio stream spends a
fraction of that (issue 15: webhooks must not slow pushes by more than 10 %).

What a webhook needs of HTTP and nothing more: a POST with a body of known length, the answer's status (its body is
read only to re-use the connection, and a large one just closes it), no redirects, TLS for https:// with the
system's trust store and host name check. The caller bounds a whole exchange with asyncio.timeout. Proxies from the
environment are not used: endpoints are reached directly.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import quote, urlsplit

import h11

_DRAIN_LIMIT = 1 << 20  # an answer body beyond this is not read: the connection is closed instead


class ProtocolError(Exception):
    """The endpoint's answer is not HTTP/1.x as h11 reads it."""


class _Connection:
    __slots__ = ("reader", "writer", "http")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 16)

    def close(self) -> None:
        self.writer.close()


class HookClient:
    def __init__(self, user_agent: str) -> None:
        self._user_agent = user_agent
        self._idle: dict[tuple[str, str, int], _Connection] = {}
        self._tls: ssl.SSLContext | None = None

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for connection in idle.values():
            connection.close()

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
        fields = [("Host", authority), ("User-Agent", self._user_agent), ("Content-Length", str(len(body))),
                  *headers.items()]
        request = h11.Request(method="POST", target=target, headers=fields)
        kept = self._idle.pop(key, None)
        if kept is not None:
            try:
                return await self._exchange(key, kept, request, body)
            except (OSError, asyncio.IncompleteReadError):
                pass  # the endpoint closed the kept connection meanwhile: once more on a new one (at least once)
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        reader, writer = await asyncio.open_connection(host, port, ssl=self._tls if tls else None, limit=1 << 16)
        return await self._exchange(key, _Connection(reader, writer), request, body)

    async def _exchange(self, key: tuple[str, str, int], connection: _Connection, request: h11.Request,
                        body: bytes) -> int:
        http = connection.http
        try:
            connection.writer.write(http.send(request) + http.send(h11.Data(data=body)) +
                                    http.send(h11.EndOfMessage()))
            await connection.writer.drain()
            status, read = 0, 0
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    data = await connection.reader.read(1 << 16)
                    if not data and http.their_state is not h11.SEND_BODY:
                        raise asyncio.IncompleteReadError(b"", None)
                    http.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    read += len(event.data)
                    if read > _DRAIN_LIMIT:  # not worth reading on: this connection is not re-used
                        connection.close()
                        return status
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        except h11.ProtocolError as exc:
            connection.close()
            raise ProtocolError(str(exc)) from None
        except BaseException:
            connection.close()
            raise
        if http.our_state is h11.DONE and http.their_state is h11.DONE and key not in self._idle:
            http.start_next_cycle()  # kept alive (another endpoint's task may have put one back meanwhile)
            self._idle[key] = connection
        else:
            connection.close()
        return status
