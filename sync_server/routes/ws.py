"""`GET /api/sync/ws`: live sync (see `sync_server.live`).

Not a router entry: `FreshRootsApp` hands the socket to `live_socket` before the middleware
stack (see its docstring for why)."""

from __future__ import annotations

from sync_server.live.session import live_socket

LIVE_PATH = "/api/sync/ws"

__all__ = ["LIVE_PATH", "live_socket"]
