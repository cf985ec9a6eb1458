"""Run an ASGI app on a real socket in a background thread, like httpx's own test server.

Used for our server and for the stand-in providers, so every test speaks real HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import uvicorn

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _ThreadedServer(uvicorn.Server):
    loop: asyncio.AbstractEventLoop | None = None

    def install_signal_handlers(self) -> None:  # the main thread owns signals
        pass

    async def serve(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)


# base URL -> (app, server), so a test can run a coroutine inside a running server.
RUNNING: dict[str, tuple[Any, _ThreadedServer]] = {}


def run_in_server(
    base_url: str, make_coroutine: Callable[[Any], Awaitable[T]], timeout: float = 60
) -> T:
    """Run `make_coroutine(app)` on the server's own event loop and wait for its result."""
    app, server = RUNNING[base_url]
    assert server.loop is not None
    future = asyncio.run_coroutine_threadsafe(_call(make_coroutine, app), server.loop)
    return future.result(timeout)


def submit_in_server(
    base_url: str, make_coroutine: Callable[[Any], Awaitable[T]]
) -> concurrent.futures.Future[T]:
    app, server = RUNNING[base_url]
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(_call(make_coroutine, app), server.loop)


async def _call(make_coroutine: Callable[[Any], Awaitable[T]], app: Any) -> T:
    return await make_coroutine(app)


@contextmanager
def serve_in_thread(
    app: Any, *, port: int | None = None, send_buffer: int | None = None, **config: Any
) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 and yield its base URL; shut it down on exit.

    `send_buffer`: SO_SNDBUF for every accepted connection (Linux copies it from the listening
    socket), so a test can make a client that stops reading fill the server's side in a few
    kilobytes instead of the megabytes TCP autotuning would otherwise absorb."""
    port = port or free_port()
    server = _ThreadedServer(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **config
        )
    )
    sockets = None
    if send_buffer is not None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        listener.bind(("127.0.0.1", port))
        sockets = [listener]
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server thread died during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start within 20 s")
        time.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    RUNNING[base_url] = (app, server)
    try:
        yield base_url
    finally:
        RUNNING.pop(base_url, None)
        server.should_exit = True
        thread.join(timeout=10)
