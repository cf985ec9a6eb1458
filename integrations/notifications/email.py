"""Email over SMTP, to any relay (Amazon SES, Mailgun, Postfix), STARTTLS when configured.

`smtplib` is blocking, so each send runs in a worker thread and never stalls the event loop.
One connection per send: transactional mail is a trickle, and a fresh connection cannot be
left half-broken by the previous message.

Failures come in two kinds, because the outbox handles them differently:
- `EmailUnavailable`: try again later — the relay is unreachable or timed out, answered a 4xx
  (temporary) code, refused our credentials, or cannot do STARTTLS. The message itself is fine.
- `EmailRejected`: a 5xx (permanent) answer about this message or recipient; resending the same
  message will not help.

SMTP has no idempotency key. The stable `Message-ID` passed in is the next best thing: a resend
after a crash between "sent" and "recorded" carries the same id, and mail systems and clients
recognise the duplicate.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import anyio

from integrations.notifications.settings import EmailSettings

_ID_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")


class EmailError(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EmailUnavailable(EmailError):
    """Temporary: the relay is down, slow, busy (4xx) or misconfigured. Retry later."""


class EmailRejected(EmailError):
    """Permanent (5xx): the relay refused this message or recipient. Do not resend as is."""


def make_message_id(key: str, sender: str) -> str:
    """A stable `<key@domain>` Message-ID; the domain is the sender's. A value already in angle
    brackets is used as is."""
    if key.startswith("<") and key.endswith(">"):
        inner = key[1:-1]
        local, _, domain = inner.partition("@")
        if _ID_PART.fullmatch(local) and domain and _ID_PART.fullmatch(domain):
            return key
        raise ValueError(f"not a valid Message-ID: {key!r}")
    local = key.replace(":", ".")  # outbox keys look like "email:<id>"
    if not _ID_PART.fullmatch(local):
        raise ValueError(f"a Message-ID key may not contain {key!r}")
    domain = parseaddr(sender)[1].rpartition("@")[2] or "freshroots.mu"
    return f"<{local}@{domain}>"


def _classify(code: int, text: str) -> EmailError:
    if 500 <= code < 600:
        return EmailRejected(f"SMTP {code}: {text}", code)
    return EmailUnavailable(f"SMTP {code}: {text}", code)


def _decode(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


class SmtpEmailSender:
    def __init__(self, settings: EmailSettings, *, tls: ssl.SSLContext | None = None) -> None:
        """`tls` overrides the certificate checks for STARTTLS (tests with a private CA)."""
        self.settings = settings
        self.tls = tls

    async def send(
        self, to: str, subject: str, text: str, html: str | None = None, *, message_id: str
    ) -> str:
        """Send one email; returns its Message-ID. Raises EmailUnavailable or EmailRejected."""
        message = self.build(to, subject, text, html, message_id=message_id)
        await anyio.to_thread.run_sync(self._send_blocking, message)
        return str(message["Message-ID"])

    def build(
        self, to: str, subject: str, text: str, html: str | None = None, *, message_id: str
    ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.sender
        # Address() refuses line breaks and other header injection in the recipient.
        message["To"] = Address(addr_spec=to)
        message["Subject"] = " ".join(subject.split())
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_message_id(message_id, self.settings.sender)
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    def _send_blocking(self, message: EmailMessage) -> None:
        settings = self.settings
        try:
            with smtplib.SMTP(
                settings.host, settings.port, timeout=settings.timeout_seconds
            ) as smtp:
                if settings.starttls:
                    smtp.starttls(context=self.tls or ssl.create_default_context())
                if settings.user:
                    smtp.login(settings.user, settings.password or "")
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()] or [550]
            texts = "; ".join(_decode(text) for _, text in error.recipients.values())
            # A temporary refusal (e.g. 450 mailbox busy) may pass later; a 550 never will.
            raise _classify(min(codes), texts) from None
        except smtplib.SMTPAuthenticationError as error:
            # 535 is "permanent", but about our credentials, not this message: keep it queued
            # until an operator fixes SMTP_USER / SMTP_PASSWORD.
            raise EmailUnavailable(
                f"SMTP login refused ({error.smtp_code}); check SMTP_USER and SMTP_PASSWORD",
                error.smtp_code,
            ) from None
        except smtplib.SMTPResponseException as error:
            raise _classify(error.smtp_code, _decode(error.smtp_error)) from None
        except smtplib.SMTPNotSupportedError as error:
            raise EmailUnavailable(f"relay cannot do what SMTP_STARTTLS asks: {error}") from None
        except (smtplib.SMTPException, OSError) as error:
            # Connection refused or reset, DNS, timeouts (TimeoutError is an OSError), TLS
            # handshake failures (ssl.SSLError too), or the relay hanging up.
            raise EmailUnavailable(
                f"SMTP relay unavailable: {type(error).__name__}: {error}"
            ) from None
