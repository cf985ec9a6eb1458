"""Paying approved orders online (MIPS-style gateway) and the gateway's notifications."""

from __future__ import annotations

import logging

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from integrations.payments.base import (
    PaymentAttempt,
    PaymentProviderError,
    PaymentProviderUnavailable,
)
from integrations.payments.sandbox import GatewayState, sandbox_gateway
from integrations.payments.settings import MipsSettings
from protocol.errors import FreshRootsError, NotConfigured, ServiceUnavailable, ValidationFailed
from storage.payments import apply_notification, mark_event, open_attempt, store_event
from sync_server.http import authenticate, doc, json_response, path_param, read_json
from sync_server.services import services_of
from sync_server.settings import Settings

log = logging.getLogger("freshroots.payments")
ONLINE_METHODS = ("juice", "myt_money", "card")
IMN_PATH = "/api/webhooks/payments/mips"
SANDBOX_PATH = "/sandbox/mips"
RETURN_PATH = "/payments/return"
RETURN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fresh Roots — payment</title></head>
<body style="font-family: sans-serif; max-width: 28rem; margin: 3rem auto; padding: 0 1rem">
<h1>Thank you</h1>
<p>Your payment is being confirmed with the bank. Go back to the Fresh Roots app: your order
shows <strong>paid</strong> as soon as the confirmation arrives, usually within a minute.</p>
</body></html>
"""


class PaymentGatewayRefused(FreshRootsError):
    status_code = 502
    code = "payment_gateway_refused"
    default_message = "The payment gateway refused the request; nothing was charged."


class PayBody(msgspec.Struct, forbid_unknown_fields=True):
    method: str


@doc(
    "Start paying an approved order (MCB Juice, my.t money, card)",
    auth="user",
    body=PayBody,
    status=201,
    tag="orders",
    response="PaymentStarted",
    errors=(409, 502),
)
async def pay(request: Request) -> Response:
    buyer = await authenticate(request)
    services = services_of(request)
    order_id = path_param(request, "order_id")
    body = await read_json(request, PayBody)
    if body.method not in ONLINE_METHODS:
        raise ValidationFailed(
            "method must be juice, myt_money or card (cash on delivery is recorded by an admin)",
            field="method",
        )
    provider = services.payments
    if provider is None:
        raise NotConfigured("Online payment is off on this server: pay cash on delivery.")
    payment = await services.changelog.run(
        lambda tx: open_attempt(tx, buyer, order_id, body.method)
    )
    try:
        started = await provider.initiate(
            PaymentAttempt(
                attempt_id=payment["id"],
                amount_cents=payment["amount"],
                currency="MUR",
                method=body.method,
                title=f"Fresh Roots order {order_id}",
                return_url=services.settings.environ.get(
                    "MIPS_RETURN_URL", services.settings.public_base_url + RETURN_PATH
                ),
            )
        )
    except PaymentProviderUnavailable:
        # The attempt stays pending with the same id: a retry asks for the same payment.
        raise ServiceUnavailable(
            "The payment gateway is unavailable; try again shortly. Nothing was charged.",
            retry_after=10,
        ) from None
    except PaymentProviderError as error:
        raise PaymentGatewayRefused(str(error)[:200]) from None
    return json_response(
        {
            "payment_id": payment["id"],
            "payment_url": started.payment_url,
            "qr_code": started.qr_code,
            "payment_zone_html": started.payment_zone_html,
        },
        201,
    )


@doc(
    "Gateway notification (IMN): form field crypted_callback; answers success or fail",
    tag="webhooks",
    body="ImnForm",
    body_media_type="application/x-www-form-urlencoded",
    response="text",
    media_type="text/plain",
    description="`success`: verified, and applied or already applied; `fail`: it cannot be "
    "verified or matched (the gateway sends it again). Without crypted_callback: 400 `fail`.",
)
async def mips_notification(request: Request) -> Response:
    services = services_of(request)
    form = await request.form()
    crypted = form.get("crypted_callback")
    if not isinstance(crypted, str) or not crypted or "\x00" in crypted:
        # Missing, or nothing a gateway sends (PostgreSQL text cannot even store a NUL).
        return PlainTextResponse("fail", 400)
    event_id = await store_event(services.db, "mips", crypted)  # raw, before anything else
    provider = services.payments
    if provider is None:
        await mark_event(services.db, event_id, "payments_off", None)
        return PlainTextResponse("fail")
    try:
        note = await provider.verify_notification(crypted)
    except PaymentProviderUnavailable:
        await mark_event(services.db, event_id, "verify_pending", None)
        return PlainTextResponse("fail")  # the gateway resends; reconcile re-verifies
    if note is None:
        await mark_event(services.db, event_id, "unverified", None)
        log.warning("payment notification could not be verified", extra={"event": event_id})
        return PlainTextResponse("fail")
    outcome, payment_id = await services.changelog.run(lambda tx: apply_notification(tx, note))
    await mark_event(services.db, event_id, outcome, payment_id)
    if outcome == "paid":
        services.track(
            f"payment:{payment_id}",
            "payment_completed",
            payment_id=payment_id,
            method=note.payment_method,
        )
    if outcome == "unknown":
        log.warning("payment notification for an unknown attempt", extra={"event": event_id})
        return PlainTextResponse("fail")
    return PlainTextResponse("success")


def payments_sandbox(settings: Settings) -> GatewayState | None:
    """PAYMENTS_SANDBOX=on: the stand-in gateway, to be mounted at SANDBOX_PATH in this very
    server. Our client reaches it, and it posts its IMN to our webhook, over real HTTP at
    PUBLIC_BASE_URL, so a paid order goes through exactly the production code. Real MIPS_*
    credentials win: the sandbox never hides a configured gateway."""
    if not settings.payments_sandbox:
        return None
    if MipsSettings.from_environ(settings.environ) is not None:
        log.warning("PAYMENTS_SANDBOX=on is ignored: real MIPS_* credentials are configured")
        return None
    base = settings.public_base_url
    gateway = sandbox_gateway(f"{base}{SANDBOX_PATH}", webhook_url=f"{base}{IMN_PATH}")
    log.warning(
        "PAYMENTS SANDBOX IS ON: online payments go to a fake gateway inside this server at "
        "%s%s and nobody is charged; every payment it reports is made up. Demos and local "
        "runs only (one process), NEVER production.%s",
        base,
        SANDBOX_PATH,
        "" if settings.is_sqlite else " This server uses PostgreSQL: is this production?",
    )
    return gateway


@doc(
    "Where the gateway sends the buyer back: a page; the order's state comes from the IMN",
    tag="orders",
    response="text",
    media_type="text/html",
)
async def payment_return(request: Request) -> Response:
    """Where the gateway's page sends the buyer back. The order's state comes from the
    gateway's server-to-server notification, never from this redirect, so the page only
    says where to look."""
    return HTMLResponse(RETURN_PAGE)


routes = [
    Route("/api/orders/{order_id}/payments", pay, methods=["POST"]),
    Route(IMN_PATH, mips_notification, methods=["POST"]),
    Route(RETURN_PATH, payment_return, methods=["GET"]),
]
