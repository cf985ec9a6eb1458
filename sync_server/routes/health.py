"""Liveness and readiness probes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sync_server.http import doc, json_response
from sync_server.services import services_of


@doc("The process is up", tag="health", response="Health")
async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


@doc(
    "The database (and Redis, when configured) answer",
    tag="health",
    response="Readiness",
    other=((503, "Not ready: a dependency is down (Retry-After)", "Readiness"),),
)
async def readyz(request: Request) -> Response:
    services = services_of(request)
    checks: dict[str, str] = {}
    try:
        await services.db.ping()
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"down: {error.__class__.__name__}"
    if services.redis is not None:
        try:
            await services.cache.ping()
            checks["redis"] = "ok"
        except Exception as error:
            checks["redis"] = f"down: {error.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    status_code = 200 if ready else 503
    headers = None if ready else {"Retry-After": "5"}
    return json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status_code, headers
    )


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
