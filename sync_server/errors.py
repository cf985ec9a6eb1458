"""The server's side of the error contract: a `protocol.errors.FreshRootsError` becomes its
HTTP answer here, and nowhere else."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from protocol.errors import FreshRootsError

__all__ = ["error_response"]


def error_response(error: FreshRootsError) -> Response:
    return Response(
        orjson.dumps(error.envelope()),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )
