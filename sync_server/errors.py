"""The server's side of the error contract: a `protocol.errors.FreshRootsError` becomes its
HTTP answer here, and nowhere else."""

from __future__ import annotations

import logging

import orjson
import redis.exceptions
from starlette.responses import Response

from protocol.errors import FreshRootsError, ServiceUnavailable

# A dependency's failure that is not ours and passes: Redis gone, restarting, or between
# masters during a Sentinel failover (redis-py turns a demoted master's READONLY into a
# ConnectionError under Sentinel; a plain REDIS_URL that lands on a replica answers it as is).
DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
)
REDIS_UNAVAILABLE = ServiceUnavailable(
    "The cache is unavailable for a moment; nothing was changed. Retry shortly.", retry_after=2
)

__all__ = ["DEPENDENCY_ERRORS", "crash_response", "dependency_response", "error_response"]

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


def dependency_response(error: Exception, path: str) -> Response:
    """A 503 + Retry-After for one of `DEPENDENCY_ERRORS`: the request did nothing it could
    not do again, and the client retries. A warning, not a traceback: it is an outage."""
    log.warning("redis unavailable: %s", error.__class__.__name__, extra={"path": path})
    return error_response(REDIS_UNAVAILABLE)
