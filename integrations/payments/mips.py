"""The MIPS-style aggregator protocol: JSON POSTs with HTTP Basic auth and an `authentify`
block; notifications (IMN) are opaque and trusted only once the gateway decrypts them.

Money: our API is integer cents everywhere; only this module converts, with Decimal, to what
the gateway is configured to expect ("60.00" rupees, or integer cents).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import anyio
import httpx

from integrations.payments.base import (
    PaymentAttempt,
    PaymentInitiation,
    PaymentProviderError,
    PaymentProviderUnavailable,
)
from integrations.payments.settings import MipsSettings
from storage.payments import VerifiedNotification


def to_gateway_amount(cents: int, in_cents: bool) -> str | int:
    return cents if in_cents else str((Decimal(cents) / 100).quantize(Decimal("0.01")))


def from_gateway_amount(value: Any, in_cents: bool) -> int | None:
    try:
        if in_cents:
            return int(Decimal(str(value)))
        return int((Decimal(str(value)) * 100).to_integral_value())
    except (InvalidOperation, ValueError):
        return None


class MipsProvider:
    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: MipsSettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        attempts: int = 3,
    ) -> None:
        self.http = http
        self.settings = settings
        self.sleep = sleep
        self.attempts = attempts

    def _authentify(self) -> dict[str, str]:
        s = self.settings
        return {
            "id_merchant": s.id_merchant,
            "id_entity": s.id_entity,
            "id_operator": s.id_operator,
            "operator_password": s.operator_password,
        }

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST with bounded retries on timeouts and 5xx. Every call here is safe to repeat:
        a payment request for the same `id_order` is the same request (nothing is charged
        until the buyer pays, once), and decrypting an IMN changes nothing."""
        for attempt in range(self.attempts):
            try:
                response = await self.http.post(
                    f"{self.settings.api_url}/{path}",
                    json=body,
                    auth=(self.settings.basic_user, self.settings.basic_password),
                )
            except (httpx.TimeoutException, httpx.TransportError):
                response = None
            if response is not None and response.status_code < 500:
                return response
            if attempt < self.attempts - 1:
                await self.sleep(random.uniform(0, 0.5 * 2**attempt))
        raise PaymentProviderUnavailable(f"the payment gateway did not answer {path}")

    async def initiate(self, attempt: PaymentAttempt) -> PaymentInitiation:
        amount = to_gateway_amount(attempt.amount_cents, self.settings.amount_in_cents)
        redirect = {"custom_redirection_url": attempt.return_url}
        if attempt.method == "card":
            response = await self._post(
                "load_payment_zone",
                {
                    "authentify": self._authentify(),
                    "order": {
                        "id_order": attempt.attempt_id,
                        "currency": attempt.currency,
                        "amount": amount,
                    },
                    "iframe_behavior": redirect,
                    "request_mode": "simple",
                    "touchpoint": "web",
                },
            )
            answer = self._json(response).get("answer") or {}
            if response.status_code != 200 or answer.get("operation_status") != "success":
                raise PaymentProviderError(f"payment zone refused: {response.text[:200]}")
            return PaymentInitiation(payment_zone_html=str(answer.get("payment_zone_data")))
        response = await self._post(
            "create_payment_request",
            {
                "authentify": self._authentify(),
                "request": {
                    "request_mode": "simple",
                    "sending_mode": "link",
                    "request_title": attempt.title,
                },
                "initial_payment": {
                    "id_order": attempt.attempt_id,
                    "currency": attempt.currency,
                    "amount": amount,
                },
                "iframe_behavior": redirect,
            },
        )
        body = self._json(response)
        if response.status_code != 200 or body.get("operation_status") != "success":
            raise PaymentProviderError(f"payment request refused: {response.text[:200]}")
        link = body.get("payment_link") or {}
        return PaymentInitiation(payment_url=link.get("url"), qr_code=link.get("qr_code"))

    async def verify_notification(self, crypted_callback: str) -> VerifiedNotification | None:
        response = await self._post(
            "decrypt_imn_data",
            {
                "authentify": self._authentify(),
                "salt": self.settings.salt,
                "cipher_key": self.settings.cipher_key,
                "received_crypted_data": crypted_callback,
            },
        )
        if response.status_code != 200:
            return None
        data = self._json(response)
        amount = from_gateway_amount(data.get("amount"), self.settings.amount_in_cents)
        status = str(data.get("status") or "").lower()  # clients disagree on case
        if amount is None or status not in ("success", "fail") or not data.get("id_order"):
            return None
        return VerifiedNotification(
            status=status,
            attempt_id=str(data["id_order"]),
            transaction_id=str(data.get("transaction_id") or "") or None,
            amount_cents=amount,
            currency=str(data.get("currency") or ""),
            payment_method=data.get("payment_method"),
        )

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}
