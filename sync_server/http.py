"""Handler helpers: JSON in and out, query parameters, authentication, route metadata."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from protocol.errors import (
    BadRequest,
    Forbidden,
    MalformedJSON,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from storage.scopes import Principal
from sync_server.services import services_of

T = TypeVar("T")
# The largest integer a query parameter may carry: fits a BIGINT and a JavaScript number.
SAFE_INTEGER = 2**53 - 1
Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(
    data: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(data), status_code=status_code, headers=headers, media_type="application/json"
    )


def no_content() -> Response:
    return Response(status_code=204)


def _field_of(error: msgspec.ValidationError) -> str | None:
    message = str(error)
    marker = "- at `$"
    if marker in message:
        return message.split(marker, 1)[1].rstrip("`").lstrip(".") or None
    return None


def refuse_nul(body: bytes) -> None:
    """PostgreSQL text cannot hold NUL: refuse a JSON text carrying one at the transport
    (HTTP bodies, WebSocket messages) rather than fail at the database on every resend."""
    if b"\\u0000" in body.lower():
        raise ValidationFailed("strings must not contain NUL characters")


async def read_json(request: Request, model: type[T]) -> T:
    """Decode and validate a JSON body: 400 if it is not JSON, 422 naming the bad field."""
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type:
        raise UnsupportedMediaType("Send the body as application/json.")
    body = await request.body()
    if not body:
        raise MalformedJSON("The request body is empty; send a JSON object.")
    refuse_nul(body)
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as error:
        field = _field_of(error)
        raise ValidationFailed(str(error).split(" - at ")[0], field=field) from None
    except msgspec.DecodeError:
        raise MalformedJSON() from None


def query_int(
    request: Request,
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be an integer", field=name) from None
    if not -SAFE_INTEGER <= value <= SAFE_INTEGER:
        # Past what a BIGINT (or a JavaScript number) holds: refused here, not by the database.
        raise ValidationFailed(f"{name} is out of range", field=name)
    if minimum is not None and value < minimum:
        raise ValidationFailed(f"{name} must be at least {minimum}", field=name)
    if maximum is not None and value > maximum:
        value = maximum
    return value


def query_bool(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ValidationFailed(f"{name} must be true or false", field=name)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Use Authorization: Bearer <access token>.")
    return token.strip()


async def authenticate(request: Request) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise Unauthorized()
    services = services_of(request)
    principal = services.access_tokens.verify(token)
    request.state.user_id = principal.user_id
    await services.limiter.per_user(principal.user_id)
    return principal


async def optional_principal(request: Request) -> Principal | None:
    if request.headers.get("authorization") is None:
        return None
    return await authenticate(request)


async def require_admin(request: Request) -> Principal:
    principal = await authenticate(request)
    if not principal.is_admin:
        raise Forbidden("Admins only.")
    return principal


def path_param(request: Request, name: str) -> str:
    value = str(request.path_params[name])
    if not value or len(value) > 64:
        raise BadRequest(f"{name} is not valid", code="invalid_id")
    return value


@dataclass(frozen=True)
class Doc:
    """What /openapi.json (and the /docs page rendering it) says about an endpoint; see
    `sync_server.openapi` for how each field becomes part of the document."""

    summary: str
    # None (public), "user" or "admin" (a Bearer access token; admin: that role), "optional"
    # (public, but a token changes the answer), "dashboard" (the dashboard's session cookie
    # and its X-CSRF-Token header) or "metrics" (METRICS_TOKEN as a bearer, when it is set).
    auth: str | None = None
    body: Any = None  # the msgspec type the handler decodes the body into
    status: int = 200
    # Query parameters: names, or (name, description) pairs.
    query: tuple[str | tuple[str, str], ...] = ()
    tag: str = "api"
    # The success answer's body: a schema name from `sync_server.openapi.SCHEMAS` (or a
    # msgspec type); None for an answer with no body (204). `body` may name one too.
    response: Any = None
    description: str = ""  # Markdown, shown under the summary
    media_type: str = "application/json"  # the success answer's
    body_media_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # request headers it reads: (name, description)
    errors: tuple[int, ...] = ()  # error statuses besides those its auth, body and path imply
    # Other answers, not errors: (status, description, schema name or None for no body).
    other: tuple[tuple[int, str, str | None], ...] = ()


def doc(summary: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    def attach(endpoint: Endpoint) -> Endpoint:
        endpoint.__dict__["openapi_doc"] = Doc(summary, **options)
        return endpoint

    return attach
