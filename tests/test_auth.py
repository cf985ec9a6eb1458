"""Auth as the contract says, and every abuse refused with the right status and envelope."""

from __future__ import annotations

import gzip
import time

import jwt
import pytest

from tests.conftest import Backend
from tests.support.api import Api, login, register, unique_email
from tests.support.live_server import serve_in_thread


def assert_envelope(response, status: int, code: str | None = None) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code


def test_register_login_me_and_refresh_rotation(backend: Backend) -> None:
    # Reuse revokes at once only without the grace window (tests/test_refresh_grace.py has it).
    from sync_server.app import create_app

    with serve_in_thread(create_app(backend.settings(REFRESH_REUSE_GRACE_SECONDS="0"))) as server:
        _register_login_me_and_refresh_rotation(server)


def _register_login_me_and_refresh_rotation(server: str) -> None:
    email = unique_email()
    anonymous = Api(server)
    created = anonymous.post(
        "/api/auth/register",
        json={
            "email": email,
            "password": "secret pass 1",
            "name": "Asha",
            "phone": "+230 5789 1234",
        },
    )
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"user", "access_token", "refresh_token", "expires_in"}
    assert body["user"]["email"] == email and body["user"]["role"] == "user"

    me = Api(server, body["access_token"]).get("/api/me")
    assert me.status_code == 200 and me.json()["email"] == email

    api = login(server, email, "secret pass 1")
    first = api.refresh_token
    rotated = anonymous.post("/api/auth/refresh", json={"refresh_token": first})
    assert rotated.status_code == 200
    second = rotated.json()["refresh_token"]
    assert second != first

    # The spent token presented again revokes the whole family: the successor dies too.
    assert_envelope(anonymous.post("/api/auth/refresh", json={"refresh_token": first}), 401)
    assert_envelope(anonymous.post("/api/auth/refresh", json={"refresh_token": second}), 401)


def test_logout_revokes_the_refresh_token(server: str) -> None:
    api = register(server)
    assert (
        api.post("/api/auth/logout", json={"refresh_token": api.refresh_token}).status_code == 204
    )
    response = api.post("/api/auth/refresh", json={"refresh_token": api.refresh_token})
    assert_envelope(response, 401)


def test_duplicate_email_is_a_conflict(server: str) -> None:
    api = register(server)
    again = Api(server).post(
        "/api/auth/register",
        json={"email": api.user["email"].upper(), "password": "another pass", "name": "Twin"},
    )
    assert_envelope(again, 409, "email_taken")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"email": "not-an-email", "password": "long enough", "name": "A"}, "email"),
        ({"email": "a@b.mu", "password": "short", "name": "A"}, "password"),
        ({"email": "a@b.mu", "password": "long enough", "name": ""}, "name"),
        ({"email": "a@b.mu", "password": "long enough"}, None),
        ({"email": "a@b.mu", "password": 12345678, "name": "A"}, "password"),
    ],
)
def test_bad_registration_names_the_field(server: str, body: dict, field: str | None) -> None:
    response = Api(server).post("/api/auth/register", json=body)
    assert_envelope(response, 422, "validation_failed")
    if field:
        assert response.json()["error"]["field"] == field


def test_forged_none_and_expired_tokens_are_401(server: str, backend: Backend) -> None:
    api = register(server)
    claims = jwt.decode(api.token, options={"verify_signature": False})
    forged = jwt.encode({**claims, "role": "admin"}, "not-our-secret", algorithm="HS256")
    unsigned = jwt.encode({**claims, "role": "admin"}, key=None, algorithm="none")  # type: ignore[arg-type]
    secret = backend.env["JWT_SECRET"]
    expired = jwt.encode(
        {**claims, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
        secret,
        algorithm="HS256",
    )
    for token in (forged, unsigned, expired, "garbage", api.token + "x"):
        assert_envelope(Api(server, token).get("/api/me"), 401)
    assert_envelope(Api(server).get("/api/me"), 401, "unauthorized")
    assert Api(server, expired).get("/api/me").json()["error"]["code"] == "token_expired"


def test_user_on_admin_routes_is_403_whatever_the_body(buyer: Api) -> None:
    for method, path in (
        ("POST", "/api/admin/listings"),
        ("PATCH", "/api/admin/listings/x1"),
        ("PUT", "/api/admin/orders/abc/approve"),
        ("GET", "/api/admin/orders"),
    ):
        assert_envelope(buyer.request(method, path, content=b"{not json"), 403, "forbidden")


def test_malformed_json_and_wrong_types(server: str) -> None:
    api = Api(server)
    response = api.post(
        "/api/auth/login", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert_envelope(response, 400, "malformed_json")
    assert_envelope(api.post("/api/auth/login", json=["a"]), 422)


def test_two_mebibyte_body_is_413(server: str) -> None:
    response = Api(server).post(
        "/api/auth/login",
        content=b"x" * (2 * 1024 * 1024),
        headers={"content-type": "application/json"},
    )
    assert_envelope(response, 413, "payload_too_large")
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))
    response = Api(server).post(
        "/api/auth/login",
        content=bomb,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_envelope(response, 413, "payload_too_large")


def test_gzip_request_body_is_accepted(server: str) -> None:
    email = unique_email()
    body = gzip.compress(
        f'{{"email": "{email}", "password": "gzip pass 1", "name": "Zip"}}'.encode()
    )
    response = Api(server).post(
        "/api/auth/register",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 201, response.text


def test_wrong_passwords_for_one_account_are_cut_off(backend: Backend) -> None:
    settings = backend.settings(
        RATE_LOGIN_FAILURES_PER_ACCOUNT="10",
        REDIS_PREFIX=backend.env.get("REDIS_PREFIX", "") + "bf:",
    )
    from sync_server.app import create_app

    with serve_in_thread(create_app(settings)) as base_url:
        victim = register(base_url, "victim", password="the right one")
        api = Api(base_url)
        statuses = []
        for _ in range(120):
            response = api.post(
                "/api/auth/login", json={"email": victim.user["email"], "password": "wrong guess"}
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) > 0
                assert response.json()["error"]["code"] == "rate_limited"
        assert 500 not in statuses
        first_429 = statuses.index(429)
        assert first_429 <= 11, statuses[:15]
        assert set(statuses[first_429:]) == {429}
        # Another account on the same address is unaffected (CGNAT: per-account limit).
        other = register(base_url, "neighbour", password="neighbour pass")
        assert login(base_url, other.user["email"], "neighbour pass").token


def test_account_export_and_erasure(server: str, admin: Api) -> None:
    api = register(server, "leaving")
    listing = admin.create_listing(stock=5)
    response = api.post(
        "/api/orders/purchase-request",
        json={
            "order_id": "order-" + api.user["id"][:10],
            "payment_method": "cod",
            "note": "gate 2",
            "items": [
                {
                    "item_id": "item-" + api.user["id"][:10],
                    "listing_id": listing["id"],
                    "quantity": 1,
                }
            ],
        },
    )
    assert response.status_code == 201, response.text
    exported = api.get("/api/me/export")
    assert exported.status_code == 200
    data = exported.json()
    assert data["user"]["email"] == api.user["email"]
    assert len(data["orders"]) == 1 and data["orders"][0]["note"] == "gate 2"

    assert api.delete("/api/me").status_code == 204
    assert api.get("/api/me").status_code == 401
    order = admin.get(f"/api/orders/{data['orders'][0]['id']}").json()
    assert order["note"] is None and order["total"] == listing["price"]  # kept, anonymised
    assert (
        Api(server).post("/api/auth/refresh", json={"refresh_token": api.refresh_token}).status_code
        == 401
    )
