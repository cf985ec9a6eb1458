"""A TCP proxy in front of a test server that cuts a response mid-body, like a phone on 3G
losing its signal: for the first response(s) to a chosen path it forwards the status line,
the headers and only part of the body, then closes the connection.

Every exchange gets its own connections: the proxy rewrites `Connection: close` into each
request and each response, so one client connection carries one request and a response ends
when the server closes. It records what passed (request line and headers, status and headers,
body bytes forwarded), so a test can check that a resumed download asked for the rest only,
and that only the rest was sent again. Paths in `not_found` are answered 404 by the proxy
itself, like a server older than the route.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from io import BufferedReader
from typing import Any
from urllib.parse import urlsplit

from tests.support.live_server import free_port

MAX_HEAD = 64 * 1024


@dataclass
class Exchange:
    """One request through the proxy and what it forwarded of the answer."""

    method: str
    target: str
    request_headers: dict[str, str]
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    body_sent: int = 0  # body bytes forwarded to the client
    cut: bool = False  # the proxy closed the connection before the body's end

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def content_length(self) -> int | None:
        value = self.response_headers.get("content-length")
        return int(value) if value is not None else None


def _read_head(reader: BufferedReader) -> bytes | None:
    """Bytes up to and including the blank line; None at a clean end of stream."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline(MAX_HEAD)
        if not line:
            if head:
                raise ConnectionError("stream ended inside a header block")
            return None
        head += line
        if len(head) > MAX_HEAD:
            raise ConnectionError("header block too large")
    return head


def _split_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _join_head(first: str, headers: list[tuple[str, str]]) -> bytes:
    """The block again, with any Connection header replaced by `Connection: close`."""
    kept = [(name, value) for name, value in headers if name.lower() != "connection"]
    lines = [first, *(f"{name}: {value}" for name, value in kept), "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


class CuttingProxy:
    def __init__(
        self,
        upstream: str,
        *,
        cut_path: str = "/api/sync/snapshot",
        cut_fraction: float = 0.4,
        cuts: int = 1,
        not_found: tuple[str, ...] = (),
    ) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None
        self.upstream = (parts.hostname, parts.port)
        self.cut_path = cut_path
        self.cut_fraction = cut_fraction
        self.cuts_left = cuts
        self.not_found = not_found
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", free_port()))
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def to(self, path: str) -> list[Exchange]:
        """The exchanges for one path (query string aside), in arrival order."""
        with self._lock:
            return [exchange for exchange in self.exchanges if exchange.path == path]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take_cut(self, exchange: Exchange) -> int | None:
        """How many body bytes to forward before cutting, or None to forward them all."""
        length = exchange.content_length
        if exchange.path != self.cut_path or exchange.status != 200 or not length:
            return None
        with self._lock:
            if self.cuts_left <= 0:
                return None
            self.cuts_left -= 1
        return max(1, int(length * self.cut_fraction))

    def _serve(self, client: socket.socket) -> None:
        with client, suppress(OSError, ConnectionError):
            client.settimeout(30)
            with client.makefile("rb") as reader:
                head = _read_head(reader)
                if head is None:
                    return
                request_line, headers = _split_head(head)
                method, target, _ = request_line.split(" ", 2)
                exchange = Exchange(method, target, {name.lower(): v for name, v in headers})
                with self._lock:
                    self.exchanges.append(exchange)
                length = int(exchange.request_headers.get("content-length", "0"))
                body = reader.read(length) if length else b""  # read it all: close sends FIN
            if exchange.path in self.not_found:
                self._answer_not_found(client, exchange)
                return
            with socket.create_connection(self.upstream, timeout=30) as upstream:
                upstream.sendall(_join_head(request_line, headers) + body)
                with upstream.makefile("rb") as response:
                    self._relay(response, client, exchange)

    def _relay(self, upstream: BufferedReader, client: socket.socket, exchange: Exchange) -> None:
        head = _read_head(upstream)
        if head is None:
            return
        status_line, headers = _split_head(head)
        exchange.status = int(status_line.split(" ", 2)[1])
        exchange.response_headers = {name.lower(): value for name, value in headers}
        cut_at = self._take_cut(exchange)
        client.sendall(_join_head(status_line, headers))
        while cut_at is None or exchange.body_sent < cut_at:
            want = 65536 if cut_at is None else min(65536, cut_at - exchange.body_sent)
            chunk = upstream.read1(want)
            if not chunk:
                break
            client.sendall(chunk)
            exchange.body_sent += len(chunk)
        if cut_at is not None:
            exchange.cut = True
        client.shutdown(socket.SHUT_WR)  # FIN after the bytes sent: the client reads them all

    def _answer_not_found(self, client: socket.socket, exchange: Exchange) -> None:
        body = b'{"error": {"code": "not_found", "message": "no such route"}}'
        exchange.status = 404
        exchange.response_headers = {"content-length": str(len(body))}
        exchange.body_sent = len(body)
        client.sendall(
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        client.shutdown(socket.SHUT_WR)


@contextmanager
def cutting_proxy(upstream: str, **options: Any) -> Iterator[CuttingProxy]:
    """A started proxy in front of `upstream` (see CuttingProxy for the options)."""
    proxy = CuttingProxy(upstream, **options)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
