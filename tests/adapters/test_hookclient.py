"""The webhook HTTP client (adapters/hookclient.py) against real loopback servers: statuses as answered, bodies
framed every way HTTP/1.x allows read away, kept connections re-used and a closed one replaced, requests as sent."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.hookclient import HookClient, ProtocolError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set[int] = set()
    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        _Handler.connections.add(id(self.connection))
        _Handler.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        status, framing = int(self.path.split("/")[1]), self.path.split("/")[2]
        self.send_response(status)
        if framing == "length":
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")
        elif framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n")
        elif framing == "close":  # framed by the connection's end
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True
        else:
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@settings(max_examples=15, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from((200, 202, 204, 400, 500, 503)),
                                st.sampled_from(("length", "chunked", "close", "empty")), st.binary(max_size=300))
                      .filter(lambda step: step[0] != 204 or step[1] == "empty"),  # a 204 has no body (RFC 9110)
                      min_size=1, max_size=8))
def test_statuses_and_bodies_whatever_the_framing(base: str, steps: list[tuple[int, str, bytes]]) -> None:
    async def run() -> list[int]:
        client = HookClient("test")
        try:
            return [await client.post(f"{base}/{status}/{framing}", body, {"Content-Type": "application/json"})
                    for status, framing, body in steps]
        finally:
            await client.close()
    _Handler.bodies.clear()
    assert asyncio.run(run()) == [status for status, _, _ in steps]
    assert _Handler.bodies == [body for _, _, body in steps]


def test_a_kept_connection_is_reused_and_a_closed_one_replaced(base: str) -> None:
    async def run() -> None:
        client = HookClient("test")
        _Handler.connections.clear()
        for _ in range(5):
            assert await client.post(f"{base}/204/empty", b"{}", {}) == 204
        assert len(_Handler.connections) == 1  # keep-alive
        for connection in client._idle.values():  # as if the endpoint closed it while idle
            connection.writer.transport.abort()
        assert await client.post(f"{base}/200/length", b"{}", {}) == 200
        await client.close()
    asyncio.run(run())


def test_refused_and_garbled_answers_raise() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    with pytest.raises(OSError):
        asyncio.run(HookClient("test").post(f"http://127.0.0.1:{port}/", b"{}", {}))

    garbler = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = garbler.accept()
        conn.recv(65536)
        conn.sendall(b"SMTP ready\r\n\r\n")
        conn.close()
    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(ProtocolError):
        asyncio.run(HookClient("test").post(f"http://127.0.0.1:{garbler.getsockname()[1]}/", b"{}", {}))
    garbler.close()
