"""What every payment provider offers the server, whatever its protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from storage.payments import VerifiedNotification  # the shape storage accepts, made here


class PaymentProviderError(Exception):
    """The provider refused the request (bad credentials, bad data): retrying will not help."""


class PaymentProviderUnavailable(Exception):
    """Timeouts, 5xx, connection errors: nothing is known to have happened; retry later."""


@dataclass(frozen=True)
class PaymentAttempt:
    attempt_id: str  # our payment id; the gateway's id_order (a retry reuses it)
    amount_cents: int
    currency: str
    method: str  # juice | myt_money | card
    title: str
    return_url: str


@dataclass(frozen=True)
class PaymentInitiation:
    payment_url: str | None = None
    qr_code: str | None = None
    payment_zone_html: str | None = None


class PaymentProvider(Protocol):
    async def initiate(self, attempt: PaymentAttempt) -> PaymentInitiation: ...

    async def verify_notification(self, crypted_callback: str) -> VerifiedNotification | None:
        """The gateway's own reading of a notification, or None when it cannot vouch for it."""
        ...
