"""The one exception tree. Every error a client can see is a `FreshRootsError`.

    FreshRootsError                 (500 internal_error)
    ├── BadRequest                  (400 bad_request)
    │   ├── ValidationFailed        (422 validation_failed; names the offending field)
    │   ├── IdempotencyKeyReused    (422 idempotency_key_reused)
    │   ├── MalformedJSON           (400 malformed_json)
    │   ├── MalformedCursor         (400 malformed_cursor)
    │   └── InvalidCode             (400 invalid_code)
    ├── Unauthorized                (401 unauthorized)
    │   ├── InvalidToken            (401 invalid_token)
    │   └── InvalidCredentials      (401 invalid_credentials)
    ├── Forbidden                   (403 forbidden)
    ├── NotFound                    (404 not_found)
    ├── Conflict                    (409 conflict; subclasses carry the precise code)
    │   ├── EmailTaken              (409 email_taken)
    │   └── IllegalTransition       (409 illegal_transition)
    ├── PayloadTooLarge             (413 payload_too_large)
    ├── NotConfigured               (404 integration_off)
    ├── UnsupportedMediaType        (415 unsupported_media_type)
    ├── RateLimited                 (429 rate_limited, Retry-After)
    └── ServiceUnavailable          (503 service_unavailable, Retry-After)

Business rejections of a sync mutation (`out_of_stock`, `listing_unavailable` …) are
`MutationRejected`: final outcomes that push records and reports with `ok: false`, and that
the REST routes answer with 409 (or 422 for `invalid_args`).

This tree is the wire contract's error vocabulary (PROTOCOL.md's envelope: a `code`, a
message, the HTTP status), so it lives at the bottom of the import graph, as httpx keeps its
exceptions in one module: storage raises from it, the server maps it to a response
(`sync_server.errors.error_response`, the only place that builds the envelope's HTTP answer),
and a client reads the same codes. It imports nothing of ours.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FreshRootsError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Something went wrong on our side."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.error_code = code or self.code
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.error_code, "message": self.message}
        if self.details:
            body.update(self.details)
        return {"error": body}


class BadRequest(FreshRootsError):
    status_code = 400
    code = "bad_request"
    default_message = "The request is not valid."


class ValidationFailed(BadRequest):
    status_code = 422
    code = "validation_failed"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, details={"field": field} if field else None)


class IdempotencyKeyReused(BadRequest):
    status_code = 422
    code = "idempotency_key_reused"
    default_message = (
        "This Idempotency-Key was already used for a different request; "
        "use a new key for a new request."
    )


class MalformedJSON(BadRequest):
    code = "malformed_json"
    default_message = "The request body is not valid JSON."


class MalformedCursor(BadRequest):
    code = "malformed_cursor"
    default_message = "The cursor is not well-formed."


class InvalidCode(BadRequest):
    code = "invalid_code"
    default_message = "The code is wrong, expired or already used."


class Unauthorized(FreshRootsError):
    status_code = 401
    code = "unauthorized"
    default_message = "Sign in first."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class InvalidToken(Unauthorized):
    code = "invalid_token"
    default_message = "The token is invalid or expired."


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    default_message = "Wrong email or password."


class Forbidden(FreshRootsError):
    status_code = 403
    code = "forbidden"
    default_message = "You are not allowed to do that."


class NotFound(FreshRootsError):
    status_code = 404
    code = "not_found"
    default_message = "Not found."


class Conflict(FreshRootsError):
    status_code = 409
    code = "conflict"
    default_message = "The request conflicts with the current state."


class EmailTaken(Conflict):
    code = "email_taken"
    default_message = "An account with that email already exists."


class IllegalTransition(Conflict):
    code = "illegal_transition"


class NotConfigured(FreshRootsError):
    """An integration whose settings are absent is off: for clients, the feature is not
    there (404), which is not a server fault to retry or alert on."""

    status_code = 404
    code = "integration_off"
    default_message = "This feature is not configured on this server."


class PayloadTooLarge(FreshRootsError):
    status_code = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class UnsupportedMediaType(FreshRootsError):
    status_code = 415
    code = "unsupported_media_type"
    default_message = "Send JSON (optionally with Content-Encoding: gzip)."


class RateLimited(FreshRootsError):
    status_code = 429
    code = "rate_limited"
    default_message = "Too many requests; slow down."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(message, headers={"Retry-After": str(self.retry_after)})


class ServiceUnavailable(FreshRootsError):
    status_code = 503
    code = "service_unavailable"
    default_message = "A service we depend on is unavailable; nothing was changed. Retry later."

    def __init__(self, message: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class MutationRejected(FreshRootsError):
    """A final business outcome: recorded, reported with ok=false, never retried."""

    status_code = 409

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)
        if code == "invalid_args":
            self.status_code = 422  # type: ignore[misc]
        elif code == "not_allowed":
            self.status_code = 403  # type: ignore[misc]
        elif code == "not_found":
            self.status_code = 404  # type: ignore[misc]
