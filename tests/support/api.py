"""A thin test client over real HTTP, with the few steps every test repeats."""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

import httpx

_counter = itertools.count()


def unique_email(tag: str = "buyer") -> str:
    return f"{tag}-{next(_counter)}-{secrets.token_hex(4)}@example.mu"


def client_id() -> str:
    return "dev-" + secrets.token_hex(8)


def purchase_args(
    listing_id: str, quantity: int = 1, order_id: str | None = None, note: str | None = None
) -> dict[str, Any]:
    """A purchase request's arguments: one item, cash on delivery, fresh ids."""
    args: dict[str, Any] = {
        "order_id": order_id or "ord-" + secrets.token_hex(6),
        "payment_method": "cod",
        "items": [
            {
                "item_id": "itm-" + secrets.token_hex(6),
                "listing_id": listing_id,
                "quantity": quantity,
            }
        ],
    }
    if note is not None:
        args["note"] = note
    return args


def purchase(
    number: int,
    listing_id: str,
    *,
    order_id: str | None = None,
    quantity: int = 1,
    note: str | None = None,
) -> dict[str, Any]:
    """A `purchase_request` mutation of one item, cash on delivery, with fresh ids."""
    args = purchase_args(listing_id, quantity, order_id, note)
    return {"id": number, "name": "purchase_request", "args": args}


class Api:
    """One signed-in person (or anonymous) talking to one server."""

    def __init__(self, base_url: str, token: str | None = None, **session: Any) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.token = token
        self.user: dict[str, Any] = session.get("user", {})
        self.refresh_token: str | None = session.get("refresh_token")

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A 503 means "nothing was changed, retry later": do as a real client would."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        for _ in range(5):
            response = self.http.request(method, path, headers=headers, **kwargs)
            if response.status_code != 503:
                return response
            time.sleep(min(1.0, float(response.headers.get("retry-after", "1"))))
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def on(self, base_url: str) -> Api:
        """The same person, talking to another server instance."""
        return Api(base_url, self.token, user=self.user, refresh_token=self.refresh_token)

    # -- steps -----------------------------------------------------------------------------

    def create_listing(self, **values: Any) -> dict[str, Any]:
        body = {
            "title": "Pomme d'amour",
            "price": 6000,
            "unit": "kg",
            "stock": 10,
            "category": "vegetables",
            "status": "published",
            **values,
        }
        response = self.post("/api/admin/listings", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def pull_all(self, cursor: str | None = None, limit: int = 200) -> tuple[str, list[dict]]:
        """Pull until more=false; returns the final cursor and every page."""
        pages = []
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            response = self.get("/api/sync/pull", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            pages.append(page)
            assert len(pages) < 2000, "pull never reached more=false"
            cursor = page["cursor"]
            if not page["more"]:
                return cursor, pages

    def push(self, client: str, mutations: list[dict[str, Any]]) -> httpx.Response:
        return self.post("/api/sync/push", json={"client_id": client, "mutations": mutations})


def register(base_url: str, tag: str = "buyer", password: str = "correct horse 1") -> Api:
    api = Api(base_url)
    response = api.post(
        "/api/auth/register", json={"email": unique_email(tag), "password": password, "name": tag}
    )
    assert response.status_code == 201, response.text
    session = response.json()
    api.token = session["access_token"]
    api.refresh_token = session["refresh_token"]
    api.user = session["user"]
    return api


def login(base_url: str, email: str, password: str) -> Api:
    api = Api(base_url)
    response = api.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    session = response.json()
    api.token, api.refresh_token, api.user = (
        session["access_token"],
        session["refresh_token"],
        session["user"],
    )
    return api
