"""Outbox channels: how each kind of send intent reaches people, on top of the provider
clients in `integrations.notifications` (Expo push, SMTP email).

Every answer is recorded by the worker as soon as it arrives; a push is retried only when
Expo never answered for it, as the same message (same data, same notification id), and an
email carries a Message-ID derived from its outbox item, so a resend is the same message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import httpx
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError
from sqlalchemy import select, update

from integrations.notifications.email import (
    EmailRejected,
    EmailUnavailable,
    SmtpEmailSender,
)
from integrations.notifications.expo import (
    ExpoPushClient,
    PushError,
    PushMessage,
    PushRequestError,
    PushTicket,
    tokens_to_deactivate,
)
from integrations.notifications.settings import EmailSettings, ExpoSettings
from storage.db import Database, now_ms
from storage.models import Device, OutboxItem
from storage.outbox import Claimed, Outcome
from sync_server.worker import Channel

log = logging.getLogger("freshroots.channels")

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "email_templates"),
    undefined=StrictUndefined,
    autoescape=False,  # noqa: S701 - plain-text mail, never rendered as HTML
    keep_trailing_newline=True,
)


class SmsSender(Protocol):
    """Phone verification by SMS, later: the seam a provider (e.g. a Mauritian SMS gateway)
    plugs into. No provider is wired yet, so phone numbers are stored but never verified."""

    async def send(self, phone: str, text: str, *, idempotency_key: str) -> str:
        """Send one message; returns the provider's message id."""
        ...


def build_channels(
    environ: Mapping[str, str], db: Database, http: httpx.AsyncClient
) -> list[Channel]:
    """The channels whose settings are present; each absent one is off (said once at start).

    Expo push needs no credentials (the access token is optional), so it is always on.
    """
    channels: list[Channel] = [PushChannel(ExpoSettings.from_environ(environ), db, http)]
    email = EmailSettings.from_environ(environ)
    if email is None:
        log.info("email channel off: SMTP_HOST is not set")
    else:
        channels.append(EmailChannel(email))
    return channels


async def deactivate_tokens(db: Database, tokens: set[str]) -> None:
    """Expo says these apps were uninstalled: stop sending to them, as Expo asks."""
    if not tokens:
        return
    async with db.write() as conn:
        await conn.execute(
            update(Device)
            .where(Device.expo_push_token.in_(tokens))
            .values(active=False, updated_at=now_ms())
        )


def _ticket_outcome(ticket: PushTicket | None) -> Outcome:
    if ticket is None:
        return Outcome("retry", error="no answer from Expo")
    if ticket.ok:
        return Outcome("sent", provider_ref=ticket.id)
    if ticket.error == "MessageRateExceeded":
        return Outcome("retry", error=ticket.error)
    return Outcome("dead", error=f"{ticket.error or 'error'}: {ticket.message or ''}"[:500])


class PushChannel:
    name = "push"
    batch_size = 100

    def __init__(self, settings: ExpoSettings, db: Database, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.db = db
        self.client = ExpoPushClient(http, settings, max_attempts=3)

    async def deliver(self, items: Sequence[Claimed]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        messages: list[PushMessage] = []
        sendable: list[Claimed] = []
        for item in items:
            try:
                messages.append(
                    PushMessage(
                        to=item.recipient,
                        title=str(item.payload.get("title") or ""),
                        body=str(item.payload.get("body") or ""),
                        data=dict(item.payload.get("data") or {}),
                    )
                )
                sendable.append(item)
            except ValueError as error:  # retrying cannot fix a malformed intent
                outcomes[item.id] = Outcome("dead", error=str(error)[:500])
        if messages:
            try:
                tickets: Sequence[PushTicket | None] = await self.client.send(messages)
            except PushRequestError as error:
                tickets = [None] * len(messages)
                for item in sendable:
                    outcomes[item.id] = Outcome("dead", error=f"{error.code}: {error}"[:500])
            except PushError as error:  # Expo unavailable: keep what it did answer
                tickets = list(error.tickets)
                retry_after = getattr(error, "retry_after", None)
                for item, ticket in zip(sendable, tickets, strict=False):
                    if ticket is None:
                        outcomes[item.id] = Outcome(
                            "retry", error=str(error)[:500], retry_after=retry_after
                        )
            for item, ticket in zip(sendable, tickets, strict=False):
                outcomes.setdefault(item.id, _ticket_outcome(ticket))
            await deactivate_tokens(
                self.db, tokens_to_deactivate(tickets=[t for t in tickets if t is not None])
            )
        return [outcomes.get(item.id, Outcome("retry", error="no ticket")) for item in items]

    async def check_receipts(self) -> int:
        """Read the receipts of tickets old enough to have one."""
        due = now_ms() - self.settings.receipt_delay_seconds * 1000
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(OutboxItem.provider_ref, OutboxItem.recipient)
                    .where(
                        OutboxItem.channel == "push",
                        OutboxItem.status == "sent",
                        OutboxItem.receipt_status.is_(None),
                        OutboxItem.sent_at <= due,
                        OutboxItem.provider_ref.is_not(None),
                    )
                    .limit(1000)
                )
            ).all()
        if not rows:
            return 0
        token_of = {str(row[0]): str(row[1]) for row in rows}
        try:
            receipts = await self.client.get_receipts(token_of)
        except PushError:
            return 0
        async with self.db.write() as conn:
            for ticket_id, receipt in receipts.items():
                code = "ok" if receipt.ok else (receipt.error or "error")
                await conn.execute(
                    update(OutboxItem)
                    .where(OutboxItem.provider_ref == ticket_id)
                    .values(receipt_status=code[:40])
                )
        await deactivate_tokens(
            self.db, tokens_to_deactivate(receipts=receipts, token_by_receipt_id=token_of)
        )
        return len(receipts)


def render(item: Claimed) -> tuple[str, str]:
    payload = item.payload
    template = (
        "one_time_code.txt" if payload.get("template") == "one_time_code" else ("order_event.txt")
    )
    context = {"name": None, "code": None, "purpose": None, "message": "", "data": {}, **payload}
    return (
        str(payload.get("title") or "Fresh Roots"),
        TEMPLATES.get_template(template).render(**context),
    )


class EmailChannel:
    name = "email"
    batch_size = 20

    def __init__(self, settings: EmailSettings) -> None:
        self.sender = SmtpEmailSender(settings)

    async def deliver(self, items: Sequence[Claimed]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for item in items:
            try:
                subject, text = render(item)
            except TemplateError as error:  # retrying cannot fix a broken template
                outcomes.append(Outcome("dead", error=f"template: {error}"[:500]))
                continue
            try:
                # Derived from the outbox item: a resend after a crash is the same message.
                message_id = await self.sender.send(
                    item.recipient, subject, text, message_id=f"outbox.{item.id}"
                )
                outcomes.append(Outcome("sent", provider_ref=message_id[:120]))
            except EmailRejected as error:
                outcomes.append(Outcome("dead", error=str(error)[:500]))
            except EmailUnavailable as error:
                # The relay is down: this and the rest of the batch wait for the next pass.
                outcomes += [Outcome("retry", error=str(error)[:500])] * (
                    len(items) - len(outcomes)
                )
                break
        return outcomes
