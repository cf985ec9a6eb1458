"""`GET /openapi.json`, generated from the routes and their `@doc` metadata, and `/docs`, the
page that renders it for people (the vendored Swagger UI in `api_docs/`, see its README.md).

Request bodies are described from the same msgspec types the handlers validate with, so the
document cannot drift from what the server accepts. Answers are built as dicts by storage,
so their shapes are described here, as documentation types (`SCHEMAS`), and
tests/test_api_docs.py checks real answers of a running server against them. Errors come from
the one error tree (`protocol.errors`): every code it defines is listed in the shared
`ErrorEnvelope` schema, and each status an operation may answer is a shared response.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import anyio
import brotli
import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from protocol.errors import FreshRootsError, MutationRejected
from sync_server.http import Doc

API_DOCS = Path(__file__).parent / "api_docs"
# /docs runs only its own files: Swagger UI needs no inline script or style and no eval, and
# fetches nothing but /openapi.json and, from "Try it out", this server's own API. (Redoc
# would need style-src 'unsafe-inline': see api_docs/README.md.)
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

# -- answers: documentation types ----------------------------------------------------------

Millis = Annotated[int, Meta(description="Milliseconds since the Unix epoch, UTC")]
Cents = Annotated[int, Meta(ge=0, description="Integer cents of MUR")]
Cursor = Annotated[str, Meta(description="Opaque; send it back as it is")]
R = TypeVar("R")


class User(msgspec.Struct):
    """An account (never its password)."""

    id: str
    email: str
    name: str
    phone: str | None
    role: Literal["user", "admin"]
    email_verified: bool
    created_at: Millis


class Session(msgspec.Struct):
    """A signed-in session: send `access_token` as `Authorization: Bearer …`; before it
    expires, exchange `refresh_token` at /api/auth/refresh for a new pair."""

    user: User
    access_token: str
    refresh_token: str
    expires_in: Annotated[int, Meta(description="Seconds the access token is valid for")]


class DashboardSession(msgspec.Struct):
    """The dashboard's session: the refresh token stays in an HttpOnly cookie; echo
    `csrf_token` in `X-CSRF-Token` to refresh or sign out."""

    access_token: str
    expires_in: int
    user: User
    csrf_token: str


class Listing(msgspec.Struct):
    """A listing. `unit` is one of kg, g, lb, piece, bunch, dozen, pack, litre, bag, tray."""

    id: str
    title: str
    description: str
    price: Cents
    unit: str
    stock: Annotated[int, Meta(ge=0, description="In the listing's unit")]
    category: str
    images: Annotated[list[str], Meta(description="Cloudinary public ids")]
    status: Literal["draft", "published", "archived"]
    updated_at: Millis
    image_urls: Annotated[
        list[dict[str, str]],
        Meta(
            description="REST listing routes, when image hosting is configured: "
            "{thumbnail, medium, large} URLs per image (smaller ones for Save-Data)"
        ),
    ] = []


class OrderItem(msgspec.Struct):
    id: str
    order_id: str
    listing_id: str
    quantity: int
    price: Annotated[int, Meta(ge=0, description="Unit price in cents when ordered")]


class Order(msgspec.Struct):
    """An order. Statuses: pending → approved → paid → completed, pending → rejected,
    pending | approved → cancelled."""

    id: str
    user_id: str
    status: Literal["pending", "approved", "rejected", "paid", "completed", "cancelled"]
    payment_method: Literal["juice", "myt_money", "card", "cod"]
    payment_status: str
    total: Cents
    note: str | None
    reject_reason: str | None
    created_at: Millis
    updated_at: Millis


class OrderWithItems(Order):
    items: list[OrderItem]


class InterestExpression(msgspec.Struct):
    id: str
    user_id: str
    listing_id: str
    message: str | None
    created_at: Millis


class InterestCreated(msgspec.Struct):
    id: str
    listing_id: str
    user_id: str
    message: str | None


class Notification(msgspec.Struct):
    id: str
    type: str
    title: str
    message: str
    read: bool
    data: Annotated[dict[str, Any], Meta(description="Carries the order_id it is about")]
    created_at: Millis


class Payment(msgspec.Struct):
    id: str
    order_id: str
    method: str
    status: Literal["pending", "paid", "failed", "flagged"]
    amount: Cents
    currency: str
    transaction_id: str | None
    created_at: Millis
    updated_at: Millis


class AdminAction(msgspec.Struct):
    """One row of the audit log."""

    id: str
    admin_id: str
    action: str
    target_table: str
    target_id: str
    notes: str | None
    created_at: Millis


class Page(msgspec.Struct, Generic[R]):
    """A keyset page: pass `next_cursor` as `cursor` for the next one (null: the last)."""

    items: list[R]
    next_cursor: str | None


class RowPatch(msgspec.Struct):
    """The fields of a row that changed since the client's cursor, and its id."""

    id: str


