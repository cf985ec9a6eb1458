"""The outbox delivers email through a real SMTP server (aiosmtpd), once per intent, and
retries when the relay is down; codes from the accounts flow arrive in the message body."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from storage.db import Database
from storage.models import OutboxItem
from sync_server.app import create_app
from tests.conftest import Backend
from tests.support.api import register
from tests.support.live_server import free_port, serve_in_thread


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"

    def wait_for(self, recipient: str, count: int = 1, timeout: float = 20) -> list[Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if m["To"] == recipient]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no mail for {recipient} within {timeout}s")


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def mail_server_env(port: int) -> dict[str, str]:
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port),
        "SMTP_STARTTLS": "false",
        "OUTBOX_WORKER": "on",
        "OUTBOX_POLL_SECONDS": "0.2",
        "EMAIL_FROM": "Fresh Roots <no-reply@freshroots.test>",
    }


def test_codes_arrive_by_email_through_the_outbox(
    backend: Backend, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    with serve_in_thread(create_app(backend.settings(**mail_server_env(port)))) as base_url:
        api = register(base_url, "mailed")
        assert api.post("/api/auth/verify-email/request").status_code == 202
        [message] = box.wait_for(api.user["email"])
        code = re.search(r"\b(\d{6})\b", message.get_payload())  # type: ignore[arg-type]
        assert code is not None
        confirmed = api.post("/api/auth/verify-email/confirm", json={"code": code.group(1)})
        assert confirmed.status_code == 200 and confirmed.json()["email_verified"] is True
        assert message["Message-ID"] and "freshroots" in message["Message-ID"]


def test_order_events_are_emailed_once_each(
    backend: Backend, mailbox: tuple[Mailbox, int], admin_email: str
) -> None:
    box, port = mailbox
    with serve_in_thread(create_app(backend.settings(**mail_server_env(port)))) as base_url:
        from tests.conftest import ADMIN_PASSWORD
        from tests.support.api import client_id, login

        admin = login(base_url, admin_email, ADMIN_PASSWORD)
        buyer = register(base_url, "customer")
        listing = admin.create_listing(stock=4)
        batch = [
            {
                "id": 1,
                "name": "purchase_request",
                "args": {
                    "order_id": "mail-order-1" + buyer.user["id"][:6],
                    "payment_method": "cod",
                    "items": [
                        {
                            "item_id": "mail-item-1" + buyer.user["id"][:6],
                            "listing_id": listing["id"],
                            "quantity": 1,
                        }
                    ],
                },
            }
        ]
        device = client_id()
        for _ in range(3):  # replays must not queue more mail
            buyer.push(device, batch)
        order_id = batch[0]["args"]["order_id"]
        admin.put(f"/api/admin/orders/{order_id}/approve", json={})
        mails = box.wait_for(buyer.user["email"], count=2)
        time.sleep(1.0)  # give a duplicate the chance to show up
        subjects = sorted(m["Subject"] for m in box.messages if m["To"] == buyer.user["email"])
        assert subjects == ["Order approved", "Purchase request received"]
        assert order_id in mails[0].get_payload()  # type: ignore[operator]
        assert box.wait_for(admin_email)  # the new-request alert


def outbox_state(backend: Backend, recipient: str) -> tuple[str, int, str | None]:
    """(status, attempts, last_error) of the one outbox item for `recipient`."""

    async def read() -> tuple[str, int, str | None]:
        db = Database(backend.env["DATABASE_URL"])
        try:
            async with db.read() as conn:
                row = (
                    await conn.execute(
                        select(OutboxItem.status, OutboxItem.attempts, OutboxItem.last_error).where(
                            OutboxItem.recipient == recipient
                        )
                    )
                ).one()
                return row.status, row.attempts, row.last_error
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_a_relay_outage_is_retried_later(backend: Backend) -> None:
    port = free_port()  # the relay's address: down (nothing listens) until the first try failed
    with serve_in_thread(create_app(backend.settings(**mail_server_env(port)))) as base_url:
        api = register(base_url, "patient")
        email = api.user["email"]
        assert api.post("/api/auth/verify-email/request").status_code == 202

        deadline = time.monotonic() + 15
        while outbox_state(backend, email)[1] == 0:
            assert time.monotonic() < deadline, "the worker never tried"
            time.sleep(0.1)
        status, attempts, error = outbox_state(backend, email)
        assert status == "pending" and attempts >= 1 and error  # kept, for a later retry

        box = Mailbox()  # the relay comes back
        controller = Controller(box, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            [message] = box.wait_for(email, timeout=30)  # the first retry is 2.5 to 5 s later
            assert re.search(r"\b\d{6}\b", message.get_payload())  # type: ignore[arg-type]
            deadline = time.monotonic() + 10
            while outbox_state(backend, email)[0] != "sent":
                assert time.monotonic() < deadline, "delivered but never recorded as sent"
                time.sleep(0.1)
            status, retried_attempts, _ = outbox_state(backend, email)
            assert retried_attempts > attempts  # delivered by a later attempt, not the first
            time.sleep(0.5)  # a duplicate would show up now
            assert len(box.messages) == 1
        finally:
            controller.stop()


def test_two_workers_racing_deliver_each_item_once(
    services_backend: Backend, mailbox: tuple[Mailbox, int]
) -> None:
    """Claims are leases taken with FOR UPDATE SKIP LOCKED: concurrent workers never share.
    Two threads, each with its own event loop and connection pool, as two worker processes
    would be, drain one queue in PostgreSQL at the same time."""
    from integrations.notifications.settings import EmailSettings
    from storage.cache import MemoryCache
    from storage.changelog import ChangeLog
    from storage.feed import ChangeFeed
    from storage.outbox import enqueue
    from storage.pubsub import MemoryPubSub
    from sync_server.channels import EmailChannel
    from sync_server.worker import OutboxWorker

    box, port = mailbox
    url = services_backend.env["DATABASE_URL"]
    tag = f"race-{time.time_ns()}"
    recipients = [f"{tag}-{n}@example.mu" for n in range(60)]

    def mine() -> list[str]:
        return [str(m["To"]) for m in box.messages if str(m["To"]).startswith(tag)]

    async def queue() -> None:
        db = Database(url)
        log = ChangeLog(db, ChangeFeed(MemoryCache(), MemoryPubSub(), 30))
        async with log.transaction() as tx:
            for address in recipients:
                await enqueue(
                    tx,
                    "email",
                    f"{tag}:{address}",
                    address,
                    {"template": "order_event", "title": "Race", "message": "hello"},
                )
        await db.dispose()

    asyncio.run(queue())
    start = threading.Barrier(2)

    def worker_thread() -> int:
        """Drain the queue; returns how many items this worker claimed."""

        async def drain() -> int:
            db = Database(url)
            channel = EmailChannel(EmailSettings(host="127.0.0.1", port=port, starttls=False))
            channel.batch_size = 5  # small claims, many rounds: plenty of chances to collide
            worker = OutboxWorker(db, [channel], 0.05)
            claimed = 0
            try:
                await asyncio.to_thread(start.wait)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    handled = await worker.run_once()
                    claimed += handled
                    if handled == 0 and len(mine()) >= len(recipients):
                        break
            finally:
                await db.dispose()
            return claimed

        return asyncio.run(drain())

    with ThreadPoolExecutor(2) as pool:
        claims = [future.result() for future in [pool.submit(worker_thread) for _ in range(2)]]
    assert sorted(mine()) == sorted(recipients)  # every one, none twice
    assert sum(claims) == len(recipients)  # no item was claimed by both
    assert all(claims), f"one worker did everything ({claims}): nothing raced"
