"""Dashboard sessions: the refresh token lives in an HttpOnly cookie the page's script never
sees; the short-lived access token lives in the page's memory only.

The cookie is sent only to these three routes (`Path=/admin/session`, `SameSite=Strict`),
and each of them also requires an `X-CSRF-Token` header equal to a second, readable cookie
(double submit): a page on another site can neither read that cookie nor set the header.
API calls themselves carry the bearer access token, which no other site can attach.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.errors import Forbidden, InvalidToken
from storage import users
from sync_server.http import doc, json_response, read_json
from sync_server.routes.auth import check_credentials
from sync_server.services import Services, services_of

REFRESH_COOKIE, CSRF_COOKIE = "fr_admin_refresh", "fr_admin_csrf"
COOKIE_PATH = "/admin/session"


class Credentials(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    password: str


def _session_response(services: Services, user: dict[str, str], refresh_token: str) -> Response:
    csrf = secrets.token_urlsafe(24)
    response = json_response(
        {
            "access_token": services.access_tokens.issue(user["id"], user["role"]),
            "expires_in": services.access_tokens.lifetime_seconds,
            "user": users.user_to_wire(user),
            "csrf_token": csrf,
        }
    )
    max_age = services.settings.refresh_token_seconds
    response.set_cookie(
        REFRESH_COOKIE,
        refresh_token,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )
    # Readable by the dashboard page (path /admin) so it can echo it in X-CSRF-Token.
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        max_age=max_age,
        path="/admin",
        secure=True,
        httponly=False,
        samesite="strict",
    )
    return response


def _check_csrf(request: Request) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get("x-csrf-token", "")
    if not cookie or not hmac.compare_digest(cookie, header):
        raise Forbidden("Missing or wrong CSRF token.", code="csrf_failed")


@doc(
    "Dashboard sign-in: sets the HttpOnly refresh cookie",
    body=Credentials,
    tag="admin",
    response="DashboardSession",
    errors=(401, 403, 429),
)
async def sign_in(request: Request) -> Response:
    body = await read_json(request, Credentials)
    user = await check_credentials(request, body.email, body.password)
    services = services_of(request)
    if user["role"] != "admin":
        raise Forbidden("The dashboard is for admins.")
    return _session_response(services, dict(user), await services.refresh_tokens.issue(user["id"]))


@doc(
    "Dashboard token refresh (cookie + X-CSRF-Token)",
    auth="dashboard",
    tag="admin",
    response="DashboardSession",
)
async def refresh(request: Request) -> Response:
    _check_csrf(request)
    services = services_of(request)
    token = request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise InvalidToken("No dashboard session; sign in.")
    rotation = await services.refresh_tokens.rotate(token)
    async with services.db.read() as conn:
        user = await users.find_by_id(conn, rotation.user_id)
    if user is None or user["role"] != "admin":
        raise InvalidToken("The session is no longer valid.")
    return _session_response(services, dict(user), rotation.token)


@doc("Dashboard sign-out", auth="dashboard", status=204, tag="admin")
async def sign_out(request: Request) -> Response:
    _check_csrf(request)
    services = services_of(request)
    token = request.cookies.get(REFRESH_COOKIE)
    if token:
        with contextlib.suppress(InvalidToken):
            await services.refresh_tokens.revoke(token)
    response = Response(status_code=204)
    response.delete_cookie(
        REFRESH_COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict"
    )
    response.delete_cookie(CSRF_COOKIE, path="/admin", secure=True, samesite="strict")
    return response


routes = [
    Route("/admin/session", sign_in, methods=["POST"]),
    Route("/admin/session/refresh", refresh, methods=["POST"]),
    Route("/admin/session/logout", sign_out, methods=["POST"]),
]