class TableChanges(msgspec.Struct, Generic[R]):
    """One table's changes: `put` full rows (an upsert), `patch` changed fields of rows the
    client holds, `del` ids (ignore one you do not hold). Empty lists are left out."""

    put: list[R] | UnsetType = UNSET
    patch: list[RowPatch] | UnsetType = UNSET
    del_: list[str] | UnsetType = msgspec.field(default=UNSET, name="del")


class Changes(msgspec.Struct):
    """Changes by table; a table with nothing to say is left out."""

    listings: TableChanges[Listing] | UnsetType = UNSET
    orders: TableChanges[Order] | UnsetType = UNSET
    order_items: TableChanges[OrderItem] | UnsetType = UNSET
    interest_expressions: TableChanges[InterestExpression] | UnsetType = UNSET
    notifications: TableChanges[Notification] | UnsetType = UNSET
    payments: TableChanges[Payment] | UnsetType = UNSET
    admin_actions: TableChanges[AdminAction] | UnsetType = UNSET


class PullPage(msgspec.Struct):
    """A page of changes. `more: true`: pull again at once with `cursor`; local state is
    complete only after `more: false`. `reset: true`: replace the local copy with this
    snapshot (the cursor was unknown, expired or another user's)."""

    cursor: Cursor
    more: bool
    reset: bool
    changes: Changes


class MutationError(msgspec.Struct):
    code: Annotated[
        str,
        Meta(
            description="A final business outcome: out_of_stock, listing_unavailable, "
            "invalid_args, not_allowed, not_found, duplicate_id, stale_mutation, "
            "unknown_mutation, …"
        ),
    ]
    message: str


class MutationOutcome(msgspec.Struct):
    """A mutation's outcome, the same however often it is sent: `result` when `ok`, else
    `error` (final: drop the mutation; the next pull corrects the optimistic state)."""

    id: int
    ok: bool
    result: dict[str, Any] | UnsetType = UNSET
    error: MutationError | UnsetType = UNSET


class PushResults(msgspec.Struct):
    results: list[MutationOutcome]


class ListingColumns(msgspec.Struct):
    """The published listings column by column: row i is the i-th value of every array."""

    id: list[str]
    title: list[str]
    description: list[str]
    price: list[int]
    unit: list[str]
    stock: list[int]
    category: list[str]
    images: list[list[str]]
    status: list[str]
    updated_at: list[int]


class CatalogueSnapshot(msgspec.Struct):
    """The catalogue (v1.1), the same document for every device. Start a device from it with
    GET /api/sync/pull?snapshot=<position>."""

    position: Annotated[str, Meta(description="Opaque, tamper-evident, bound to no user")]
    listings: ListingColumns


class WatermelonTable(msgspec.Struct):
    """Raw WatermelonDB records; array and object fields (listing `images`, notification
    `data`) travel as JSON strings."""

    created: list[dict[str, Any]]
    updated: list[dict[str, Any]]
    deleted: list[str]


class WatermelonPull(msgspec.Struct):
    changes: dict[str, WatermelonTable]
    timestamp: Annotated[
        int, Meta(ge=1, le=2**53, description="A position, not a clock: the next last_pulled_at")
    ]
    strategy: Literal["replacement"] | UnsetType = msgspec.field(
        default=UNSET, name="experimentalStrategy"
    )


class WatermelonPushed(msgspec.Struct):
    """`{}`, or the ids of records the caller may not write, by table."""

    rejected: dict[str, list[str]] | UnsetType = msgspec.field(
        default=UNSET, name="experimentalRejectedIds"
    )


class Empty(msgspec.Struct):
    """An empty object."""


class DataExport(msgspec.Struct):
    """Everything held about the signed-in user."""

    user: User
    orders: list[Order]
    order_items: list[OrderItem]
    payments: list[Payment]
    interest_expressions: list[InterestExpression]
    notifications: list[Notification]
    devices: list[dict[str, Any]]


class LiveCursor(msgspec.Struct):
    cursor: Cursor


