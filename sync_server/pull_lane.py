"""The pull route's own lane: `GET /api/sync/pull` through the edge, CORS and compression
middleware straight to its handler, past the rest of the stack.

Background pulls are nearly every request a phone makes, and most are answered from the
shared tail in a few microseconds of our own work; what the framework adds around that was
about half of their cost. The layers skipped add nothing to a GET pull: the body cap and
inflation (it has no body), Starlette's two error middleware (errors are mapped here, as the
app's handlers map them) and the router's path matching (the path is known). What a
request sees is unchanged: the same edge (request id, admission, security headers, access
log, metrics), the same handler, the same error envelopes."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from protocol.errors import FreshRootsError
from sync_server.errors import (
    DEPENDENCY_ERRORS,
    crash_response,
    dependency_response,
    error_response,
)
from sync_server.middleware import NUL_PARAMETER, has_nul_parameter


class PullLane:
    """The endpoint at the end of the lane: the route's handler, its errors as envelopes."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.handler = route.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # the metric and access-log label, as the router sets it
        response: Response
        if has_nul_parameter(scope):  # what BodyMiddleware refuses for every other route
            response = error_response(NUL_PARAMETER)
        else:
            try:
                response = await self.handler(Request(scope, receive))
            except FreshRootsError as error:
                response = error_response(error)
            except DEPENDENCY_ERRORS as error:
                response = dependency_response(error, scope["path"])
            except Exception:
                response = crash_response(scope["path"])
        await response(scope, receive, send)


def takes(scope: Scope, path: str) -> bool:
    """A request the lane answers: a GET of the route's path (anything else, a POST or a
    HEAD, goes through the whole stack and gets what the router says)."""
    return bool(scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == path)


def build_lane(route: Route, middleware: Sequence[Middleware]) -> ASGIApp:
    """The endpoint wrapped in `middleware` (outermost first), built as Starlette builds its
    stack."""
    app: ASGIApp = PullLane(route)
    for middleware_class, args, options in reversed(middleware):
        app = middleware_class(app, *args, **options)
    return app
