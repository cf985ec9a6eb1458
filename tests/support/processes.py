"""Real server processes (`freshroots serve`), for tests about several instances and crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from tests.support.live_server import free_port


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    port: int

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush, like a power cut."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def start_server(
    env: dict[str, str],
    port: int | None = None,
    log: IO[bytes] | None = None,
    serve_args: Sequence[str] = (),
    log_level: str | None = "WARNING",
) -> ServerProcess:
    """`log`: where the server's stderr goes. Without one it is a pipe, read only if the
    server dies at start, so long runs that may log a lot should pass a file.
    `log_level`: tests keep the server quiet; None leaves the user's default (the access log
    on), as benchmarks must — with a `log` file, or the unread pipe fills and stalls it."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_server.cli", "serve", "--port", str(port), *serve_args],
        env={**os.environ, **env, **({"LOG_LEVEL": log_level} if log_level else {})},
        stdout=subprocess.DEVNULL,
        stderr=log if log is not None else subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read().decode()[-2000:] if process.stderr else "see its log"
            raise RuntimeError(f"server exited: {output}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return ServerProcess(base_url, process, port)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become ready in 30 s")


@contextmanager
def server_processes(
    env: dict[str, str], count: int, logs: Path | None = None
) -> Iterator[list[ServerProcess]]:
    """`logs`: a folder for each server's stderr (`server-<n>.log`), for servers that may log
    a lot (an outage logs a line per failed announcement): an unread pipe fills in a second
    and then blocks the server's event loop on a log write."""
    with ExitStack() as files:
        streams = [
            files.enter_context((logs / f"server-{number}.log").open("wb")) if logs else None
            for number in range(count)
        ]
        servers = [start_server(env, log=stream) for stream in streams]
        try:
            yield servers
        finally:
            for server in servers:
                if server.process.poll() is None:
                    server.process.terminate()
                    try:
                        server.process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        server.kill()