class MediaSignature(msgspec.Struct):
    """POST the file with `params` to `upload_url` (Cloudinary), straight from the browser."""

    upload_url: str
    params: dict[str, Any]


class PaymentStarted(msgspec.Struct):
    """Where the buyer pays: a link, a QR code, or the gateway's payment zone to embed."""

    payment_id: str
    payment_url: str | None
    qr_code: str | None
    payment_zone_html: str | None


class DayFigures(msgspec.Struct):
    day: Annotated[str, Meta(description="YYYY-MM-DD, Mauritius time")]
    orders: int
    revenue: Cents


class Conversion(msgspec.Struct):
    listing_id: str
    title: str
    interested: int
    purchased: int
    rate: float


class TopListing(msgspec.Struct):
    listing_id: str
    title: str
    quantity: int
    revenue: Cents


class Analytics(msgspec.Struct):
    since: Millis = msgspec.field(name="from")
    until: Millis = msgspec.field(name="to")
    orders_per_day: list[DayFigures]
    approval_rate: float | None
    mean_time_to_approve_seconds: float | None
    interest_conversion: list[Conversion]
    top_listings: list[TopListing]
    searches_without_results: list[dict[str, Any]]
    active_devices: int
    admin_actions: int


class ImportReport(msgspec.Struct):
    posts: int
    created: int
    updated_drafts: int
    suggestions: int
    already_imported: int
    without_offers: int
    pictures_stored: int
    pictures_failed: int


class Health(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct):
    status: Literal["ok", "unavailable"]
    checks: Annotated[dict[str, str], Meta(description='By dependency: "ok" or "down: …"')]


class WatermelonTableChanges(msgspec.Struct, forbid_unknown_fields=True):
    """Records pushed for one table; `deleted` holds ids."""

    created: list[dict[str, Any]] = []
    updated: list[dict[str, Any]] = []
    deleted: list[str] = []


class WatermelonChanges(msgspec.Struct, forbid_unknown_fields=True):
    """WatermelonDB's `changes` object, by table (another table is refused, 400)."""

    listings: WatermelonTableChanges | UnsetType = UNSET
    orders: WatermelonTableChanges | UnsetType = UNSET
    order_items: WatermelonTableChanges | UnsetType = UNSET
    interest_expressions: WatermelonTableChanges | UnsetType = UNSET
    notifications: WatermelonTableChanges | UnsetType = UNSET
    payments: WatermelonTableChanges | UnsetType = UNSET
    admin_actions: WatermelonTableChanges | UnsetType = UNSET


class FacebookEvent(msgspec.Struct):
    """Facebook's webhook payload (its shape; the server reads the feed changes in it)."""

    object: str
    entry: list[dict[str, Any]]


class ImnForm(msgspec.Struct):
    """The gateway's form post."""

    crypted_callback: Annotated[
        str,
        Meta(
            min_length=1,
            pattern="^[!-~]+$",
            description="The gateway's encrypted notification: opaque, printable ASCII",
        ),
    ]


# Schemas an `@doc(body=…, response=…)` may name (as well as msgspec types); "text" is a
# plain string, for answers in another media type.
SCHEMAS: dict[str, Any] = {
    kind.__name__: kind
    for kind in (
        User,
        Session,
        DashboardSession,
        Listing,
        OrderWithItems,
        InterestCreated,
        PullPage,
        PushResults,
        CatalogueSnapshot,
        WatermelonPull,
        WatermelonPushed,
        Empty,
        DataExport,
        LiveCursor,
        MediaSignature,
        PaymentStarted,
        Analytics,
        ImportReport,
        Health,
        Readiness,
        WatermelonChanges,
        FacebookEvent,
        ImnForm,
    )
} | {
    "ListingPage": Page[Listing],
    "OrderPage": Page[Order],
    "NotificationPage": Page[Notification],
    "AuditPage": Page[AdminAction],
    "text": str,
}

# -- errors --------------------------------------------------------------------------------

# Statuses an operation may answer with the envelope, as shared responses.
ERROR_RESPONSES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationFailed",
    429: "RateLimited",
    502: "BadGateway",
    503: "ServiceUnavailable",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }
}
ENVELOPE_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}


def _error_classes(root: type[FreshRootsError]) -> Iterator[type[FreshRootsError]]:
    yield root
    for child in root.__subclasses__():
        yield from _error_classes(child)


