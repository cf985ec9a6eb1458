"""One-time codes: email verification and password reset (issue: accounts)."""

from __future__ import annotations

import asyncio

import orjson
from sqlalchemy import select

from storage.db import Database
from storage.models import OutboxItem
from tests.conftest import Backend
from tests.support.api import Api, login, register


def latest_code(backend: Backend, email: str) -> str:
    """The code as the outbox will email it (the SMTP leg is tested with the email channel)."""

    async def read() -> str:
        db = Database(backend.env["DATABASE_URL"])
        try:
            async with db.read() as conn:
                payload = (
                    await conn.execute(
                        select(OutboxItem.payload)
                        .where(OutboxItem.recipient == email, OutboxItem.channel == "email")
                        .order_by(OutboxItem.id.desc())
                        .limit(1)
                    )
                ).scalar_one()
        finally:
            await db.dispose()
        return str(orjson.loads(payload)["code"])

    return asyncio.run(read())


def test_verify_email(server: str, backend: Backend) -> None:
    api = register(server, "verify")
    assert api.post("/api/auth/verify-email/request").status_code == 202
    code = latest_code(backend, api.user["email"])
    assert len(code) == 6 and code.isdigit()
    wrong = "000000" if code != "000000" else "111111"
    response = api.post("/api/auth/verify-email/confirm", json={"code": wrong})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_code"
    confirmed = api.post("/api/auth/verify-email/confirm", json={"code": code})
    assert confirmed.status_code == 200 and confirmed.json()["email_verified"] is True
    reused = api.post("/api/auth/verify-email/confirm", json={"code": code})
    assert reused.status_code == 400


def test_password_reset_signs_everyone_out(server: str, backend: Backend) -> None:
    api = register(server, "forgetful", password="old password 1")
    email = api.user["email"]
    anonymous = Api(server)
    assert anonymous.post("/api/auth/password-reset/request", json={"email": email}).json() == {}
    code = latest_code(backend, email)
    done = anonymous.post(
        "/api/auth/password-reset/confirm",
        json={"email": email, "code": code, "new_password": "new password 2"},
    )
    assert done.status_code == 204
    assert (
        anonymous.post("/api/auth/refresh", json={"refresh_token": api.refresh_token}).status_code
        == 401
    )
    assert (
        anonymous.post(
            "/api/auth/login", json={"email": email, "password": "old password 1"}
        ).status_code
        == 401
    )
    assert login(server, email, "new password 2").token
    again = anonymous.post(
        "/api/auth/password-reset/confirm",
        json={"email": email, "code": code, "new_password": "third pass 3"},
    )
    assert again.status_code == 400  # used


def test_the_sixth_wrong_try_is_locked_out_even_with_the_right_code(
    server: str, backend: Backend
) -> None:
    api = register(server, "guessed")
    email = api.user["email"]
    anonymous = Api(server)
    anonymous.post("/api/auth/password-reset/request", json={"email": email})
    code = latest_code(backend, email)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        response = anonymous.post(
            "/api/auth/password-reset/confirm",
            json={"email": email, "code": wrong, "new_password": "whatever pass"},
        )
        assert response.status_code == 400
    dead = anonymous.post(
        "/api/auth/password-reset/confirm",
        json={"email": email, "code": code, "new_password": "whatever pass"},
    )
    assert dead.status_code == 400 and dead.json()["error"]["code"] == "invalid_code"


def test_the_latest_code_is_the_one_that_counts(server: str, backend: Backend) -> None:
    api = register(server, "twice")
    codes: list[str] = []
    # Two random six-digit codes coincide once in a million; then a third request (the last
    # the resend limit allows) settles it. A server that reissues the same code fails here.
    while len(set(codes)) < 2 and len(codes) < 3:
        assert api.post("/api/auth/verify-email/request").status_code == 202
        codes.append(latest_code(backend, api.user["email"]))
    latest = codes[-1]
    earlier = {code for code in codes if code != latest}
    assert earlier, f"every resend carried the same code {latest}: nothing was replaced"
    for code in earlier:
        refused = api.post("/api/auth/verify-email/confirm", json={"code": code})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_code"
    assert api.post("/api/auth/verify-email/confirm", json={"code": latest}).status_code == 200


def test_resends_are_throttled(server: str) -> None:
    api = register(server, "impatient")
    statuses = [api.post("/api/auth/verify-email/request").status_code for _ in range(5)]
    assert statuses[:3] == [202, 202, 202] and statuses[3:] == [429, 429]


def test_reset_requests_do_not_reveal_accounts(server: str) -> None:
    api = register(server, "hidden")
    anonymous = Api(server)
    answers = [
        anonymous.post("/api/auth/password-reset/request", json={"email": email})
        for email in (api.user["email"], "nobody-here@example.mu")
    ]
    assert [(r.status_code, r.content) for r in answers] == [(202, b"{}")] * 2
    bad = anonymous.post(
        "/api/auth/password-reset/confirm",
        json={"email": "nobody-here@example.mu", "code": "123456", "new_password": "long enough 1"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_code"
