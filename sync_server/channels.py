"""Outbox channels: how each kind of send intent reaches people.

`EmailChannel` speaks SMTP (STARTTLS when configured) to any relay (SES, Mailgun, Postfix):
the message carries a stable Message-ID derived from the outbox item, so a resend after a
crash between "sent" and "recorded" is recognisable as the same message.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import anyio
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from storage.outbox import Claimed, Outcome

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


def build_channels(environ: Mapping[str, str]) -> list[EmailChannel]:
    """The channels whose settings are present; each absent one is off (said once at start)."""
    channels: list[EmailChannel] = []
    email = EmailSettings.from_environ(environ)
    if email is None:
        log.info("email channel off: SMTP_HOST is not set")
    else:
        channels.append(EmailChannel(email))
    return channels


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
                    message = render(item)
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
