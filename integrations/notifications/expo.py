"""A client for Expo's push API (`/--/api/v2/push/send` and `/--/api/v2/push/getReceipts`).

What Expo's documentation asks of a sender, and how this client does it:
- At most 100 messages a request and 1,000 receipt ids a request: `send` and `get_receipts`
  split their input into such chunks and put the answers back in input order.
- Request bodies may be gzip-compressed (`Content-Encoding: gzip`); like Expo's own Node SDK we
  compress any body over 1 KiB, which is every real batch.
- With "enhanced push security" on, every request needs `Authorization: Bearer <token>`.
- A message's payload must stay within 4 KiB or it fails with `MessageTooBig`; we refuse such a
  message here, without sending it, and answer it with a local `MessageTooBig` ticket.
- 600 notifications a second per project (`TOO_MANY_REQUESTS`, HTTP 429): a token-bucket guard
  keeps this process under that rate, and a 429 is retried after `Retry-After` or exponential
  backoff with jitter. A `MessageRateExceeded` ticket is retried the same way, for the affected
  messages only — the others in the request were accepted and must not be sent twice.
- Network errors and 5xx are retried a bounded number of times, then `PushUnavailable` tells
  the caller (the outbox) to try later. It carries the tickets already answered, so the
  caller can record those and re-send only the rest.
- `DeviceNotRegistered`, from a ticket or a receipt, means: stop sending to that token.
  `tokens_to_deactivate` collects them.

A ticket only says Expo accepted a message; its receipt, read some 15 minutes later (Expo keeps
receipts for 24 hours), says whether Apple or Google took it.
"""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import anyio
import httpx
import orjson

from integrations.notifications.settings import ExpoSettings

MAX_MESSAGES_PER_REQUEST = 100
MAX_RECEIPT_IDS_PER_REQUEST = 1000
MAX_MESSAGE_BYTES = 4096
PROJECT_NOTIFICATIONS_PER_SECOND = 600
GZIP_MIN_BYTES = 1024

# `details.error` values in tickets and receipts.
DEVICE_NOT_REGISTERED = "DeviceNotRegistered"
MESSAGE_TOO_BIG = "MessageTooBig"
MESSAGE_RATE_EXCEEDED = "MessageRateExceeded"
INVALID_CREDENTIALS = "InvalidCredentials"
MISMATCH_SENDER_ID = "MismatchSenderId"

# `errors[].code` of a whole-request failure that is worth retrying.
TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"

# What every push names (PROTOCOL: "A push names what it is about").
REQUIRED_DATA_KEYS = ("order_id", "notification_id")

Priority = Literal["default", "normal", "high"]
Sleep = Callable[[float], Awaitable[None]]


class PushError(Exception):
    """Expo could not take the request.

    Raised by `send`, `tickets` is in message order: None for a message not answered (send it
    again later), a ticket for one that was (record it; do not send it again).
    """

    tickets: list[PushTicket | None]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.tickets = []


