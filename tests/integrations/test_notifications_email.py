"""Email through a real local SMTP server (aiosmtpd) that each test starts: every template's
content as received, STARTTLS with login, stable Message-IDs, and how failures are classed."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, Session

from integrations.notifications import (
    EmailRejected,
    EmailSettings,
    EmailUnavailable,
    SmtpEmailSender,
    format_mur,
    render,
)
from tests.support.live_server import free_port

ITEMS = [
    {"title": "Tomatoes", "quantity": 2, "unit": "kg", "price": 6000},
    {"title": "Lalo", "quantity": 3, "unit": "kg", "price": 9000},
]


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps what it receives and can refuse on demand."""

    received: list[EmailMessage] = field(default_factory=list)
    envelopes: list[Envelope] = field(default_factory=list)
    rcpt_reply: str | None = None
    data_reply: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        self.envelopes.append(envelope)
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        parsed = message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(parsed)
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server(inbox: Inbox, **kwargs: Any) -> Iterator[int]:
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def settings(port: int, **overrides: Any) -> EmailSettings:
    base = EmailSettings.from_environ(
        {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_STARTTLS": "false",
            "EMAIL_FROM": "Fresh Roots <orders@freshroots.mu>",
        }
    )
    assert base is not None
    return EmailSettings(**{**base.__dict__, "timeout_seconds": 5.0, **overrides})


def body_parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def send(sender: SmtpEmailSender, to: str, template: str, key: str, **context: Any) -> str:
    email = render(template, **context)
    return asyncio.run(sender.send(to, email.subject, email.text, email.html, message_id=key))


def test_format_mur() -> None:
    assert format_mur(125000) == "Rs 1,250.00"
    assert format_mur(5) == "Rs 0.05"
    assert format_mur(123456789) == "Rs 1,234,567.89"
    assert format_mur(-1050) == "-Rs 10.50"
    with pytest.raises(TypeError):
        format_mur(12.5)  # type: ignore[arg-type]


CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "order_confirmation",
        {
            "order_id": "ord_A1b2C3d4",
            "total": 39000,
            "items": ITEMS,
            "payment_method": "juice",
            "name": "Priya",
        },
        ["ord_A1b2C3d4", "Rs 390.00", "Tomatoes", "Rs 120.00", "Rs 270.00", "MCB Juice", "Priya"],
    ),
    (
        "new_request_alert",
        {
            "order_id": "ord_A1b2C3d4",
            "total": 125000,
            "items": ITEMS,
            "buyer_name": "Priya",
            "buyer_email": "priya@example.mu",
            "payment_method": "cod",
            "note": "Leave at gate",
        },
        ["ord_A1b2C3d4", "Rs 1,250.00", "Priya", "cash on delivery", "Leave at gate"],
    ),
    (
        "order_approved",
        {"order_id": "ord_A1b2C3d4", "total": 125000, "payment_method": "myt_money"},
        ["ord_A1b2C3d4", "approved", "Rs 1,250.00", "my.t money"],
    ),
    (
        "order_rejected",
        {"order_id": "ord_A1b2C3d4", "reason": "Out of stock: lalo"},
        ["ord_A1b2C3d4", "Out of stock: lalo"],
    ),
    (
        "payment_receipt",
        {
            "order_id": "ord_A1b2C3d4",
            "amount": 125000,
            "method": "card",
            "transaction_id": "TXN-998877",
        },
        ["ord_A1b2C3d4", "Rs 1,250.00", "TXN-998877"],
    ),
    ("one_time_code", {"code": "048213", "purpose": "verify_email"}, ["048213", "confirm"]),
    ("one_time_code", {"code": "907311", "purpose": "password_reset"}, ["907311", "password"]),
]


