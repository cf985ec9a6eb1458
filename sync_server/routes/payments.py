"""Paying approved orders online (MIPS-style gateway) and the gateway's notifications."""

from __future__ import annotations

import logging

import msgspec
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from integrations.payments.base import (
    PaymentAttempt,
    PaymentProviderError,
    PaymentProviderUnavailable,
)
from storage.payments import apply_notification, mark_event, open_attempt, store_event
from sync_server.errors import FreshRootsError, NotConfigured, ServiceUnavailable, ValidationFailed
from sync_server.http import authenticate, doc, json_response, path_param, read_json
from sync_server.services import services_of

log = logging.getLogger("freshroots.payments")
ONLINE_METHODS = ("juice", "myt_money", "card")


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
                return_url=services.settings.environ.get("MIPS_RETURN_URL", str(request.base_url)),
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
)
async def mips_notification(request: Request) -> Response:
    services = services_of(request)
    form = await request.form()
    crypted = form.get("crypted_callback")
    if not isinstance(crypted, str) or not crypted:
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


routes = [
    Route("/api/orders/{order_id}/payments", pay, methods=["POST"]),
    Route("/api/webhooks/payments/mips", mips_notification, methods=["POST"]),
]