def error_codes() -> dict[str, tuple[int, str]]:
    """Every code of the error tree (`protocol.errors` and the subclasses the server's
    modules add): code → (HTTP status, default message). MutationRejected carries its
    code per instance, so its codes are described with push's results instead."""
    codes: dict[str, tuple[int, str]] = {}
    for kind in _error_classes(FreshRootsError):
        if not issubclass(kind, MutationRejected):
            codes.setdefault(kind.code, (kind.status_code, kind.default_message))
    return dict(sorted(codes.items(), key=lambda item: (item[1][0], item[0])))


def error_envelope(codes: dict[str, tuple[int, str]]) -> dict[str, Any]:
    table = "\n".join(
        f"| `{code}` | {status} | {message} |" for code, (status, message) in codes.items()
    )
    return {
        "title": "ErrorEnvelope",
        "description": (
            "Every error: the HTTP status plus this envelope. Decide by the status first; a "
            "route may answer a more precise code under the same status (`invalid_parameter`, "
            "`invalid_changes`, `csrf_failed`, …), so treat an unknown code as its status's "
            "generic one.\n\n| code | status | meaning |\n|---|---|---|\n" + table
        ),
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {
                        "type": "string",
                        "pattern": "^[a-z][a-z0-9_]*$",
                        "description": "snake_case; the codes of the error tree are listed "
                        "in examples and in the table above",
                        "examples": list(codes),
                    },
                    "message": {"type": "string", "description": "For people"},
                    "field": {
                        "type": "string",
                        "description": "validation_failed: the offending field, when known",
                    },
                },
            }
        },
    }


def _shared_error_responses(codes: dict[str, tuple[int, str]]) -> dict[str, Any]:
    def response(description: str, statuses: range | tuple[int, ...]) -> dict[str, Any]:
        named = [f"`{code}`" for code, (status, _) in codes.items() if status in statuses]
        text = f"{description} Codes: {', '.join(named)}." if named else description
        return {"description": text, "content": {"application/json": {"schema": ENVELOPE_REF}}}

    responses = {
        name: response(_ERROR_TEXT[status], (status,)) for status, name in ERROR_RESPONSES.items()
    }
    responses["Unauthorized"]["headers"] = {
        "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
    }
    responses["RateLimited"]["headers"] = RETRY_AFTER
    responses["ServiceUnavailable"]["headers"] = RETRY_AFTER
    responses["ClientError"] = response("Any other client error.", range(400, 500))
    responses["ServerError"] = response(
        "A bug (500 `internal_error`, logged with its traceback), or overload or a dependency "
        "down (503 with Retry-After: nothing was changed, retry later).",
        range(500, 600),
    )
    return responses


_ERROR_TEXT = {
    400: "The request is not valid.",
    401: "A missing, malformed, invalid or expired token (or wrong credentials).",
    403: "Signed in, but not allowed.",
    404: "No such resource, or the feature is off on this server (`integration_off`).",
    409: "Conflicts with the current state (a business rejection of the request).",
    413: "The body (inflated, if sent gzipped) is larger than the server accepts.",
    415: "Send JSON, optionally with Content-Encoding: gzip.",
    422: "The body or a parameter breaks a rule; `field` names it when known.",
    429: "Too many requests: wait Retry-After seconds.",
    502: "The payment gateway refused the request; nothing was charged.",
    503: "Overloaded, or a dependency is down; nothing was changed: retry after Retry-After.",
}

# -- the document --------------------------------------------------------------------------

DESCRIPTION = """\
Offline-first sync for the Fresh Roots marketplace: delta pull and push, the catalogue
snapshot (v1.1), WatermelonDB's sync protocol, and the REST routes of the app and dashboard.

- **Auth**: `Authorization: Bearer <access token>` from /api/auth/login or /register (roles
  `user`, `admin`); operations with a lock need it. Authentication and role checks come
  before body validation.
- **Errors**: the HTTP status plus `{"error": {"code", "message"}}` (see `ErrorEnvelope`).
  Bad input is a 4xx with a code, never a 500; 429 and 503 come with `Retry-After`.
- **Wire**: JSON; ids are strings (client-made ones match `[A-Za-z0-9_-]{8,64}`), money is
  integer cents of MUR, times are integer milliseconds since the epoch (UTC). Answers honour
  `Accept-Encoding` (br, gzip); request bodies may be sent with `Content-Encoding: gzip`.
- **Live**: the WebSocket `GET /api/sync/ws` (hello with a token and cursor, then `changes`
  frames shaped like a pull) is not an HTTP operation, so it is not listed here.
"""

