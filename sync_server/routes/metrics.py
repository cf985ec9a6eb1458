"""`GET /metrics`: Prometheus text for operators (keep it off the public internet)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from storage.outbox import stats
from storage.pull import log_head
from sync_server.http import doc
from sync_server.services import services_of


@doc("Operational metrics in Prometheus text format", tag="health")
async def metrics(request: Request) -> Response:
    services = services_of(request)
    outbox = await stats(services.db)
    async with services.db.read() as conn:
        head = await log_head(conn)
    lines = [
        "# HELP freshroots_outbox_items Outbox items by status.",
        "# TYPE freshroots_outbox_items gauge",
        *(
            f'freshroots_outbox_items{{status="{status}"}} {outbox[status]:.0f}'
            for status in ("pending", "sending", "sent", "dead")
        ),
        "# HELP freshroots_outbox_lag_seconds Age of the oldest undelivered outbox item.",
        "# TYPE freshroots_outbox_lag_seconds gauge",
        f"freshroots_outbox_lag_seconds {outbox['lag_seconds']:.3f}",
        "# HELP freshroots_changelog_head Newest committed change-log position.",
        "# TYPE freshroots_changelog_head gauge",
        f"freshroots_changelog_head {head}",
        "# HELP freshroots_live_sessions WebSocket sessions on this process.",
        "# TYPE freshroots_live_sessions gauge",
        f"freshroots_live_sessions {len(services.live.sessions)}",
        "# HELP freshroots_live_overflows Times a slow socket fell back to its cursor.",
        "# TYPE freshroots_live_overflows counter",
        f"freshroots_live_overflows {services.live.overflows}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


routes = [Route("/metrics", metrics, methods=["GET"])]
