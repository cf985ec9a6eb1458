"""Accounts and sessions: register, login, refresh (rotation), logout, me, export, erase."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.errors import InvalidCredentials, InvalidToken, ValidationFailed
from storage import users
from sync_server.http import authenticate, doc, json_response, no_content, read_json
from sync_server.security import check_password_shape
from sync_server.services import Services, services_of

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
PHONE = re.compile(r"^\+?[0-9 ]{7,20}$")


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    password: str
    name: str
    phone: str | None = None


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    password: str


class RefreshBody(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: str


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def session(services: Services, user: Any, status_code: int) -> Response:
    refresh_token = await services.refresh_tokens.issue(user["id"])
    return json_response(
        {
            "user": users.user_to_wire(user),
            "access_token": services.access_tokens.issue(user["id"], user["role"]),
            "refresh_token": refresh_token,
            "expires_in": services.access_tokens.lifetime_seconds,
        },
        status_code,
    )


@doc(
    "Create an account",
    body=RegisterBody,
    status=201,
    tag="auth",
    response="Session",
    errors=(409, 429),
)
async def register(request: Request) -> Response:
    services = services_of(request)
    limits = services.limiter.limits
    await services.limiter.hit(
        f"register:{client_ip(request)}", limits.registrations_per_ip, limits.registration_window
    )
    body = await read_json(request, RegisterBody)
    email = body.email.strip().lower()
    if not EMAIL.fullmatch(email) or len(email) > 254:
        raise ValidationFailed("email is not a valid address", field="email")
    check_password_shape(body.password)
    name = body.name.strip()
    if not 1 <= len(name) <= 120:
        raise ValidationFailed("name must be 1 to 120 characters", field="name")
    if body.phone is not None and not PHONE.fullmatch(body.phone):
        raise ValidationFailed("phone must be digits, spaces and an optional +", field="phone")
    password_hash = await services.passwords.hash(body.password)
    async with services.changelog.transaction() as tx:
        user = await users.create_user(
            tx, email=email, password_hash=password_hash, name=name, phone=body.phone
        )
    return await session(services, user, 201)


async def check_credentials(request: Request, email: str, password: str) -> Any:
    """The user behind a correct email and password; brute force is cut off per account (and,
    generously, per IP) before any bcrypt work is spent on it."""
    services = services_of(request)
    limits = services.limiter.limits
    email = email.strip().lower()[:254]
    account_key, ip_key = f"login-fail:acct:{email}", f"login-fail:ip:{client_ip(request)}"
    message = "Too many failed sign-ins; wait before trying again."
    window = limits.login_failure_window
    await services.limiter.refuse_if_exhausted(
        account_key, limits.login_failures_per_account, window, message
    )
    await services.limiter.refuse_if_exhausted(
        ip_key, limits.login_failures_per_ip, window, message
    )
    async with services.db.read() as conn:
        user = await users.find_by_email(conn, email)
    if not await services.passwords.verify(password, user["password_hash"] if user else None):
        await services.limiter.count(account_key, window)
        await services.limiter.count(ip_key, window)
        raise InvalidCredentials()
    await services.limiter.clear(account_key)
    return user


@doc("Sign in", body=LoginBody, tag="auth", response="Session", errors=(401, 429))
async def login(request: Request) -> Response:
    body = await read_json(request, LoginBody)
    user = await check_credentials(request, body.email, body.password)
    return await session(services_of(request), user, 200)


@doc(
    "Exchange a refresh token for a new pair (the old one is spent)",
    body=RefreshBody,
    tag="auth",
    response="Session",
    errors=(401,),
    description="Presenting a spent token again within the grace period (a retry after a "
    "lost answer) answers a valid pair of the same family; after it, reuse revokes the "
    "whole family (401).",
)
async def refresh(request: Request) -> Response:
    services = services_of(request)
    body = await read_json(request, RefreshBody)
    rotation = await services.refresh_tokens.rotate(body.refresh_token)
    async with services.db.read() as conn:
        user = await users.find_by_id(conn, rotation.user_id)
    if user is None:
        raise InvalidToken("The account no longer exists.")
    return json_response(
        {
            "user": users.user_to_wire(user),
            "access_token": services.access_tokens.issue(user["id"], user["role"]),
            "refresh_token": rotation.token,
            "expires_in": services.access_tokens.lifetime_seconds,
        }
    )


@doc("Sign out: revoke the refresh token's family", body=RefreshBody, status=204, tag="auth")
async def logout(request: Request) -> Response:
    services = services_of(request)
    body = await read_json(request, RefreshBody)
    # Signing out twice, or with a dead token, is still signed out.
    with contextlib.suppress(InvalidToken):
        await services.refresh_tokens.revoke(body.refresh_token)
    return no_content()


@doc("The signed-in user", auth="user", tag="me", response="User")
async def me(request: Request) -> Response:
    return json_response(users.user_to_wire(await signed_in_user(request)))


async def signed_in_user(request: Request) -> Any:
    """The account behind the access token; a token outliving its (erased) account is 401."""
    principal = await authenticate(request)
    async with services_of(request).db.read() as conn:
        user = await users.find_by_id(conn, principal.user_id)
    if user is None:
        raise InvalidToken("The account no longer exists.")
    return user


@doc(
    "Everything we hold about the signed-in user (Data Protection Act 2017)",
    auth="user",
    tag="me",
    response="DataExport",
)
async def export(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)

    # On the primary: the account and device rows are not in the change log, so no position
    # says whether a replica holds a sign-up, a verification or an erasure just made.
    async with services.db.read() as conn:
        data = await users.export_user(conn, principal.user_id)
    return json_response(data, headers={"content-disposition": "attachment; filename=me.json"})


@doc(
    "Erase the signed-in user's personal data; orders are kept, anonymised",
    auth="user",
    status=204,
    tag="me",
)
async def erase(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    async with services.changelog.transaction() as tx:
        await users.erase_user(tx, principal.user_id)
    await services.refresh_tokens.revoke_user(principal.user_id)
    return no_content()


routes = [
    Route("/api/auth/register", register, methods=["POST"]),
    Route("/api/auth/login", login, methods=["POST"]),
    Route("/api/auth/refresh", refresh, methods=["POST"]),
    Route("/api/auth/logout", logout, methods=["POST"]),
    Route("/api/me", me, methods=["GET"]),
    Route("/api/me", erase, methods=["DELETE"]),
    Route("/api/me/export", export, methods=["GET"]),
]
