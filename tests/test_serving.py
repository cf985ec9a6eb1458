"""sync_server/serving.py: each response's head and body leave in one write, and nothing else
about HTTP/1.1 changes (HEAD, 304, streaming, big bodies, pipelining, 100-continue, WebSocket
upgrades, errors after the head), over real sockets to a real uvicorn."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.importer import import_from_string
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.sync.client import connect as ws_connect

from storage.migrate import upgrade
from sync_server import cli
from sync_server.serving import PROTOCOL, CoalescingHttpToolsProtocol, HeadCoalescingTransport
from tests.support.live_server import serve_in_thread
from tests.support.processes import start_server

LARGE = os.urandom(1_500_000)
SMALL = {"cursor": "AQEAtG9v3H2Qk1c", "more": False, "changes": {}}
STREAM_DELAY = 0.6  # seconds between a streamed response's head and its first chunk


# --- the app under test ------------------------------------------------------------------------


async def small(request: Request) -> Response:
    return JSONResponse(SMALL)


async def not_modified(request: Request) -> Response:
    return Response(status_code=304, headers={"etag": '"v1"'})


async def large(request: Request) -> Response:
    return Response(LARGE, media_type="application/octet-stream")


async def stream(request: Request) -> Response:
    async def chunks() -> Any:
        await asyncio.sleep(STREAM_DELAY)
        for index in range(3):
            yield f"chunk {index}\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="text/plain")


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


class FailAfterHead:
    """A raw ASGI endpoint (an instance, so Starlette does not wrap it as a request handler)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"x-partial", b"1"), (b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise RuntimeError("the app fails after its head (expected by the test)")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        await websocket.send_text(text.upper())


APP = Starlette(
    routes=[
        Route("/small", small),
        Route("/not-modified", not_modified),
        Route("/large", large),
        Route("/stream", stream),
        Route("/echo", echo, methods=["POST"]),
        Route("/fail", FailAfterHead()),
        WebSocketRoute("/ws", ws_echo),
    ]
)


# --- write recording ---------------------------------------------------------------------------

# Client port -> what reached the connection's real transport, one entry per write call.
WRITES: dict[int, list[bytes]] = {}


class _Recorder:
    """Between a protocol and its real transport: records each write() / writelines() call
    (each one a send() on an idle uvloop socket) and passes everything through."""

    def __init__(self, transport: asyncio.Transport, log: list[bytes]) -> None:
        self._transport = transport
        self._log = log

    def write(self, data: bytes) -> None:
        self._log.append(bytes(data))
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        chunks = list(chunks)
        self._log.append(b"".join(chunks))
        self._transport.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _recorded(transport: asyncio.Transport) -> Any:
    log = WRITES.setdefault(transport.get_extra_info("peername")[1], [])
    return _Recorder(transport, log)


class RecordingCoalescing(CoalescingHttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_recorded(transport))


class RecordingStock(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_recorded(transport))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(APP, http=RecordingCoalescing) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def stock_server() -> Iterator[str]:
    with serve_in_thread(APP, http=RecordingStock) as base_url:
        yield base_url


# --- a small raw HTTP/1.1 client ---------------------------------------------------------------


def _connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise EOFError("connection closed")
        self.buffer += data

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        found, _, self.buffer = self.buffer.partition(marker)
        return found + marker

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        found, self.buffer = self.buffer[:size], self.buffer[size:]
        return found

    def head(self) -> tuple[int, dict[str, str]]:
        raw = self.until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = raw.split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self.until(b"\r\n")[:-2], 16)
                chunk = self.exactly(size + 2)[:-2]
                if size == 0:
                    return status, headers, body
                body += chunk
        return status, headers, self.exactly(int(headers["content-length"]))

    def at_eof(self, timeout: float = 5) -> bool:
        self.sock.settimeout(timeout)
        try:
            return not self.buffer and self.sock.recv(1) == b""
        finally:
            self.sock.settimeout(5)


def _exchange(
    base_url: str, *requests: tuple[str, bytes]
) -> list[tuple[int, dict[str, str], bytes]]:
    """Send all requests at once (pipelined) on one connection; read every response."""
    with _connect(base_url) as sock:
        sock.sendall(b"".join(raw for _, raw in requests))
        reader = Reader(sock)
        return [reader.response(method) for method, _ in requests]


