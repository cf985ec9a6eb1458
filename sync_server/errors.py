"""The server's side of the error contract: a `protocol.errors.FreshRootsError` becomes its
HTTP answer here, and nowhere else."""

from __future__ import annotations

import logging

import orjson
from starlette.responses import Response

from protocol.errors import FreshRootsError

__all__ = ["crash_response", "error_response"]

log = logging.getLogger("freshroots")


def error_response(error: FreshRootsError) -> Response:
    return Response(
        orjson.dumps(error.envelope()),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def crash_response(path: str) -> Response:
    """A bug's answer: logged with its traceback (Sentry reads the log), a bare 500 envelope
    to the client. Call it from an `except` block."""
    log.exception("unhandled error", extra={"path": path})
    return error_response(FreshRootsError())
