"""A stand-in for Expo's push service, speaking its HTTP API, for tests and local runs.

- `POST /--/api/v2/push/send`: a message object or an array of them (gzip bodies accepted);
  more than 100 notifications → 400 `PUSH_TOO_MANY_NOTIFICATIONS`. Answers
  `{"data": [ticket, …]}` in message order (a bare ticket for a one-message request, as Expo
  does). Tokens in `unregistered` get a `DeviceNotRegistered` ticket; tokens in
  `unregistered_on_receipt` get an ok ticket and a `DeviceNotRegistered` receipt (the usual
  real-world order); a message over 4 KiB gets `MessageTooBig`; the next
  `rate_exceed_next_messages` messages get `MessageRateExceeded`.
- `POST /--/api/v2/push/getReceipts`: `{"ids": […]}`, more than 1,000 → 400
  `PUSH_TOO_MANY_RECEIPTS`; unknown ids (or all, while `receipts_ready` is false) are left out.
- Switches: answer 429 with `Retry-After` (`throttle_next`) or 5xx (`fail_next`) for the next
  N requests; with `access_token` set, a request without that bearer token → 401
  `UNAUTHORIZED`.
- Records every request and every accepted message, for assertions.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MAX_NOTIFICATIONS = 100
MAX_RECEIPT_IDS = 1000
MAX_MESSAGE_BYTES = 4096


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    content_encoding: str | None
    authorization: str | None
    count: int  # notifications or receipt ids in the request
    status: int


@dataclass
class ExpoStandinState:
    access_token: str | None = None
    unregistered: set[str] = field(default_factory=set)
    unregistered_on_receipt: set[str] = field(default_factory=set)
    receipts_ready: bool = True
    throttle_next: int = 0
    retry_after: str = "1"
    fail_next: int = 0
    fail_status: int = 500
    rate_exceed_next_messages: int = 0
    # Everything Expo accepted (ok tickets), in arrival order, and every request.
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    tickets: dict[str, str] = field(default_factory=dict)  # ticket id -> token

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]


def _errors(code: str, message: str, status: int, **headers: str) -> JSONResponse:
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status, headers=headers)


class _BadRequest(Exception):
    pass


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        if request.headers.get("content-encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        return orjson.loads(raw)
    except (OSError, EOFError, orjson.JSONDecodeError) as error:
        raise _BadRequest(f"request body is not JSON: {error}") from error


def _recipients(message: Any) -> list[str]:
    if not isinstance(message, dict):
        raise _BadRequest("each message must be an object")
    to = message.get("to")
    if isinstance(to, str) and to:
        return [to]
    if isinstance(to, list) and to and all(isinstance(t, str) and t for t in to):
        return list(to)
    raise _BadRequest('"to" must be a push token or an array of them')


def create_expo_standin(
    state: ExpoStandinState | None = None,
    *,
    access_token: str | None = None,
    unregistered: Iterable[str] = (),
) -> Starlette:
    """The app; its state is `app.state.expo` (the `state` passed in, or a new one)."""
    state = state or ExpoStandinState()
    if access_token is not None:
        state.access_token = access_token
    state.unregistered.update(unregistered)

    def gate(request: Request) -> JSONResponse | None:
        """Auth first, then the failures a test switched on."""
        if state.access_token and request.headers.get("authorization") != (
            f"Bearer {state.access_token}"
        ):
            return _errors("UNAUTHORIZED", "The bearer token is invalid.", 401)
        if state.throttle_next > 0:
            state.throttle_next -= 1
            return _errors(
                "TOO_MANY_REQUESTS",
                "You are exceeding the limit of 600 notifications per second.",
                429,
                **{"retry-after": state.retry_after},
            )
        if state.fail_next > 0:
            state.fail_next -= 1
            return _errors("INTERNAL_SERVER_ERROR", "An unknown error occurred.", state.fail_status)
        return None

    def record(request: Request, count: int, status: int) -> None:
        state.requests.append(
            RecordedRequest(
                path=request.url.path,
                content_encoding=request.headers.get("content-encoding"),
                authorization=request.headers.get("authorization"),
                count=count,
                status=status,
            )
        )

    def ticket_for(message: dict[str, Any], token: str) -> dict[str, Any]:
        if token in state.unregistered:
            return {
                "status": "error",
                "message": f'"{token}" is not a registered push notification recipient',
                "details": {"error": "DeviceNotRegistered", "expoPushToken": token},
            }
        if len(orjson.dumps({**message, "to": token})) > MAX_MESSAGE_BYTES:
            return {
                "status": "error",
                "message": "Message too big: the payload must be at most 4096 bytes.",
                "details": {"error": "MessageTooBig"},
            }
        if state.rate_exceed_next_messages > 0:
            state.rate_exceed_next_messages -= 1
            return {
                "status": "error",
                "message": "Too many messages sent to this device; slow down.",
                "details": {"error": "MessageRateExceeded"},
            }
        ticket_id = str(uuid.uuid4())
        state.tickets[ticket_id] = token
        state.messages.append({**message, "to": token})
        return {"status": "ok", "id": ticket_id}

    async def send(request: Request) -> JSONResponse:
        try:
            body = await _json_body(request)
            messages = body if isinstance(body, list) else [body]
            recipients = [_recipients(message) for message in messages]
        except _BadRequest as error:
            record(request, 0, 400)
            return _errors("VALIDATION_ERROR", str(error), 400)
        count = sum(len(r) for r in recipients)
        answer = gate(request)
        if answer is None and count > MAX_NOTIFICATIONS:
            answer = _errors(
                "PUSH_TOO_MANY_NOTIFICATIONS",
                f"You are trying to send {count} notifications; the limit is "
                f"{MAX_NOTIFICATIONS} per request.",
                400,
            )
        if answer is None:
            tickets = [
                ticket_for(message, token)
                for message, tokens in zip(messages, recipients, strict=True)
                for token in tokens
            ]
            single = not isinstance(body, list) and len(tickets) == 1
            answer = JSONResponse({"data": tickets[0] if single else tickets})
        record(request, count, answer.status_code)
        return answer

    async def get_receipts(request: Request) -> JSONResponse:
        try:
            body = await _json_body(request)
            ids = body.get("ids") if isinstance(body, dict) else None
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise _BadRequest('"ids" must be an array of ticket id strings')
        except _BadRequest as error:
            record(request, 0, 400)
            return _errors("VALIDATION_ERROR", str(error), 400)
        answer = gate(request)
        if answer is None and len(ids) > MAX_RECEIPT_IDS:
            answer = _errors(
                "PUSH_TOO_MANY_RECEIPTS",
                f"You are trying to get {len(ids)} receipts; the limit is {MAX_RECEIPT_IDS}.",
                400,
            )
        if answer is None:
            answer = JSONResponse({"data": receipts_for(ids)})
        record(request, len(ids), answer.status_code)
        return answer

    def receipts_for(ids: list[str]) -> dict[str, Any]:
        receipts: dict[str, Any] = {}
        for ticket_id in ids if state.receipts_ready else []:
            token = state.tickets.get(ticket_id)
            if token is None:
                continue  # no receipt for this id: Expo leaves it out
            if token in state.unregistered_on_receipt or token in state.unregistered:
                receipts[ticket_id] = {
                    "status": "error",
                    "message": f'"{token}" is not a registered push notification recipient',
                    "details": {"error": "DeviceNotRegistered"},
                }
            else:
                receipts[ticket_id] = {"status": "ok"}
        return receipts

    app = Starlette(
        routes=[
            Route("/--/api/v2/push/send", send, methods=["POST"]),
            Route("/--/api/v2/push/getReceipts", get_receipts, methods=["POST"]),
        ]
    )
    app.state.expo = state
    return app