class PushRequestError(PushError):
    """Expo refused the whole request (4xx or an `errors` body); resending it as is won't help.

    Codes seen from Expo: `UNAUTHORIZED` (access token missing or wrong),
    `PUSH_TOO_MANY_EXPERIENCE_IDS`, `PUSH_TOO_MANY_NOTIFICATIONS`, `PUSH_TOO_MANY_RECEIPTS`,
    `VALIDATION_ERROR`; `UNEXPECTED_RESPONSE` is ours, for an answer we could not read.
    """

    def __init__(
        self, code: str, message: str, *, status: int | None = None, details: Any = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.details = details


class PushUnavailable(PushError):
    """Still failing (network, 5xx, 429) after the retry bound: try again later.

    `retry_after` is the last `Retry-After` Expo sent, if any (the outbox can wait that long).
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class PushMessage:
    """One notification to one device. `data` reaches the app; title and body are for people."""

    to: str
    title: str
    body: str
    data: Mapping[str, Any]
    sound: Literal["default"] | None = "default"
    ttl: int | None = None
    priority: Priority | None = "high"
    channel_id: str | None = None

    def __post_init__(self) -> None:
        if not self.to:
            raise ValueError("a push message needs a recipient token")
        missing = [key for key in REQUIRED_DATA_KEYS if not self.data.get(key)]
        if missing:
            # The app routes a tap by these ids; a push without them is a bug upstream.
            raise ValueError(f"push data must carry {', '.join(missing)}")

    def to_expo(self) -> dict[str, Any]:
        """The message in Expo's wire format (camelCase, absent fields left out)."""
        message: dict[str, Any] = {
            "to": self.to,
            "title": self.title,
            "body": self.body,
            "data": dict(self.data),
        }
        if self.sound is not None:
            message["sound"] = self.sound
        if self.ttl is not None:
            message["ttl"] = self.ttl
        if self.priority is not None:
            message["priority"] = self.priority
        if self.channel_id is not None:
            message["channelId"] = self.channel_id
        return message

    def size(self) -> int:
        """Bytes of the message as JSON: a conservative stand-in for the 4 KiB payload limit."""
        return len(orjson.dumps(self.to_expo()))


@dataclass(frozen=True)
class PushTicket:
    """Expo's answer to one message. `error` is `details.error` (e.g. DeviceNotRegistered)."""

    to: str
    status: Literal["ok", "error"]
    id: str | None = None
    message: str | None = None
    error: str | None = None
    details: Mapping[str, Any] | None = None
    local: bool = False  # refused here, never sent to Expo

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class PushReceipt:
    """Whether Apple or Google took the message. `error` is `details.error`."""

    status: Literal["ok", "error"]
    message: str | None = None
    error: str | None = None
    details: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def tokens_to_deactivate(
    tickets: Iterable[PushTicket] = (),
    receipts: Mapping[str, PushReceipt] | None = None,
    token_by_receipt_id: Mapping[str, str] | None = None,
) -> set[str]:
    """Tokens Expo says are dead (`DeviceNotRegistered`): stop sending to them.

    Receipts name no token, so `token_by_receipt_id` (ticket id -> token, as recorded when
    the ticket came back) maps them; a receipt whose id is not in it is skipped.
    """
    dead = {t.to for t in tickets if t.error == DEVICE_NOT_REGISTERED}
    for receipt_id, receipt in (receipts or {}).items():
        token = (token_by_receipt_id or {}).get(receipt_id)
        if receipt.error == DEVICE_NOT_REGISTERED and token:
            dead.add(token)
    return dead


class RateGuard:
    """A token bucket: at most `per_second` notifications a second, bursting to one second's
    worth. Tokens go into debt before the wait, so concurrent senders queue up fairly."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.per_second = float(per_second)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.per_second
        self._last = clock()

    async def acquire(self, count: int) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._tokens = min(self.per_second, self._tokens + elapsed * self.per_second)
        self._last = now
        self._tokens -= count
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.per_second)


def _retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds: either delta-seconds or an HTTP date."""
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _details_error(details: Any) -> str | None:
    if isinstance(details, dict) and isinstance(details.get("error"), str):
        return str(details["error"])
    return None


def _ticket(to: str, raw: Any) -> PushTicket:
    if not isinstance(raw, dict):
        return PushTicket(to=to, status="error", error="UnexpectedTicket", message=repr(raw))
    details = raw.get("details") if isinstance(raw.get("details"), dict) else None
    if raw.get("status") == "ok":
        ticket_id = raw.get("id")
        return PushTicket(to=to, status="ok", id=str(ticket_id) if ticket_id is not None else None)
    return PushTicket(
        to=to,
        status="error",
        message=str(raw.get("message") or ""),
        error=_details_error(details),
        details=details,
    )


def _receipt(raw: Any) -> PushReceipt:
    if not isinstance(raw, dict):
        return PushReceipt(status="error", error="UnexpectedReceipt", message=repr(raw))
    details = raw.get("details") if isinstance(raw.get("details"), dict) else None
    if raw.get("status") == "ok":
        return PushReceipt(status="ok", details=details)
    return PushReceipt(
        status="error",
        message=str(raw.get("message") or ""),
        error=_details_error(details),
        details=details,
    )


def _chunks(items: Sequence[int], size: int) -> list[Sequence[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@dataclass
class _Attempts:
    """Retry bookkeeping shared by one logical request across its attempts."""

    count: int = 0
    last_status: int | None = None
    last_error: str = ""
    retry_after: float | None = field(default=None)


class ExpoPushClient:
    """Sends push messages through Expo. Reuse one per process: it holds the pacing guard."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: ExpoSettings,
        *,
        sleep: Sleep = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_attempts: int = 5,
        base_delay_seconds: float = 1.0,
        max_delay_seconds: float = 60.0,
        per_second: float = PROJECT_NOTIFICATIONS_PER_SECOND,
        timeout_seconds: float = 30.0,
    ) -> None:
        """`per_second` is the project's budget for this process: with several workers, give
        each its share of Expo's 600 a second."""
        self.http = http
        self.settings = settings
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.max_attempts = max(1, max_attempts)
        self.base_delay = base_delay_seconds
        self.max_delay = max_delay_seconds
        self.timeout = timeout_seconds
        self.guard = RateGuard(per_second, clock=clock, sleep=sleep)
        self.requests = 0

    @property
    def send_url(self) -> str:
        return f"{self.settings.base_url}/--/api/v2/push/send"

    @property
    def receipts_url(self) -> str:
        return f"{self.settings.base_url}/--/api/v2/push/getReceipts"

    async def send(
        self,
        messages: Sequence[PushMessage],
        *,
        on_answered: Callable[[list[tuple[int, PushTicket]]], Awaitable[None]] | None = None,
    ) -> list[PushTicket]:
        """One ticket per message, in message order.

        `on_answered`, if given, is awaited with `(index, ticket)` pairs after every answered
        request and before the next request or wait, so a caller can record what Expo took
        before anything else can go wrong. A message retried after `MessageRateExceeded` is
        reported again with its new ticket.
        """
        tickets: list[PushTicket | None] = [None] * len(messages)
        pending: list[int] = []
        for index, message in enumerate(messages):
            size = message.size()
            if size > MAX_MESSAGE_BYTES:
                tickets[index] = PushTicket(
                    to=message.to,
                    status="error",
                    message=f"message is {size} bytes; Expo accepts at most {MAX_MESSAGE_BYTES}",
                    error=MESSAGE_TOO_BIG,
                    details={"error": MESSAGE_TOO_BIG},
                    local=True,
                )
            else:
                pending.append(index)
        if on_answered is not None and len(pending) < len(messages):
            await on_answered([(i, t) for i, t in enumerate(tickets) if t is not None])

        for rate_round in range(self.max_attempts):
            if rate_round:
                await self._wait(rate_round - 1, None)
            rate_limited: list[int] = []
            for chunk in _chunks(pending, MAX_MESSAGES_PER_REQUEST):
                try:
                    raw = await self._request(
                        self.send_url, [messages[i].to_expo() for i in chunk], len(chunk)
                    )
                    answered = self._tickets(raw, [messages[i].to for i in chunk])
                except PushError as error:
                    error.tickets = list(tickets)  # what was answered before this chunk
                    raise
                for index, ticket in zip(chunk, answered, strict=True):
                    tickets[index] = ticket
                    if ticket.error == MESSAGE_RATE_EXCEEDED:
                        rate_limited.append(index)
                if on_answered is not None:
                    await on_answered(list(zip(chunk, answered, strict=True)))
            pending = rate_limited
            if not pending:
                break
        # Messages still rate-limited after the last round keep their MessageRateExceeded
        # ticket: the caller's outbox tries them again later.
        return [t for t in tickets if t is not None]

    async def get_receipts(self, ids: Iterable[str]) -> dict[str, PushReceipt]:
        """Receipts by ticket id. An id Expo has no receipt for (not ready yet, or older than a
        day) is absent from the answer."""
        unique = list(dict.fromkeys(ids))
        receipts: dict[str, PushReceipt] = {}
        for start in range(0, len(unique), MAX_RECEIPT_IDS_PER_REQUEST):
            chunk = unique[start : start + MAX_RECEIPT_IDS_PER_REQUEST]
            raw = await self._request(self.receipts_url, {"ids": chunk}, 0)
            if not isinstance(raw, dict):
                raise PushRequestError(
                    "UNEXPECTED_RESPONSE", "getReceipts answered without a map of receipts"
                )
            for receipt_id, receipt in raw.items():
                receipts[str(receipt_id)] = _receipt(receipt)
        return receipts

    def _tickets(self, raw: Any, tokens: list[str]) -> list[PushTicket]:
        # Expo answers a one-message request with a bare ticket object rather than a list.
        if isinstance(raw, dict) and len(tokens) == 1:
            raw = [raw]
        if not isinstance(raw, list) or len(raw) != len(tokens):
            got = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise PushRequestError(
                "UNEXPECTED_RESPONSE", f"expected {len(tokens)} tickets, got {got}"
            )
        return [_ticket(token, ticket) for token, ticket in zip(tokens, raw, strict=True)]

    def _headers(self, compressed: bool) -> dict[str, str]:
        headers = {
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "content-type": "application/json",
            "user-agent": "freshroots-sync",
        }
        if compressed:
            headers["content-encoding"] = "gzip"
        if self.settings.access_token:
            headers["authorization"] = f"Bearer {self.settings.access_token}"
        return headers

    async def _request(self, url: str, payload: Any, notifications: int) -> Any:
        """POST with retries; returns the answer's `data`. `notifications` feeds the pacing."""
        body = orjson.dumps(payload)
        compressed = len(body) > GZIP_MIN_BYTES
        if compressed:
            body = gzip.compress(body)
        headers = self._headers(compressed)
        attempts = _Attempts()
        while attempts.count < self.max_attempts:
            attempts.count += 1
            if notifications:
                await self.guard.acquire(notifications)
            self.requests += 1
            try:
                response = await self.http.post(
                    url, content=body, headers=headers, timeout=self.timeout
                )
            except httpx.TransportError as error:
                # Includes timeouts. A request that timed out after reaching Expo may have been
                # accepted; Expo has no idempotency key, so a retry risks a rare duplicate
                # rather than a lost notification.
                attempts.last_status, attempts.last_error = None, type(error).__name__
                await self._after_failure(attempts, None)
                continue
            answer = self._json(response)
            errors = answer.get("errors") if isinstance(answer, dict) else None
            first = errors[0] if isinstance(errors, list) and errors else None
            first = first if isinstance(first, dict) else {}
            code = str(first.get("code") or "")
            if response.status_code == 429 or code == TOO_MANY_REQUESTS:
                attempts.last_status, attempts.last_error = response.status_code, "rate limited"
                await self._after_failure(attempts, _retry_after(response))
                continue
            if response.status_code >= 500:
                attempts.last_status = response.status_code
                attempts.last_error = code or f"HTTP {response.status_code}"
                await self._after_failure(attempts, _retry_after(response))
                continue
            if code or response.status_code != 200:
                raise PushRequestError(
                    code or f"HTTP_{response.status_code}",
                    str(first.get("message") or response.text[:200]),
                    status=response.status_code,
                    details=first.get("details"),
                )
            if not isinstance(answer, dict) or "data" not in answer:
                raise PushRequestError(
                    "UNEXPECTED_RESPONSE", "no data in Expo's answer", status=200
                )
            return answer["data"]
        raise PushUnavailable(
            f"Expo still failing after {attempts.count} attempts: {attempts.last_error}",
            status=attempts.last_status,
            retry_after=attempts.retry_after,
        )

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None

    async def _after_failure(self, attempts: _Attempts, retry_after: float | None) -> None:
        """Wait before the next attempt; no wait after the last one (the caller gives up)."""
        attempts.retry_after = retry_after
        if attempts.count >= self.max_attempts:
            return
        if retry_after is not None and retry_after > self.max_delay:
            # Expo wants a longer pause than we hold a worker for: hand it to the outbox.
            attempts.count = self.max_attempts
            return
        await self._wait(attempts.count - 1, retry_after)

    async def _wait(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            # Never earlier than asked; a little jitter so workers don't return in lockstep.
            delay = retry_after + self.rng.uniform(0, min(1.0, retry_after * 0.1 + 0.1))
        else:
            # Exponential backoff with "equal jitter": at least half the step, so a 429 never
            # turns into an immediate retry.
            step = min(self.max_delay, self.base_delay * 2**attempt)
            delay = self.rng.uniform(step / 2, step)
        await self.sleep(min(self.max_delay, delay))
