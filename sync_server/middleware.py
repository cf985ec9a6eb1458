"""Pure ASGI middleware: request ids and logs, body limits and gzip bodies, compression,
security headers. Pure ASGI (not BaseHTTPMiddleware) so WebSockets and streaming pass through
untouched and nothing is buffered that need not be."""

from __future__ import annotations

import gzip
import logging
import secrets
import time
import zlib
from typing import Any

import brotli
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sync_server.errors import PayloadTooLarge, UnsupportedMediaType, error_response

access_log = logging.getLogger("freshroots.access")

COMPRESSIBLE = ("application/json", "text/", "application/javascript", "image/svg+xml")
MIN_COMPRESS_BYTES = 512


class RequestLogMiddleware:
    """One structured line per request: method, route, status, duration, request id, user."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = Headers(scope=scope).get("x-request-id") or secrets.token_hex(8)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id[:64]
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = state["request_id"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": getattr(route, "path", None),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "request_id": state["request_id"],
                    "user_id": state.get("user_id"),
                },
            )


class BodyMiddleware:
    """Cap request bodies (413) and inflate `Content-Encoding: gzip` ones, also capped."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(PayloadTooLarge())(scope, receive, send)
            return
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            await error_response(UnsupportedMediaType("Content-Encoding must be gzip."))(
                scope, receive, send
            )
            return

        if encoding == "identity":
            await self.app(scope, self._capped(receive), send)
            return
        raw = bytearray()
        async for chunk in _chunks(receive):
            raw += chunk
            if len(raw) > self.max_bytes:
                await error_response(PayloadTooLarge())(scope, receive, send)
                return
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(bytes(raw), self.max_bytes + 1)
            if inflater.unconsumed_tail or len(body) > self.max_bytes:
                await error_response(PayloadTooLarge("The inflated body is too large."))(
                    scope, receive, send
                )
                return
        except zlib.error:
            await error_response(
                UnsupportedMediaType("The body is not valid gzip.", code="invalid_gzip")
            )(scope, receive, send)
            return
        scope = dict(scope)
        scope["headers"] = [
            (name, value)
            for name, value in scope["headers"]
            if name not in (b"content-encoding", b"content-length")
        ] + [(b"content-length", str(len(body)).encode())]
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _capped(self, receive: Receive) -> Receive:
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge()
            return message

        return capped


async def _chunks(receive: Receive) -> Any:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


class CompressionMiddleware:
    """br or gzip for whole (non-streamed) responses above a few hundred bytes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accepted = Headers(scope=scope).get("accept-encoding", "").lower()
        encoding = "br" if "br" in accepted else "gzip" if "gzip" in accepted else None
        if encoding is None:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        passthrough = False

        async def compressing_send(message: Message) -> None:
            nonlocal start, passthrough
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or passthrough:
                await send(message)
                return
            assert start is not None
            headers = MutableHeaders(scope=start)
            body = message.get("body", b"")
            eligible = (
                not message.get("more_body", False)
                and len(body) >= MIN_COMPRESS_BYTES
                and "content-encoding" not in headers
                and headers.get("content-type", "").startswith(COMPRESSIBLE)
            )
            if eligible:
                body = (
                    brotli.compress(body, quality=5)
                    if encoding == "br"
                    else gzip.compress(body, compresslevel=6, mtime=0)
                )
                headers["content-encoding"] = encoding
                headers["content-length"] = str(len(body))
                headers.append("vary", "Accept-Encoding")
                message = {**message, "body": body}
            else:
                passthrough = True
            await send(start)
            await send(message)

        await self.app(scope, receive, compressing_send)


class SecurityHeadersMiddleware:
    HEADERS = (
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("strict-transport-security", "max-age=31536000; includeSubDomains"),
        ("cross-origin-opener-policy", "same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.HEADERS:
                    headers.setdefault(name, value)
                if scope["path"].startswith("/api"):
                    headers.setdefault("cache-control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)
