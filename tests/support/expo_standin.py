"""A stand-in for Expo's push service, speaking its HTTP API: /--/api/v2/push/send (≤ 100
messages, gzip bodies, tickets in message order) and /--/api/v2/push/getReceipts."""

from __future__ import annotations

import gzip
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass
class ExpoState:
    messages: list[dict[str, Any]] = field(default_factory=list)
    unregistered: set[str] = field(default_factory=set)
    tickets: dict[str, str] = field(default_factory=dict)  # ticket id -> token
    throttle_next: int = 0
    access_token: str | None = None
    receipt_requests: int = 0


def create_expo_standin(state: ExpoState) -> Starlette:
    async def body(request: Request) -> Any:
        raw = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        return orjson.loads(raw)

    async def send(request: Request) -> JSONResponse:
        if state.access_token and request.headers.get("authorization") != (
                f"Bearer {state.access_token}"):
            return JSONResponse({"errors": [{"code": "UNAUTHORIZED",
                                             "message": "bad access token"}]}, 401)
        if state.throttle_next > 0:
            state.throttle_next -= 1
            return JSONResponse({"errors": [{"code": "TOO_MANY_REQUESTS",
                                             "message": "slow down"}]}, 429,
                                headers={"retry-after": "1"})
        messages = await body(request)
        messages = messages if isinstance(messages, list) else [messages]
        if len(messages) > 100:
            return JSONResponse({"errors": [{"code": "PUSH_TOO_MANY_NOTIFICATIONS",
                                             "message": "at most 100"}]}, 400)
        tickets = []
        for message in messages:
            state.messages.append(message)
            if message["to"] in state.unregistered:
                tickets.append({"status": "error", "message": "not registered",
                                "details": {"error": "DeviceNotRegistered"}})
                continue
            ticket_id = secrets.token_hex(8)
            state.tickets[ticket_id] = message["to"]
            tickets.append({"status": "ok", "id": ticket_id})
        return JSONResponse({"data": tickets})

    async def receipts(request: Request) -> JSONResponse:
        state.receipt_requests += 1
        ids = (await body(request))["ids"]
        answer = {}
        for ticket_id in ids:
            token = state.tickets.get(ticket_id)
            if token is None:
                continue
            answer[ticket_id] = (
                {"status": "error", "message": "gone", "details": {"error": "DeviceNotRegistered"}}
                if token in state.unregistered else {"status": "ok"})
        return JSONResponse({"data": answer})

    return Starlette(routes=[
        Route("/--/api/v2/push/send", send, methods=["POST"]),
        Route("/--/api/v2/push/getReceipts", receipts, methods=["POST"]),
    ])
