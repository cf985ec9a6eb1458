"""`/api/sync/watermelon`: WatermelonDB's `synchronize()` backend protocol (see PROTOCOL.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.errors import ValidationFailed
from storage import watermelon
from sync_server import reading
from sync_server.http import authenticate, doc, json_response, read_json
from sync_server.services import services_of
from sync_server.syncing import wait_for_tail


def last_pulled_at(request: Request) -> int | None:
    raw = request.query_params.get("last_pulled_at")
    if raw in (None, "", "null", "undefined"):
        return None
    try:
        value = int(raw)  # type: ignore[arg-type]
    except ValueError:
        raise ValidationFailed(
            "last_pulled_at must be a number or null", field="last_pulled_at"
        ) from None
    if not 0 <= value <= 2**53:
        raise ValidationFailed("last_pulled_at is out of range", field="last_pulled_at")
    return value


@doc(
    "WatermelonDB pull: changes since last_pulled_at",
    auth="user",
    tag="sync",
    query=(
        ("last_pulled_at", "The previous answer's timestamp; absent or null: a first sync"),
        ("schema_version", "The app's WatermelonDB schema version"),
        ("migration", "WatermelonDB's migration description, if any"),
    ),
    response="WatermelonPull",
)
async def pull(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    timestamp = last_pulled_at(request)
    since = watermelon.cursor_of(timestamp)
    body = None
    if since is not None and services.live.tail.covers(since.position):
        # The shared tail answers like the database would, with no query; a first sync or a
        # timestamp older than the tail reads the database.
        await wait_for_tail(services, principal)
        body = watermelon.pull_from_tail(services.live.tail, principal, since.position)
    if body is None:

        async def read_changes(conn: AsyncConnection) -> dict[str, Any]:
            return await watermelon.pull(conn, principal, timestamp)

        body = await reading.read(
            services, read_changes, writer=principal, after=since.position if since else 0
        )
    return json_response(body)


@doc(
    "WatermelonDB push: the changes object, applied in one transaction",
    auth="user",
    tag="sync",
    query=(("last_pulled_at", "The timestamp of the pull the changes are based on"),),
    body="WatermelonChanges",
    response="WatermelonPushed",
    description="A created `orders` record with its `order_items` is a purchase request, "
    "idempotent by the order's id; prices and totals are the server's. A request that "
    "cannot be honoured is kept as a `rejected` order; records the caller may not write "
    "come back in `experimentalRejectedIds`.",
)
async def push(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    since = last_pulled_at(request)
    changes = await read_json(request, dict[str, Any])
    rejected = await services.changelog.run(
        lambda tx: watermelon.push(tx, principal, changes, since)
    )
    return json_response({"experimentalRejectedIds": rejected} if rejected else {})


routes = [
    Route("/api/sync/watermelon", pull, methods=["GET"]),
    Route("/api/sync/watermelon", push, methods=["POST"]),
]