TAGS = [
    {"name": "sync", "description": "Delta sync, the catalogue snapshot, WatermelonDB"},
    {"name": "listings", "description": "The public catalogue"},
    {"name": "orders", "description": "Purchase requests, orders, payments, notifications"},
    {"name": "auth", "description": "Accounts, sessions, one-time codes"},
    {"name": "me", "description": "The signed-in user's data"},
    {"name": "admin", "description": "The dashboard's routes (role admin)"},
    {"name": "webhooks", "description": "Called by Facebook and the payment gateway"},
    {"name": "health", "description": "Probes and metrics"},
]

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The access token from /api/auth/login, /register or /refresh",
    },
    "dashboardSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "fr_admin_refresh",
        "description": "The dashboard's HttpOnly refresh cookie, set by POST /admin/session",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "METRICS_TOKEN, when the server sets it (then required)",
    },
    "csrfToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-Token",
        "description": "The csrf_token from POST /admin/session (also in cookie fr_admin_csrf)",
    },
}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "user": [{"bearer": []}],
    "admin": [{"bearer": []}],
    "optional": [{}, {"bearer": []}],
    "dashboard": [{"dashboardSession": [], "csrfToken": []}],
    "metrics": [{}, {"metricsToken": []}],
}


def build_openapi(routes: Sequence[BaseRoute], version: str) -> dict[str, Any]:
    documented = [
        (route, meta)
        for route in routes
        if isinstance(route, Route)
        and (meta := getattr(route.endpoint, "openapi_doc", None)) is not None
    ]
    types = _types(meta for _, meta in documented)
    schemas_of, components = (
        msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
        if types
        else ((), {})
    )
    schema_of = dict(zip(map(_key, types), schemas_of, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route, meta in documented:
        for method in sorted((route.methods or set()) - {"HEAD"}):
            operation = _operation(route, meta, method, schema_of)
            paths.setdefault(route.path, {})[method.lower()] = operation
    codes = error_codes()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fresh Roots sync API",
            "version": version,
            "description": DESCRIPTION,
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": {"ErrorEnvelope": error_envelope(codes), **components},
            "responses": _shared_error_responses(codes),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def _response_type(response: Any) -> Any:
    if isinstance(response, str):
        if response not in SCHEMAS:
            raise KeyError(f"@doc names {response!r}, which is not in sync_server.openapi.SCHEMAS")
        return SCHEMAS[response]
    return response


def _types(metas: Iterator[Doc]) -> list[Any]:
    """The msgspec types the document describes (bodies and answers), each once."""
    found: dict[str, Any] = {}
    for meta in metas:
        named = [meta.body, meta.response, *(schema for _, _, schema in meta.other)]
        for kind in named:
            if kind is not None:
                resolved = _response_type(kind)
                found.setdefault(_key(resolved), resolved)
    return list(found.values())


def _key(kind: Any) -> str:
    return repr(kind)


def _content(kind: Any, media_type: str, schema_of: dict[str, Any]) -> dict[str, Any]:
    return {media_type: {"schema": schema_of[_key(_response_type(kind))]}}


def _error_statuses(route: Route, meta: Doc) -> list[int]:
    statuses = set(meta.errors)
    if meta.auth is not None:
        statuses.add(401)
    if meta.auth in ("user", "admin"):
        statuses.add(429)  # per-user request rate
    if meta.auth in ("admin", "dashboard"):
        statuses.add(403)
    if meta.body is not None:
        statuses.add(413)  # every body is capped (inflated too)
        if meta.body_media_type == "application/json":
            statuses.update((400, 415, 422))  # not JSON; not sent as JSON; breaks a rule
    if meta.query:
        statuses.add(422)
    if "{" in route.path:
        statuses.update((400, 404))  # a malformed id; no such resource
    return sorted(statuses)


def _parameters(route: Route, meta: Doc) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": "An id (at most 64 characters)",
            "schema": {"type": "string"},
        }
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    for entry in meta.query:
        name, description = (entry, "") if isinstance(entry, str) else entry
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    parameters += [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": description,
            "schema": {"type": "string"},
        }
        for name, description in meta.headers
    ]
    return parameters


def operation_id(method: str, path: str) -> str:
    """camelCase, as code generators name functions: GET /api/orders/{order_id} is
    getApiOrdersOrderId. No underscore: Swagger UI's deep links (/docs/#/tag/operationId)
    read one as an escaped space."""
    words = re.findall(r"[a-z0-9]+", path.lower())
    return method.lower() + "".join(word.capitalize() for word in words)


