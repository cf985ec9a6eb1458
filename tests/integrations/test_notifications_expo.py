"""The Expo push client against the Expo stand-in over real HTTP: chunking, gzip, tickets in
order, DeviceNotRegistered, 429 / MessageRateExceeded backoff, 5xx, the 4 KiB limit,
receipts, the access token — and the small pure parts (settings, pacing guard)."""

from __future__ import annotations

import asyncio
import gzip
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from integrations.notifications import (
    DEVICE_NOT_REGISTERED,
    MESSAGE_RATE_EXCEEDED,
    MESSAGE_TOO_BIG,
    ExpoPushClient,
    ExpoSettings,
    PushMessage,
    PushRequestError,
    PushTicket,
    PushUnavailable,
    tokens_to_deactivate,
)
from integrations.notifications.expo import RateGuard
from integrations.notifications.standin_expo import ExpoStandinState, create_expo_standin
from tests.support.live_server import free_port, serve_in_thread

T = TypeVar("T")
SEND = "/push/send"
RECEIPTS = "/push/getReceipts"


def token(n: int) -> str:
    return f"ExponentPushToken[device{n:05d}]"


def message(n: int, **data: Any) -> PushMessage:
    return PushMessage(
        to=token(n),
        title="Order approved",
        body=f"Your order ord_{n:08d} is approved",
        data={"order_id": f"ord_{n:08d}", "notification_id": f"ntf_{n:08d}", **data},
    )


