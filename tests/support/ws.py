"""A minimal live-sync client for tests: the `websockets` library's sync client."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.replica import Replica, apply_page


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/api/sync/ws"


class LiveClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        cursor: str | None = None,
        receive_buffer: int | None = None,
    ) -> None:
        sock = None
        if receive_buffer is not None:  # a phone on a slow link: tiny TCP receive window
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            host, port = base_url.removeprefix("http://").split(":")
            sock.connect((host, int(port)))
        self.connection: ClientConnection = connect(
            ws_url(base_url), open_timeout=10, sock=sock, max_size=2**24
        )
        self.replica: Replica = {}
        self.cursor = cursor
        self.pushes: list[dict[str, Any]] = []
        self.send({"type": "hello", "token": token, "cursor": cursor})

    def send(self, message: dict[str, Any]) -> None:
        self.connection.send(orjson.dumps(message).decode())

    def receive(self, timeout: float = 10) -> dict[str, Any]:
        message = orjson.loads(self.connection.recv(timeout=timeout))
        if message["type"] == "ping":
            self.send({"type": "pong"})
        elif message["type"] == "changes":
            apply_page(self.replica, message)
            self.cursor = message["cursor"]
        elif message["type"] == "push_result":
            self.pushes.append(message)
        return dict(message)

    def catch_up(self, timeout: float = 10) -> list[dict[str, Any]]:
        """Read frames until a `changes` frame with more=false."""
        frames = []
        while True:
            frame = self.receive(timeout)
            frames.append(frame)
            if frame["type"] == "changes" and not frame["more"]:
                return frames

    def wait_for(self, predicate: Any, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("condition not reached over the WebSocket in time")
            try:
                self.receive(timeout=remaining)
            except TimeoutError:
                continue

    def close_code(self, timeout: float = 15) -> int | None:
        try:
            while True:
                self.connection.recv(timeout=timeout)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    def close(self) -> None:
        self.connection.close()
