"""One-time codes by email: verify an address, reset a forgotten password."""

from __future__ import annotations

import contextlib
import hashlib

import msgspec
from sqlalchemy import update
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.errors import InvalidCode, RateLimited
from storage import users
from storage.db import new_id, now_ms
from storage.models import User
from storage.outbox import enqueue
from sync_server.http import authenticate, doc, json_response, no_content, read_json
from sync_server.routes.auth import client_ip, signed_in_user
from sync_server.security import check_password_shape
from sync_server.services import Services, services_of

VERIFY, RESET = "verify_email", "password_reset"


class ConfirmCode(msgspec.Struct, forbid_unknown_fields=True):
    code: str


class ResetRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: str


class ResetConfirm(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    code: str
    new_password: str


async def _send_code(services: Services, user: dict[str, str], purpose: str) -> None:
    if not await services.codes.may_send(purpose, user["id"]):
        raise RateLimited(600, "A code was sent recently; check your mailbox or wait.")
    code = await services.codes.issue(purpose, user["id"])
    subject = "Your Fresh Roots code" if purpose == VERIFY else "Reset your Fresh Roots password"
    async with services.changelog.transaction() as tx:
        await enqueue(
            tx,
            "email",
            f"code:{purpose}:{user['id']}:{new_id()}",
            user["email"],
            {
                "template": "one_time_code",
                "title": subject,
                "code": code,
                "purpose": purpose,
                "name": user["name"],
            },
        )


@doc(
    "Email a six-digit code to confirm the signed-in user's address",
    auth="user",
    status=202,
    tag="auth",
    response="Empty",
)
async def verify_request(request: Request) -> Response:
    user = await signed_in_user(request)
    await _send_code(services_of(request), dict(user), VERIFY)
    return json_response({}, 202)


@doc(
    "Confirm the address with the emailed code",
    auth="user",
    body=ConfirmCode,
    tag="auth",
    response="User",
)
async def verify_confirm(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    body = await read_json(request, ConfirmCode)
    if not await services.codes.redeem(VERIFY, principal.user_id, body.code.strip()):
        raise InvalidCode()
    async with services.db.write() as conn:
        await conn.execute(
            update(User)
            .where(User.id == principal.user_id)
            .values(email_verified=True, updated_at=now_ms())
        )
    async with services.db.read() as conn:
        user = await users.find_by_id(conn, principal.user_id)
    return json_response(users.user_to_wire(user))


@doc(
    "Email a password-reset code (same answer whether or not the account exists)",
    body=ResetRequest,
    status=202,
    tag="auth",
    response="Empty",
    errors=(429,),
)
async def reset_request(request: Request) -> Response:
    services = services_of(request)
    limits = services.limiter.limits
    await services.limiter.hit(
        f"reset:{client_ip(request)}", limits.registrations_per_ip, limits.registration_window
    )
    body = await read_json(request, ResetRequest)
    async with services.db.read() as conn:
        user = await users.find_by_email(conn, body.email.strip().lower()[:254])
    if user is None:
        # No account enumeration by timing either: do the same cache and database work.
        ghost = "ghost-" + hashlib.sha256(body.email.strip().lower().encode()).hexdigest()[:16]
        if await services.codes.may_send(RESET, ghost):
            await services.codes.issue(RESET, ghost)
        async with services.changelog.transaction():
            pass
        return json_response({}, 202)
    # Answering 429 here would tell a stranger that the account exists.
    with contextlib.suppress(RateLimited):
        await _send_code(services, dict(user), RESET)
    return json_response({}, 202)


@doc(
    "Set a new password with the emailed code; every session is signed out",
    body=ResetConfirm,
    status=204,
    tag="auth",
)
async def reset_confirm(request: Request) -> Response:
    services = services_of(request)
    body = await read_json(request, ResetConfirm)
    check_password_shape(body.new_password)
    async with services.db.read() as conn:
        user = await users.find_by_email(conn, body.email.strip().lower()[:254])
    if user is None or not await services.codes.redeem(RESET, user["id"], body.code.strip()):
        raise InvalidCode()
    password_hash = await services.passwords.hash(body.new_password)
    async with services.db.write() as conn:
        await conn.execute(
            update(User)
            .where(User.id == user["id"])
            .values(password_hash=password_hash, updated_at=now_ms())
        )
    await services.refresh_tokens.revoke_user(user["id"])
    return no_content()


routes = [
    Route("/api/auth/verify-email/request", verify_request, methods=["POST"]),
    Route("/api/auth/verify-email/confirm", verify_confirm, methods=["POST"]),
    Route("/api/auth/password-reset/request", reset_request, methods=["POST"]),
    Route("/api/auth/password-reset/confirm", reset_confirm, methods=["POST"]),
]