def _operation(route: Route, meta: Doc, method: str, schema_of: dict[str, Any]) -> dict[str, Any]:
    success: dict[str, Any] = {"description": _STATUS_TEXT.get(meta.status, "OK")}
    if meta.response is not None:
        success["content"] = _content(meta.response, meta.media_type, schema_of)
    responses: dict[str, Any] = {str(meta.status): success}
    for status, text, schema in meta.other:
        other: dict[str, Any] = {"description": text}
        if schema is not None:
            other["content"] = _content(schema, "application/json", schema_of)
        responses[str(status)] = other
    for status in _error_statuses(route, meta):
        responses.setdefault(
            str(status), {"$ref": f"#/components/responses/{ERROR_RESPONSES[status]}"}
        )
    responses["4XX"] = {"$ref": "#/components/responses/ClientError"}
    responses["5XX"] = {"$ref": "#/components/responses/ServerError"}
    operation: dict[str, Any] = {
        "summary": meta.summary,
        "tags": [meta.tag],
        "operationId": operation_id(method, route.path),
        "responses": responses,
    }
    description = [meta.description] if meta.description else []
    if meta.auth in ("user", "admin"):
        description.append(f"**Auth**: a Bearer access token, role `{meta.auth}`.")
    elif meta.auth == "optional":
        description.append("**Auth**: none; with a Bearer token, answers for that user's role.")
    elif meta.auth == "dashboard":
        description.append("**Auth**: the dashboard's session cookie and X-CSRF-Token.")
    elif meta.auth == "metrics":
        description.append("**Auth**: METRICS_TOKEN as a Bearer token, when it is set.")
    else:
        description.append("**Auth**: none.")
    operation["description"] = "\n\n".join(description)
    parameters = _parameters(route, meta)
    if parameters:
        operation["parameters"] = parameters
    if meta.auth is not None:
        operation["security"] = SECURITY[meta.auth]
    if meta.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": _content(meta.body, meta.body_media_type, schema_of),
        }
    return operation


_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "Done; no body",
}

# -- /docs ---------------------------------------------------------------------------------


class DocsFiles:
    """The page's files (a flat folder, index.html at /docs/), each answered from memory under
    DOCS_CSP and compressed once per encoding, in a worker thread: Swagger UI's 2 MB are
    0.4 MB on the wire, and no request compresses on the event loop (the compression
    middleware leaves streamed files alone). An install without the folder answers 404."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.names = {path.name for path in directory.glob("*") if path.is_file()}
        self.answers: dict[tuple[str, str], tuple[bytes, str]] = {}  # (name, encoding)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(405)
        name = scope["path"].removeprefix(scope.get("root_path", "")).lstrip("/") or "index.html"
        if name not in self.names:
            raise HTTPException(404)
        accepted = Headers(scope=scope).get("accept-encoding", "").lower()
        encoding = "br" if "br" in accepted else "gzip" if "gzip" in accepted else "identity"
        body, etag = self.answers.get((name, encoding)) or await self._load(name, encoding)
        headers = {
            "etag": etag,
            "cache-control": "no-cache",  # names carry no version: revalidate (a 304)
            "vary": "Accept-Encoding",
            "content-security-policy": DOCS_CSP,
        }
        if Headers(scope=scope).get("if-none-match") == etag:
            await Response(status_code=304, headers=headers)(scope, receive, send)
            return
        if encoding != "identity":
            headers["content-encoding"] = encoding
        media_type = mimetypes.guess_type(name)[0] or "text/plain"
        await Response(body, headers=headers, media_type=media_type)(scope, receive, send)

    async def _load(self, name: str, encoding: str) -> tuple[bytes, str]:
        def work() -> tuple[bytes, str]:
            raw = (self.directory / name).read_bytes()
            tag = hashlib.sha256(raw).hexdigest()[:20]
            if encoding == "br":
                raw = brotli.compress(raw, quality=9)
            elif encoding == "gzip":
                raw = gzip.compress(raw, compresslevel=9, mtime=0)
            return raw, f'"{tag}-{encoding}"'

        answer = await anyio.to_thread.run_sync(work)
        self.answers[name, encoding] = answer
        return answer


def docs_app() -> ASGIApp:
    return DocsFiles(API_DOCS)
