"""A stand-in MIPS-style gateway: the three endpoints with their auth checks, a hosted payment
page that posts the IMN back to the merchant, and hooks for tests (outages, tampering).

The `crypted_callback` it issues is opaque to the merchant (base64 JSON + HMAC under the
cipher key); only this gateway can decrypt it, as with the real one.

Tests serve it on its own port; with PAYMENTS_SANDBOX=on the server mounts it inside itself
(`sandbox_gateway`), so a local run pays end to end with nobody charged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.routing import Route

from integrations.payments.settings import MipsSettings


@dataclass
class GatewayState:
    settings: MipsSettings
    webhook_url: str = ""
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # id_order -> request
    calls: dict[str, int] = field(default_factory=dict)
    fail_next: int = 0  # answer 503 to this many calls
    tamper_amount_cents: int | None = None
    notifications: list[str] = field(default_factory=list)  # every crypted_callback posted


def sandbox_gateway(api_url: str, webhook_url: str) -> GatewayState:
    """A gateway to mount inside the merchant's own server: fresh credentials, shared by the
    stand-in and by the merchant's client (given the same settings), never written anywhere."""
    settings = MipsSettings(
        api_url=api_url.rstrip("/"),
        id_merchant="sandbox-merchant-" + secrets.token_hex(4),
        id_entity="sandbox-entity-" + secrets.token_hex(4),
        id_operator="sandbox-operator-" + secrets.token_hex(4),
        operator_password=secrets.token_urlsafe(24),
        basic_user="sandbox",
        basic_password=secrets.token_urlsafe(24),
        salt=secrets.token_urlsafe(12),
        cipher_key=secrets.token_urlsafe(32),
    )
    return GatewayState(settings=settings, webhook_url=webhook_url)


def _seal(state: GatewayState, data: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(orjson.dumps(data))
    mac = hmac.new(state.settings.cipher_key.encode(), payload, hashlib.sha256).hexdigest()
    return payload.decode() + "." + mac


def _open(state: GatewayState, token: str) -> dict[str, Any] | None:
    payload, _, mac = token.partition(".")
    expected = hmac.new(
        state.settings.cipher_key.encode(), payload.encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, mac):
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(payload.encode()))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _malformed() -> JSONResponse:
    """What the gateway answers a body it cannot read: a 4xx, never a crash."""
    return JSONResponse({"operation_status": "fail", "message": "malformed request"}, 400)


def create_mips_standin(state: GatewayState) -> Starlette:
    s = state.settings

    def own_url(request: Request, path: str) -> str:
        # root_path: where it is mounted (/sandbox/mips inside our server, "" on its own).
        prefix = request.scope.get("root_path", "")
        return f"{request.url.scheme}://{request.url.netloc}{prefix}{path}"

    def authorised(request: Request, body: dict[str, Any]) -> bool:
        expected = base64.b64encode(f"{s.basic_user}:{s.basic_password}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return False
        return bool(
            body.get("authentify")
            == {
                "id_merchant": s.id_merchant,
                "id_entity": s.id_entity,
                "id_operator": s.id_operator,
                "operator_password": s.operator_password,
            }
        )

    async def guarded(request: Request, name: str) -> tuple[dict[str, Any] | None, Any]:
        state.calls[name] = state.calls.get(name, 0) + 1
        if state.fail_next > 0:
            state.fail_next -= 1
            return None, JSONResponse({"operation_status": "error"}, 503)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return None, _malformed()
        if not authorised(request, body):
            return None, JSONResponse(
                {"operation_status": "fail", "message": "authentication failed"}, 401
            )
        return body, None

    def remember(order: Any, redirect: str) -> dict[str, Any]:
        """The payment the merchant asked for (once per id_order: a retry gets the same)."""
        return state.requests.setdefault(
            str(order["id_order"]),
            {
                "amount": order["amount"],
                "currency": order["currency"],
                "token": secrets.token_urlsafe(8),
                "redirect": redirect,
            },
        )

    async def create_payment_request(request: Request) -> JSONResponse:
        body, refusal = await guarded(request, "create_payment_request")
        if body is None:
            return refusal  # type: ignore[no-any-return]
        try:
            behaviour = body.get("iframe_behavior") or {}
            order = remember(
                body["initial_payment"], str(behaviour.get("custom_redirection_url", "/"))
            )
        except (KeyError, TypeError, AttributeError):
            return _malformed()
        url = own_url(request, f"/pay/{order['token']}")
        return JSONResponse(
            {
                "operation_status": "success",
                "payment_link": {"url": url, "qr_code": f"data:qr,{url}"},
            }
        )

    async def load_payment_zone(request: Request) -> JSONResponse:
        body, refusal = await guarded(request, "load_payment_zone")
        if body is None:
            return refusal  # type: ignore[no-any-return]
        try:
            entry = remember(body["order"], "/")
        except (KeyError, TypeError):
            return _malformed()
        html = f'<iframe src="{own_url(request, "/pay/" + entry["token"])}"></iframe>'
        return JSONResponse({"answer": {"operation_status": "success", "payment_zone_data": html}})

    async def decrypt(request: Request) -> JSONResponse:
        body, refusal = await guarded(request, "decrypt_imn_data")
        if body is None:
            return refusal  # type: ignore[no-any-return]
        if body.get("salt") != s.salt or body.get("cipher_key") != s.cipher_key:
            return JSONResponse({"operation_status": "fail"}, 400)
        data = _open(state, str(body.get("received_crypted_data", "")))
        if data is None:
            return JSONResponse({"operation_status": "fail", "message": "cannot decrypt"}, 400)
        return JSONResponse(data)

    async def pay_page(request: Request) -> HTMLResponse | RedirectResponse:
        token = request.path_params["token"]
        id_order = next((k for k, v in state.requests.items() if v["token"] == token), None)
        if id_order is None:
            return HTMLResponse("Unknown payment", 404)
        if request.method == "POST":
            form = await request.form()
            await send_imn(state, id_order, "success" if form.get("pay") else "fail")
            return RedirectResponse(state.requests[id_order]["redirect"], 303)
        return HTMLResponse(
            f"<h1>Pay Rs {state.requests[id_order]['amount']}</h1><form method=post>"
            "<button name=pay value=1>Pay</button><button name=fail value=1>Fail</button>"
            "</form>"
        )

    return Starlette(
        routes=[
            Route("/create_payment_request", create_payment_request, methods=["POST"]),
            Route("/load_payment_zone", load_payment_zone, methods=["POST"]),
            Route("/decrypt_imn_data", decrypt, methods=["POST"]),
            Route("/pay/{token}", pay_page, methods=["GET", "POST"]),
        ]
    )


def crypted_callback(state: GatewayState, id_order: str, status: str, amount: Any = None) -> str:
    order = state.requests[id_order]
    if amount is None:
        amount = order["amount"]
        if state.tamper_amount_cents is not None:
            cents = state.tamper_amount_cents
            amount = cents if state.settings.amount_in_cents else f"{cents / 100:.2f}"
    return _seal(
        state,
        {
            "status": status,
            "id_order": id_order,
            "transaction_id": "TX" + secrets.token_hex(6),
            "amount": amount,
            "currency": order["currency"],
            "payment_method": "JUICE",
            "checksum": secrets.token_hex(8),
        },
    )


async def send_imn(state: GatewayState, id_order: str, status: str, amount: Any = None) -> str:
    """Post an IMN to the merchant's webhook as the gateway does; returns its plain answer."""
    token = crypted_callback(state, id_order, status, amount)
    state.notifications.append(token)
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(state.webhook_url, data={"crypted_callback": token})
    return response.text
