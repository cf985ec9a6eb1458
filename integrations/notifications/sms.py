"""SMS: the seam for phone verification, later.

No provider is wired yet, so phone numbers are stored but never verified and nothing is sent
by SMS. A provider (for example a Mauritian SMS gateway) plugs in by implementing `SmsSender`;
it should raise on a temporary failure so the outbox retries, like the other channels.
"""

from __future__ import annotations

from typing import Protocol


class SmsSender(Protocol):
    async def send(self, phone: str, text: str, *, idempotency_key: str) -> str:
        """Send one message to an E.164 number (e.g. "+2305XXXXXXX"); returns the provider's
        message id. `idempotency_key` is stable across retries of the same message."""
        ...