@pytest.mark.parametrize(
    ("template", "context", "expected"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_each_template_arrives_with_its_content(
    template: str, context: dict[str, Any], expected: list[str]
) -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        sender = SmtpEmailSender(settings(port))
        sent_id = send(sender, "buyer@example.mu", template, "email:ntf_0001", **context)

    [received] = inbox.received
    assert inbox.envelopes[0].rcpt_tos == ["buyer@example.mu"]
    assert received["To"] == "buyer@example.mu"
    assert received["From"] == "Fresh Roots <orders@freshroots.mu>"
    assert received["Message-ID"] == sent_id == "<email.ntf_0001@freshroots.mu>"
    assert received["Subject"] == render(template, **context).subject
    text, html = body_parts(received)
    for fragment in expected:
        assert fragment in text, fragment
        assert fragment.replace("'", "&#39;") in html or fragment in html, fragment


def test_html_part_escapes_what_people_typed() -> None:
    email = render("order_rejected", order_id="ord_1", reason='<script>alert("x")</script>')
    assert "<script>" not in email.html and "&lt;script&gt;" in email.html
    assert '<script>alert("x")</script>' in email.text  # plain text stays as typed


def test_templates_refuse_missing_or_malformed_values() -> None:
    with pytest.raises(ValueError, match="reason"):
        render("order_rejected", order_id="ord_1")
    with pytest.raises(ValueError, match="six digits"):
        render("one_time_code", code=48213, purpose="verify_email")
    with pytest.raises(KeyError):
        render("newsletter")


def test_the_same_key_gives_the_same_message_id_on_a_resend() -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        sender = SmtpEmailSender(settings(port))
        first = send(
            sender, "a@example.mu", "order_rejected", "email:ntf_42", order_id="o", reason="closed"
        )
        second = send(
            sender, "a@example.mu", "order_rejected", "email:ntf_42", order_id="o", reason="closed"
        )
    assert first == second == inbox.received[0]["Message-ID"] == inbox.received[1]["Message-ID"]


def test_smtp_down_is_unavailable() -> None:
    sender = SmtpEmailSender(settings(free_port()))
    with pytest.raises(EmailUnavailable, match="unavailable"):
        send(sender, "a@example.mu", "one_time_code", "k1", code="123456", purpose="verify_email")


def test_temporary_4xx_is_unavailable_and_permanent_5xx_is_rejected() -> None:
    inbox = Inbox(data_reply="451 4.3.0 Try again later")
    with smtp_server(inbox) as port:
        sender = SmtpEmailSender(settings(port))
        with pytest.raises(EmailUnavailable) as temporary:
            send(sender, "a@example.mu", "order_rejected", "k2", order_id="o", reason="r")
        inbox.data_reply = None
        inbox.rcpt_reply = "550 5.1.1 No such mailbox"
        with pytest.raises(EmailRejected) as permanent:
            send(sender, "gone@example.mu", "order_rejected", "k3", order_id="o", reason="r")
        inbox.rcpt_reply = "452 4.2.2 Mailbox full"
        with pytest.raises(EmailUnavailable):
            send(sender, "full@example.mu", "order_rejected", "k4", order_id="o", reason="r")
    assert temporary.value.code == 451 and permanent.value.code == 550
    assert inbox.received == []


def test_starttls_asked_of_a_relay_without_it_is_unavailable() -> None:
    with smtp_server(Inbox()) as port:
        sender = SmtpEmailSender(settings(port, starttls=True))
        with pytest.raises(EmailUnavailable, match="STARTTLS"):
            send(sender, "a@example.mu", "order_rejected", "k5", order_id="o", reason="r")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def test_starttls_then_login_then_send(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    logins: list[tuple[str, bool]] = []

    def authenticator(
        server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (auth_data.login, auth_data.password) == (b"relay-user", b"relay-pass")
        logins.append((auth_data.login.decode(), session.ssl is not None))
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535

    inbox = Inbox()
    with smtp_server(
        inbox,
        tls_context=server_tls,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
    ) as port:
        client_tls = ssl.create_default_context(cafile=str(cert))
        good = SmtpEmailSender(
            settings(port, starttls=True, user="relay-user", password="relay-pass"), tls=client_tls
        )
        send(good, "a@example.mu", "payment_receipt", "k6", order_id="o", amount=125000)
        wrong = SmtpEmailSender(
            settings(port, starttls=True, user="relay-user", password="nope"), tls=client_tls
        )
        with pytest.raises(EmailUnavailable, match="SMTP_PASSWORD"):
            send(wrong, "a@example.mu", "payment_receipt", "k7", order_id="o", amount=1)
    assert logins[0] == ("relay-user", True)  # logged in only once the channel was encrypted
    assert "Rs 1,250.00" in body_parts(inbox.received[0])[0]
    assert len(inbox.received) == 1


def test_email_settings_from_environ() -> None:
    assert EmailSettings.from_environ({}) is None
    assert EmailSettings.from_environ({"SMTP_HOST": ""}) is None
    configured = EmailSettings.from_environ(
        {
            "SMTP_HOST": "email-smtp.eu-west-1.amazonaws.com",
            "SMTP_USER": "AKIA",
            "SMTP_PASSWORD": "smtp-secret",
        }
    )
    assert configured is not None
    assert configured.port == 587 and configured.starttls is True
    assert configured.sender == "Fresh Roots <no-reply@freshroots.mu>"
    assert "smtp-secret" not in repr(configured)
    plain = EmailSettings.from_environ(
        {
            "SMTP_HOST": "localhost",
            "SMTP_PORT": "25",
            "SMTP_STARTTLS": "off",
            "EMAIL_FROM": "Shop <shop@example.mu>",
        }
    )
    assert plain is not None and plain.port == 25 and plain.starttls is False
    assert plain.sender == "Shop <shop@example.mu>"


def test_header_injection_in_the_recipient_is_refused() -> None:
    sender = SmtpEmailSender(settings(free_port()))
    with pytest.raises(ValueError):
        sender.build("a@example.mu\r\nBcc: x@evil.example", "s", "t", message_id="k8")
