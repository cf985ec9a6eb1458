"""Outbox channels: how each kind of send intent reaches people.

`EmailChannel` speaks SMTP (STARTTLS when configured) to any relay (SES, Mailgun, Postfix):
the message carries a stable Message-ID derived from the outbox item, so a resend after a
crash between "sent" and "recorded" is recognisable as the same message.
"""

from __future__ import annotations

import gzip
import logging
import smtplib
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx
import orjson
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError
from sqlalchemy import select, update

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


@dataclass(frozen=True)
class EmailSettings:
    host: str
    port: int = 587
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = True
    sender: str = "Fresh Roots <no-reply@freshroots.mu>"
    timeout: float = 15.0

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> EmailSettings | None:
        host = env.get("SMTP_HOST")
        if not host:
            return None
        return cls(
            host=host,
            port=int(env.get("SMTP_PORT", "587")),
            user=env.get("SMTP_USER") or None,
            password=env.get("SMTP_PASSWORD") or None,
            starttls=env.get("SMTP_STARTTLS", "true").lower() not in ("0", "false", "no", "off"),
            sender=env.get("EMAIL_FROM", "Fresh Roots <no-reply@freshroots.mu>"),
        )


def render(item: Claimed) -> EmailMessage:
    payload = item.payload
    template = (
        "one_time_code.txt" if payload.get("template") == "one_time_code" else ("order_event.txt")
    )
    context = {"name": None, "code": None, "purpose": None, "message": "", "data": {}, **payload}
    message = EmailMessage()
    message["Subject"] = str(payload.get("title") or "Fresh Roots")
    message["To"] = item.recipient
    message["Message-ID"] = make_msgid(idstring=f"outbox-{item.id}", domain="freshroots.mu")
    message.set_content(TEMPLATES.get_template(template).render(**context))
    return message


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


@dataclass(frozen=True)
class ExpoSettings:
    base_url: str = "https://exp.host"
    access_token: str | None = field(default=None, repr=False)
    receipt_delay_seconds: int = 900

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ExpoSettings:
        return cls(
            base_url=(env.get("EXPO_PUSH_URL") or "https://exp.host").rstrip("/"),
            access_token=env.get("EXPO_ACCESS_TOKEN") or None,
            receipt_delay_seconds=int(env.get("PUSH_RECEIPT_DELAY_SECONDS", "900")),
        )


