"""`GET /api/sync/ws`: live sync (see `sync_server.live`)."""

from __future__ import annotations

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from sync_server.live.session import run_session
from sync_server.services import services_of


async def live(websocket: WebSocket) -> None:
    await run_session(websocket, services_of(websocket))


routes = [WebSocketRoute("/api/sync/ws", live)]
