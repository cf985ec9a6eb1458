"""`GET /metrics`: Prometheus text for operators (keep it off the public internet)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sync_server.http import doc
from sync_server.metrics import Metrics


@doc("Operational metrics in Prometheus text format", tag="health")
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(await registry.render(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]
