"""`GET /metrics`: Prometheus text for operators, never for the public internet.

With `METRICS_TOKEN` set, the scraper must send `Authorization: Bearer <token>` (Prometheus:
`authorization: {credentials: <token>}`); anything else is a 401. deploy/nginx.conf does not
publish the path at all: the scraper reaches an instance directly on the internal network.
"""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.errors import Unauthorized
from sync_server.http import doc
from sync_server.metrics import Metrics
from sync_server.services import services_of


@doc(
    "Operational metrics in Prometheus text format (METRICS_TOKEN: bearer)",
    auth="metrics",
    tag="health",
    response="text",
    media_type="text/plain",
)
async def metrics(request: Request) -> Response:
    expected = services_of(request).settings.metrics_token
    if expected:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            raise Unauthorized("Send the metrics token as a bearer token.")
    registry: Metrics = request.app.state.metrics
    return Response(await registry.render(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]