class PushChannel:
    """Expo push: up to 100 messages a request, one ticket per message in order.

    A ticket only says Expo accepted the message; the receipt, fetched later by
    `check_receipts`, says whether Apple or Google took it. `DeviceNotRegistered` (the app
    was uninstalled) deactivates the token at either stage, as Expo asks senders to do.
    """

    name = "push"
    batch_size = 100
    MAX_MESSAGE_BYTES = 4096
    # Expo accepts 600 notifications a second per project; stay under it rather than be told.
    MAX_PER_SECOND = 600

    def __init__(self, settings: ExpoSettings, db: Database, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.db = db
        self.http = http
        self._window_start = 0.0
        self._window_count = 0

    async def _pace(self, count: int) -> None:
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_count = now, 0
        if self._window_count + count > self.MAX_PER_SECOND:
            await anyio.sleep(1.0 - (now - self._window_start))
            self._window_start, self._window_count = time.monotonic(), 0
        self._window_count += count

    def _headers(self, body: bytes) -> tuple[dict[str, str], bytes]:
        headers = {
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "content-type": "application/json",
        }
        if self.settings.access_token:
            headers["authorization"] = f"Bearer {self.settings.access_token}"
        if len(body) > 1024:  # as Expo's own SDKs do
            headers["content-encoding"] = "gzip"
            body = gzip.compress(body)
        return headers, body

    async def deliver(self, items: Sequence[Claimed]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        messages: list[dict[str, Any]] = []
        sendable: list[Claimed] = []
        for item in items:
            message = {
                "to": item.recipient,
                "title": item.payload.get("title"),
                "body": item.payload.get("body"),
                "data": item.payload.get("data", {}),
                "sound": "default",
                "priority": "high",
            }
            if len(orjson.dumps(message)) > self.MAX_MESSAGE_BYTES:
                outcomes[item.id] = Outcome("dead", error="MessageTooBig")
                continue
            messages.append(message)
            sendable.append(item)
        if messages:
            await self._pace(len(messages))
            headers, body = self._headers(orjson.dumps(messages))
            response = await self.http.post(
                f"{self.settings.base_url}/--/api/v2/push/send", content=body, headers=headers
            )
            if response.status_code == 429 or response.status_code >= 500:
                retry_after = response.headers.get("retry-after")
                wait = float(retry_after) if retry_after and retry_after.isdigit() else None
                for item in sendable:
                    outcomes[item.id] = Outcome(
                        "retry", error=f"HTTP {response.status_code}", retry_after=wait
                    )
            elif response.status_code != 200:
                for item in sendable:
                    outcomes[item.id] = Outcome("dead", error=response.text[:500])
            else:
                tickets = response.json().get("data", [])
                for item, ticket in zip(sendable, tickets, strict=False):
                    outcomes[item.id] = await self._ticket_outcome(item, ticket)
        return [outcomes.get(item.id, Outcome("retry", error="no ticket")) for item in items]

    async def _ticket_outcome(self, item: Claimed, ticket: dict[str, Any]) -> Outcome:
        if ticket.get("status") == "ok":
            return Outcome("sent", provider_ref=str(ticket.get("id")))
        code = (ticket.get("details") or {}).get("error") or "error"
        if code == "DeviceNotRegistered":
            await deactivate_token(self.db, item.recipient)
        if code == "MessageRateExceeded":
            return Outcome("retry", error=code)
        return Outcome("dead", error=f"{code}: {ticket.get('message', '')}"[:500])

    async def check_receipts(self) -> int:
        """Read the receipts of tickets old enough to have one (≤ 1,000 ids a request)."""
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
        headers, body = self._headers(orjson.dumps({"ids": [row[0] for row in rows]}))
        response = await self.http.post(
            f"{self.settings.base_url}/--/api/v2/push/getReceipts", content=body, headers=headers
        )
        if response.status_code != 200:
            return 0
        receipts = response.json().get("data", {})
        token_of = {row[0]: row[1] for row in rows}
        async with self.db.write() as conn:
            for ticket_id, receipt in receipts.items():
                code = (
                    "ok"
                    if receipt.get("status") == "ok"
                    else ((receipt.get("details") or {}).get("error") or "error")
                )
                await conn.execute(
                    update(OutboxItem)
                    .where(OutboxItem.provider_ref == ticket_id)
                    .values(receipt_status=code[:40])
                )
        for ticket_id, receipt in receipts.items():
            if (receipt.get("details") or {}).get("error") == "DeviceNotRegistered":
                await deactivate_token(self.db, token_of[ticket_id])
        return len(receipts)


async def deactivate_token(db: Database, token: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            update(Device)
            .where(Device.expo_push_token == token)
            .values(active=False, updated_at=now_ms())
        )


class EmailChannel:
    name = "email"
    batch_size = 20

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings

    async def deliver(self, items: Sequence[Claimed]) -> list[Outcome]:
        return await anyio.to_thread.run_sync(self._deliver_blocking, list(items))

    def _deliver_blocking(self, items: list[Claimed]) -> list[Outcome]:
        settings = self.settings
        outcomes: list[Outcome] = []
        try:
            with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as smtp:
                if settings.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if settings.user:
                    smtp.login(settings.user, settings.password or "")
                for item in items:
                    try:
                        message = render(item)
                    except TemplateError as error:  # retrying cannot fix a broken template
                        outcomes.append(Outcome("dead", error=f"template: {error}"[:500]))
                        continue
                    message["From"] = settings.sender
                    try:
                        smtp.send_message(message)
                        outcomes.append(Outcome("sent", provider_ref=message["Message-ID"]))
                    except smtplib.SMTPRecipientsRefused as error:
                        outcomes.append(Outcome("dead", error=str(error)[:500]))
                    except smtplib.SMTPResponseException as error:
                        permanent = 500 <= error.smtp_code < 600
                        outcomes.append(
                            Outcome(
                                "dead" if permanent else "retry",
                                error=f"{error.smtp_code} {error.smtp_error!r}",
                            )
                        )
        except (OSError, smtplib.SMTPException) as error:
            # The relay is down or refused us: everything not yet answered is retried later.
            outcomes += [Outcome("retry", error=str(error)[:500])] * (len(items) - len(outcomes))
        return outcomes