class Sleeps:
    """An injected sleep that records and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def run_client(
    base_url: str,
    use: Callable[[ExpoPushClient], Awaitable[T]],
    *,
    access_token: str | None = None,
    sleeps: Sleeps | None = None,
    max_attempts: int = 5,
) -> T:
    async def main() -> T:
        async with httpx.AsyncClient() as http:
            client = ExpoPushClient(
                http,
                ExpoSettings(base_url=base_url, access_token=access_token),
                sleep=sleeps or Sleeps(),
                rng=random.Random(7),
                max_attempts=max_attempts,
            )
            return await use(client)

    return asyncio.run(main())


def test_250_messages_go_as_three_gzipped_requests_with_tickets_in_order() -> None:
    state = ExpoStandinState()
    messages = [message(n) for n in range(250)]
    with serve_in_thread(create_expo_standin(state)) as base_url:
        tickets = run_client(base_url, lambda c: c.send(messages))

    sends = state.requests_to(SEND)
    assert [r.count for r in sends] == [100, 100, 50]
    assert all(r.content_encoding == "gzip" and r.status == 200 for r in sends)
    assert all(r.authorization is None for r in sends)  # no token configured, none sent
    assert [t.to for t in tickets] == [m.to for m in messages]
    assert all(t.ok and t.id for t in tickets)
    # Each ticket id is the one Expo issued for that very message.
    assert all(state.tickets[t.id or ""] == t.to for t in tickets)
    assert [m["to"] for m in state.messages] == [m.to for m in messages]
    received = state.messages[42]
    assert received["data"] == {"order_id": "ord_00000042", "notification_id": "ntf_00000042"}
    assert received["title"] == "Order approved" and received["priority"] == "high"


def test_device_not_registered_from_tickets_and_receipts_names_tokens_to_deactivate() -> None:
    state = ExpoStandinState(unregistered={token(3)}, unregistered_on_receipt={token(5)})
    messages = [message(n) for n in range(8)]

    async def use(client: ExpoPushClient) -> tuple[list[PushTicket], dict[str, Any]]:
        tickets = await client.send(messages)
        receipts = await client.get_receipts([t.id for t in tickets if t.id])
        return tickets, receipts

    with serve_in_thread(create_expo_standin(state)) as base_url:
        tickets, receipts = run_client(base_url, use)

    assert tickets[3].status == "error" and tickets[3].error == DEVICE_NOT_REGISTERED
    assert tickets[3].id is None and "not a registered" in (tickets[3].message or "")
    assert tickets[5].ok  # Expo took it; only the receipt says the app is gone
    assert receipts[tickets[5].id or ""].error == DEVICE_NOT_REGISTERED
    assert sum(r.ok for r in receipts.values()) == 6
    token_by_receipt_id = {t.id: t.to for t in tickets if t.id}
    assert tokens_to_deactivate(tickets, receipts, token_by_receipt_id) == {token(3), token(5)}
    assert tokens_to_deactivate(tickets) == {token(3)}


def test_http_429_waits_for_retry_after_then_succeeds() -> None:
    state = ExpoStandinState(throttle_next=1, retry_after="2")
    sleeps = Sleeps()
    with serve_in_thread(create_expo_standin(state)) as base_url:
        tickets = run_client(base_url, lambda c: c.send([message(1)]), sleeps=sleeps)

    assert [r.status for r in state.requests_to(SEND)] == [429, 200]
    assert len(sleeps.calls) == 1 and 2.0 <= sleeps.calls[0] < 3.0  # never sooner than asked
    assert tickets[0].ok and len(state.messages) == 1


def test_a_retry_after_longer_than_we_wait_is_handed_to_the_caller() -> None:
    state = ExpoStandinState(throttle_next=5, retry_after="3600")
    sleeps = Sleeps()
    with (
        serve_in_thread(create_expo_standin(state)) as base_url,
        pytest.raises(PushUnavailable) as raised,
    ):
        run_client(base_url, lambda c: c.send([message(1)]), sleeps=sleeps)
    assert raised.value.retry_after == 3600 and raised.value.status == 429
    assert sleeps.calls == [] and len(state.requests_to(SEND)) == 1


def test_message_rate_exceeded_retries_only_the_affected_messages() -> None:
    state = ExpoStandinState(rate_exceed_next_messages=2)
    sleeps = Sleeps()
    answered: list[list[int]] = []

    async def use(client: ExpoPushClient) -> list[PushTicket]:
        async def record(pairs: list[tuple[int, PushTicket]]) -> None:
            answered.append([index for index, _ in pairs])

        return await client.send([message(n) for n in range(5)], on_answered=record)

    with serve_in_thread(create_expo_standin(state)) as base_url:
        tickets = run_client(base_url, use, sleeps=sleeps)

    assert [r.count for r in state.requests_to(SEND)] == [5, 2]
    assert answered == [[0, 1, 2, 3, 4], [0, 1]]
    assert len(sleeps.calls) == 1 and sleeps.calls[0] >= 0.5  # backed off before the retry
    assert all(t.ok for t in tickets)
    # Every device got its notification exactly once.
    assert sorted(m["to"] for m in state.messages) == [token(n) for n in range(5)]


def test_message_rate_exceeded_that_persists_is_returned_for_a_later_retry() -> None:
    state = ExpoStandinState(rate_exceed_next_messages=100)
    with serve_in_thread(create_expo_standin(state)) as base_url:
        tickets = run_client(base_url, lambda c: c.send([message(1)]), max_attempts=3)
    assert len(state.requests_to(SEND)) == 3
    assert tickets[0].error == MESSAGE_RATE_EXCEEDED and state.messages == []


def test_5xx_gives_push_unavailable_after_bounded_retries() -> None:
    state = ExpoStandinState(fail_next=1000)
    sleeps = Sleeps()
    with (
        serve_in_thread(create_expo_standin(state)) as base_url,
        pytest.raises(PushUnavailable) as raised,
    ):
        run_client(base_url, lambda c: c.send([message(1)]), sleeps=sleeps, max_attempts=3)
    assert raised.value.status == 500 and raised.value.tickets == [None]
    assert len(state.requests_to(SEND)) == 3
    assert len(sleeps.calls) == 2  # between attempts, not after the last
    assert sleeps.calls[1] >= sleeps.calls[0] * 0.5 and sleeps.calls[1] <= 2.0


def test_push_unavailable_mid_batch_carries_the_tickets_already_answered() -> None:
    state = ExpoStandinState()
    messages = [message(n) for n in range(150)]

    async def use(client: ExpoPushClient) -> list[PushTicket]:
        async def outage_after_first_request(_pairs: list[tuple[int, PushTicket]]) -> None:
            state.fail_next = 1000

        return await client.send(messages, on_answered=outage_after_first_request)

    with (
        serve_in_thread(create_expo_standin(state)) as base_url,
        pytest.raises(PushUnavailable) as raised,
    ):
        run_client(base_url, use, max_attempts=2)
    answered = raised.value.tickets
    assert len(answered) == 150
    assert all(t is not None and t.ok for t in answered[:100])
    assert all(t is None for t in answered[100:])  # only these need sending again


def test_unreachable_expo_gives_push_unavailable() -> None:
    sleeps = Sleeps()
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PushUnavailable, match="ConnectError"):
        run_client(closed, lambda c: c.send([message(1)]), sleeps=sleeps, max_attempts=2)
    assert len(sleeps.calls) == 1


def test_a_message_over_4_kib_is_refused_locally_and_the_rest_are_sent() -> None:
    state = ExpoStandinState()
    big = message(1, note="x" * 4096)
    with serve_in_thread(create_expo_standin(state)) as base_url:
        tickets = run_client(base_url, lambda c: c.send([message(0), big, message(2)]))
    assert tickets[1].error == MESSAGE_TOO_BIG and tickets[1].local and tickets[1].to == token(1)
    assert tickets[0].ok and tickets[2].ok
    assert [r.count for r in state.requests_to(SEND)] == [2]
    assert [m["to"] for m in state.messages] == [token(0), token(2)]


def test_receipts_are_fetched_in_chunks_of_at_most_1000_ids() -> None:
    state = ExpoStandinState()
    ids = [f"ticket-{n:05d}" for n in range(2500)]
    state.tickets.update({ticket_id: token(n) for n, ticket_id in enumerate(ids)})
    state.unregistered_on_receipt.add(token(1234))
    asked = [*ids, *ids[:10], "never-issued"]  # duplicates are asked for once

    with serve_in_thread(create_expo_standin(state)) as base_url:
        receipts = run_client(base_url, lambda c: c.get_receipts(asked))

    requests = state.requests_to(RECEIPTS)
    assert [r.count for r in requests] == [1000, 1000, 501]
    assert all(r.content_encoding == "gzip" for r in requests)
    assert len(receipts) == 2500 and "never-issued" not in receipts
    assert receipts["ticket-01234"].error == DEVICE_NOT_REGISTERED
    assert receipts["ticket-00000"].ok


def test_receipts_not_ready_yet_are_simply_absent() -> None:
    state = ExpoStandinState(receipts_ready=False)
    with serve_in_thread(create_expo_standin(state)) as base_url:

        async def use(client: ExpoPushClient) -> dict[str, Any]:
            tickets = await client.send([message(1)])
            return await client.get_receipts([t.id for t in tickets if t.id])

        assert run_client(base_url, use) == {}


def test_access_token_is_sent_and_a_missing_one_is_refused() -> None:
    state = ExpoStandinState(access_token="expo-secret-token")
    with serve_in_thread(create_expo_standin(state)) as base_url:
        tickets = run_client(
            base_url, lambda c: c.send([message(1)]), access_token="expo-secret-token"
        )
        with pytest.raises(PushRequestError) as raised:
            run_client(base_url, lambda c: c.send([message(2)]))
    assert tickets[0].ok
    assert state.requests_to(SEND)[0].authorization == "Bearer expo-secret-token"
    assert raised.value.code == "UNAUTHORIZED" and raised.value.status == 401
    assert [m["to"] for m in state.messages] == [token(1)]


def test_a_whole_request_error_body_raises_push_request_error() -> None:
    async def send(_request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "errors": [
                    {
                        "code": "PUSH_TOO_MANY_EXPERIENCE_IDS",
                        "message": "two projects",
                        "details": {"@a/one": [token(1)], "@a/two": [token(2)]},
                    }
                ]
            },
            400,
        )

    app = Starlette(routes=[Route("/--/api/v2/push/send", send, methods=["POST"])])
    with serve_in_thread(app) as base_url, pytest.raises(PushRequestError) as raised:
        run_client(base_url, lambda c: c.send([message(1), message(2)]))
    assert raised.value.code == "PUSH_TOO_MANY_EXPERIENCE_IDS"
    assert raised.value.details == {"@a/one": [token(1)], "@a/two": [token(2)]}


def test_standin_speaks_expo_limits_and_shapes() -> None:
    state = ExpoStandinState()
    many = [{"to": token(n), "body": "hi"} for n in range(101)]
    with serve_in_thread(create_expo_standin(state)) as base_url, httpx.Client() as http:
        too_many = http.post(
            f"{base_url}/--/api/v2/push/send",
            content=gzip.compress(orjson.dumps(many)),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        single = http.post(f"{base_url}/--/api/v2/push/send", json={"to": token(1), "body": "x"})
        fan_out = http.post(
            f"{base_url}/--/api/v2/push/send", json=[{"to": [token(2), token(3)], "body": "x"}]
        )
        bad = http.post(f"{base_url}/--/api/v2/push/send", content=b"{not json")
        receipts = http.post(f"{base_url}/--/api/v2/push/getReceipts", json={"ids": ["x"] * 1001})
    assert too_many.status_code == 400
    assert too_many.json()["errors"][0]["code"] == "PUSH_TOO_MANY_NOTIFICATIONS"
    assert single.json()["data"]["status"] == "ok"  # a bare ticket for a single message
    assert [t["status"] for t in fan_out.json()["data"]] == ["ok", "ok"]
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "VALIDATION_ERROR"
    assert receipts.json()["errors"][0]["code"] == "PUSH_TOO_MANY_RECEIPTS"


def test_push_messages_must_say_what_they_are_about() -> None:
    with pytest.raises(ValueError, match="notification_id"):
        PushMessage(to=token(1), title="t", body="b", data={"order_id": "ord_1"})
    wire = message(1).to_expo()
    assert wire["data"]["order_id"] == "ord_00000001" and "channelId" not in wire
    with_channel = PushMessage(
        to=token(1), title="t", body="b", data=wire["data"], ttl=3600, channel_id="orders"
    ).to_expo()
    assert with_channel["channelId"] == "orders" and with_channel["ttl"] == 3600


def test_pacing_guard_keeps_under_600_a_second() -> None:
    now = [100.0]
    sleeps = Sleeps()

    async def advance(seconds: float) -> None:
        await sleeps(seconds)
        now[0] += seconds

    async def main() -> None:
        guard = RateGuard(600, clock=lambda: now[0], sleep=advance)
        for _ in range(6):  # one second's burst goes straight out
            await guard.acquire(100)
        assert sleeps.calls == []
        await guard.acquire(100)  # the seventh hundred waits its sixth of a second
        assert sleeps.calls == [pytest.approx(100 / 600)]
        now[0] += 1.0
        await guard.acquire(100)
        assert len(sleeps.calls) == 1

    asyncio.run(main())


def test_expo_settings_from_environ() -> None:
    default = ExpoSettings.from_environ({})
    assert default.base_url == "https://exp.host" and default.access_token is None
    assert default.receipt_delay_seconds == 900
    custom = ExpoSettings.from_environ(
        {
            "EXPO_PUSH_URL": "http://127.0.0.1:9/",
            "EXPO_ACCESS_TOKEN": "tok-secret",
            "PUSH_RECEIPT_DELAY_SECONDS": "60",
        }
    )
    assert custom.base_url == "http://127.0.0.1:9" and custom.receipt_delay_seconds == 60
    assert custom.access_token == "tok-secret" and "tok-secret" not in repr(custom)
    with pytest.raises(ValueError, match="PUSH_RECEIPT_DELAY_SECONDS"):
        ExpoSettings.from_environ({"PUSH_RECEIPT_DELAY_SECONDS": "soon"})
