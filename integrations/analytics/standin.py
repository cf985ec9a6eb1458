"""A stand-in for PostHog's `/batch/` capture endpoint, for tests and local runs: point
`POSTHOG_HOST` at it.

Like PostHog it takes the project key as `api_key` (or `token`) in the JSON body, a body that may
be gzipped (`Content-Encoding: gzip`, or `?compression=gzip`/`gzip-js` as posthog-js sends),
answers `{"status": 1}` on success and a 401 `authentication_error` for a wrong key. Tests can
make it fail the next N requests with a 503 to exercise retries.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MAX_BODY_BYTES = 20 * 1024 * 1024  # the batch size limit PostHog clients assume (20 MB)


@dataclass
class PostHogStandInState:
    events: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    gzipped_requests: int = 0
    fail_next: int = 0  # answer this many coming requests with 503


def create_posthog_standin(api_key: str) -> Starlette:
    """`app.state.posthog` is the `PostHogStandInState`."""
    state = PostHogStandInState()

    async def batch(request: Request) -> JSONResponse:
        state.requests += 1
        if state.fail_next > 0:
            state.fail_next -= 1
            return JSONResponse({"detail": "service unavailable"}, status_code=503)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _invalid("Request body too large", status=413)
        compression = request.query_params.get("compression", "")
        if request.headers.get("content-encoding", "").lower() == "gzip" or compression in {
            "gzip",
            "gzip-js",
        }:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                return _invalid("Malformed request data: invalid gzip body")
            state.gzipped_requests += 1
        try:
            payload = json.loads(raw)
        except ValueError:
            return _invalid("Malformed request data: invalid JSON")
        if not isinstance(payload, dict):
            return _invalid("Malformed request data: expected an object")
        if (payload.get("api_key") or payload.get("token")) != api_key:
            return JSONResponse(
                {
                    "type": "authentication_error",
                    "code": "invalid_api_key",
                    "detail": "Project API key invalid. You can find your project API key in "
                    "PostHog project settings.",
                    "attr": None,
                },
                status_code=401,
            )
        events = payload.get("batch")
        if not isinstance(events, list) or not all(_valid_event(e) for e in events):
            return _invalid("Invalid payload: every event needs an event name and a distinct_id")
        state.events.extend(events)
        return JSONResponse({"status": 1})

    app = Starlette(
        routes=[
            Route("/batch/", batch, methods=["POST"]),
            Route("/batch", batch, methods=["POST"]),
        ]
    )
    app.state.posthog = state
    return app


def _valid_event(event: object) -> bool:
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return False
    properties = event.get("properties") or {}
    distinct_id = event.get("distinct_id") or (
        properties.get("distinct_id") if isinstance(properties, dict) else None
    )
    return isinstance(distinct_id, str | int) and str(distinct_id) != ""


def _invalid(detail: str, *, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {"type": "validation_error", "code": "invalid_payload", "detail": detail, "attr": None},
        status_code=status,
    )