def _writes_of(sock: socket.socket, count: int) -> list[bytes]:
    """The writes made to `sock`'s server side once `count` have arrived."""
    log = WRITES[sock.getsockname()[1]]
    deadline = time.monotonic() + 5
    while len(log) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # anything after them would show up too
    return list(log)


# --- one write per small response --------------------------------------------------------------


def test_small_response_is_one_write(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(_request("GET", "/small"))
        status, headers, body = Reader(sock).response()
        assert (status, headers["content-type"]) == (200, "application/json")
        assert JSONResponse(SMALL).body == body
        writes = _writes_of(sock, 1)
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(body)


def test_stock_uvicorn_writes_twice_which_the_recorder_sees(stock_server: str) -> None:
    """The yardstick: without the protocol the same response is two writes."""
    with _connect(stock_server) as sock:
        sock.sendall(_request("GET", "/small"))
        Reader(sock).response()
        writes = _writes_of(sock, 2)
    assert len(writes) == 2
    assert writes[0].endswith(b"\r\n\r\n") and writes[1] == JSONResponse(SMALL).body


def test_not_modified_and_head_are_one_write_each(server: str) -> None:
    with _connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(_request("GET", "/not-modified"))
        status, headers, _ = reader.response()
        assert (status, headers["etag"]) == (304, '"v1"')
        assert "content-length" not in headers and "transfer-encoding" not in headers
        sock.sendall(_request("HEAD", "/small"))
        status, headers, _ = reader.response("HEAD")
        assert status == 200 and int(headers["content-length"]) == len(JSONResponse(SMALL).body)
        writes = _writes_of(sock, 2)
        # Nothing but the two heads on the wire: a HEAD's would-be body is not sent.
        sock.sendall(_request("GET", "/small", "Connection: close"))
        assert reader.response()[0] == 200
        assert reader.at_eof()
    assert len(writes) == 2
    assert writes[0].startswith(b"HTTP/1.1 304 ") and writes[0].endswith(b"\r\n\r\n")
    assert writes[1].startswith(b"HTTP/1.1 200 ") and writes[1].endswith(b"\r\n\r\n")


def test_large_body_arrives_whole_with_its_head_in_one_call(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(_request("GET", "/large"))
        status, headers, body = Reader(sock).response()
        writes = _writes_of(sock, 1)
    assert status == 200 and int(headers["content-length"]) == len(LARGE)
    assert body == LARGE
    assert len(writes) == 1 and writes[0].endswith(LARGE)


# --- nothing else changes ----------------------------------------------------------------------


def test_streamed_response_sends_its_head_before_the_first_chunk(server: str) -> None:
    with _connect(server) as sock:
        started = time.monotonic()
        sock.sendall(_request("GET", "/stream"))
        reader = Reader(sock)
        status, headers = reader.head()
        head_after = time.monotonic() - started
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        # The head is not held until the body starts, STREAM_DELAY later.
        assert head_after < STREAM_DELAY / 2, head_after
        body = b""
        while True:
            size = int(reader.until(b"\r\n")[:-2], 16)
            chunk = reader.exactly(size + 2)[:-2]
            if size == 0:
                break
            body += chunk
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_pipelined_keep_alive_requests_answer_in_order(server: str) -> None:
    answers = _exchange(
        server,
        ("GET", _request("GET", "/small")),
        ("HEAD", _request("HEAD", "/small")),
        ("GET", _request("GET", "/not-modified")),
        ("GET", _request("GET", "/stream")),
        ("POST", _request("POST", "/echo", body=b"pipelined body")),
        ("GET", _request("GET", "/large")),
        ("GET", _request("GET", "/small")),
    )
    assert [status for status, _, _ in answers] == [200, 200, 304, 200, 200, 200, 200]
    small_body = JSONResponse(SMALL).body
    assert [body for _, _, body in answers] == [
        small_body,
        b"",
        b"",
        b"chunk 0\nchunk 1\nchunk 2\n",
        b"pipelined body",
        LARGE,
        small_body,
    ]


def test_expect_100_continue_gets_its_100_before_the_body_is_sent(server: str) -> None:
    payload = b"sent only after 100 Continue"
    with _connect(server) as sock:
        reader = Reader(sock)
        head = _request("POST", "/echo", "Expect: 100-continue", f"Content-Length: {len(payload)}")
        sock.sendall(head)
        sock.settimeout(2)  # a held 100 would time out here: the client is waiting for it
        assert reader.until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.settimeout(5)
        sock.sendall(payload)
        status, _, body = reader.response("POST")
        writes = _writes_of(sock, 2)
    assert (status, body) == (200, payload)
    assert writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(writes) == 2 and writes[1].endswith(payload)


def test_an_app_failing_after_its_head_still_sends_the_head_then_closes(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(_request("GET", "/fail"))
        reader = Reader(sock)
        status, headers = reader.head()
        assert (status, headers["x-partial"]) == (200, "1")
        assert reader.at_eof()


def test_websocket_upgrade_gets_the_bare_transport(server: str) -> None:
    with ws_connect(server.replace("http://", "ws://") + "/ws", open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "HELLO"
        ws.send("again")
        assert ws.recv(timeout=5) == "AGAIN"
    # And plain HTTP still works on the same server afterwards.
    assert _exchange(server, ("GET", _request("GET", "/small")))[0][0] == 200


def test_transport_wrapper_delegates_and_flushes() -> None:
    """Unit level: what the wrapper holds, and when it lets go."""

    class Fake(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, Any]] = []
            self.closing = False

        def write(self, data: Any) -> None:
            self.calls.append(("write", bytes(data)))

        def writelines(self, chunks: Any) -> None:
            self.calls.append(("writelines", [bytes(c) for c in chunks]))

        def close(self) -> None:
            self.calls.append(("close", None))
            self.closing = True

        def abort(self) -> None:
            self.calls.append(("abort", None))
            self.closing = True

        def is_closing(self) -> bool:
            return self.closing

        def pause_reading(self) -> None:
            self.calls.append(("pause_reading", None))

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": ("127.0.0.1", 1)}.get(name, default)

        def get_write_buffer_size(self) -> int:
            return 0

    loop = asyncio.new_event_loop()
    try:
        fake = Fake()
        wrapper = HeadCoalescingTransport(fake, loop)
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
        wrapper.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # never held
        wrapper.write(head)
        assert wrapper.get_write_buffer_size() == len(head)
        wrapper.write(b"ok")
        wrapper.write(head)
        wrapper.write(b"x" * 100_000)  # big: one writev, no copy
        wrapper.write(head)
        loop.call_soon(loop.stop)
        loop.run_forever()  # the end of the loop iteration lets a lone head go
        wrapper.write(head)
        wrapper.close()  # and so does close()
        wrapper.write(head)
        wrapper.flush()  # on a closed connection: dropped
        wrapper.pause_reading()
        assert wrapper.get_extra_info("peername") == ("127.0.0.1", 1)
        assert fake.calls == [
            ("write", b"HTTP/1.1 100 Continue\r\n\r\n"),
            ("write", head + b"ok"),
            ("writelines", [head, b"x" * 100_000]),
            ("write", head),
            ("write", head),
            ("close", None),
            ("pause_reading", None),
        ]
    finally:
        loop.close()


# --- `freshroots serve` uses it ----------------------------------------------------------------


def test_serve_passes_the_protocol_to_uvicorn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    database_url = f"sqlite:///{tmp_path / 'serve.db'}"
    upgrade(database_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("JWT_SECRET", "serve-test-" + "x" * 32)
    monkeypatch.delenv("REDIS_URL", raising=False)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    assert cli.main(["serve", "--port", "1"]) == 0
    # An import string (what `--workers N` processes load), naming our class.
    assert seen["http"] == PROTOCOL
    assert import_from_string(seen["http"]) is CoalescingHttpToolsProtocol


def test_freshroots_serve_answers_pipelined_requests(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'process.db'}"
    upgrade(database_url)
    env = {
        "DATABASE_URL": database_url,
        "JWT_SECRET": "serve-test-" + "y" * 32,
        "OUTBOX_WORKER": "off",
    }
    server = start_server(env)
    try:
        answers = _exchange(
            server.base_url,
            ("GET", _request("GET", "/healthz")),
            ("GET", _request("GET", "/readyz", "Accept-Encoding: gzip")),
            ("GET", _request("GET", "/healthz", "Connection: close")),
        )
        assert [status for status, _, _ in answers] == [200, 200, 200]
        assert answers[0][2] == b'{"status":"ok"}'
        assert answers[2][1]["connection"] == "close"
    finally:
        server.process.terminate()
        server.process.wait(10)
