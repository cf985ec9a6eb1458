"""Delta sync over HTTP: pull (changesets since a cursor) and push (queued mutations)."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.errors import BadRequest
from storage.push import Mutation, check_batch, push
from sync_server.http import authenticate, doc, json_response, query_int, read_json
from sync_server.services import services_of
from sync_server.syncing import (
    decode_cursor,
    nothing_new,
    page_body,
    read_page,
    start_from_catalogue,
)

# Product analytics events (PostHog) for mutations that succeed.
TRACKED = {"purchase_request": "purchase_initiated", "express_interest": "interest_expressed"}


class PushBody(msgspec.Struct, forbid_unknown_fields=True):
    client_id: str
    mutations: list[Mutation]


@doc(
    "Pull changes since a cursor (no cursor: initial snapshot; snapshot=<position>: a "
    "first sync for a device holding the catalogue snapshot)",
    auth="user",
    tag="sync",
    query=(
        ("cursor", "From the previous answer; absent: a first sync of the caller's scope"),
        ("limit", "Rows (put + patch + del entries) per page; the server caps it"),
        (
            "snapshot",
            "Instead of a cursor: the position of the catalogue snapshot the device holds",
        ),
    ),
    headers=(("If-None-Match", "The cursor in quotes: 304 when nothing is new"),),
    response="PullPage",
    description="Pull again at once while `more` is true. An unknown, tampered, another "
    "user's or expired cursor (or snapshot position) answers a full snapshot with "
    "`reset: true`; a cursor that is not even well-formed is 400 `malformed_cursor`. "
    "The answer's ETag is its cursor.",
    other=((304, "Nothing new since the cursor in If-None-Match; no body", None),),
    errors=(400,),
)
async def pull(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    settings = services.settings
    asked = query_int(request, "limit", None, minimum=1, maximum=settings.pull_max_limit)
    limit = asked or settings.pull_default_limit
    # A first sync with no limit asked for: pages as large as PULL_PAGE_BYTES allows.
    first_sync_limit = asked or settings.pull_max_limit
    token = request.query_params.get("cursor")
    catalogue = request.query_params.get("snapshot")
    if catalogue is not None:
        if token:
            raise BadRequest(
                "Give either cursor or snapshot: a snapshot position starts a device, a "
                "cursor continues one.",
                code="invalid_parameter",
            )
        state, reset = start_from_catalogue(services, principal, catalogue)
    else:
        state, reset = decode_cursor(services, principal, token)
    if_none_match = request.headers.get("if-none-match")
    etag_of_request = f'"{token}"' if token else None

    if not reset and await nothing_new(services, principal, state):
        if if_none_match is not None and if_none_match == etag_of_request:
            return Response(status_code=304, headers={"etag": if_none_match})
        return json_response(
            {"cursor": token, "more": False, "reset": False, "changes": {}},
            headers={"etag": etag_of_request or ""},
        )

    page, shared = await read_page(services, principal, state, reset, limit, first_sync_limit)
    if shared is not None and page.changes:
        cursor = services.cursors.encode(shared.next_state, principal.user_id)
        content, encoding = shared.body(cursor, request.headers.get("accept-encoding", ""))
        headers = {"etag": f'"{cursor}"', "vary": "Accept-Encoding"}
        if encoding is not None:
            headers["content-encoding"] = encoding
        return Response(content, headers=headers, media_type="application/json")
    body = page_body(services, principal, page)
    etag = f'"{body["cursor"]}"'
    if (
        not page.changes
        and not page.more
        and not page.reset
        and if_none_match == etag
        and etag == etag_of_request
    ):
        return Response(status_code=304, headers={"etag": etag})
    return json_response(body, headers={"etag": etag})


@doc(
    "Push queued mutations; each is applied at most once, ever",
    auth="user",
    body=PushBody,
    tag="sync",
    response="PushResults",
    description="Mutation ids strictly increase per `client_id`: a batch sent again (even "
    "while the first send is in flight) gets the original outcomes, never a second "
    "application. A `client_id` belongs to the first user who uses it (another: 403).",
    errors=(403,),
)
async def push_route(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    body = await read_json(request, PushBody)
    check_batch(body.client_id, body.mutations)
    if not body.mutations:
        return json_response({"results": []})
    results = await push(services.changelog, principal, body.client_id, body.mutations)
    names = {mutation.id: mutation.name for mutation in body.mutations}
    for result in results:
        event = TRACKED.get(names.get(result["id"], ""))
        if event is not None and result["ok"]:
            services.track(principal.user_id, event, **result.get("result", {}))
    return json_response({"results": results})


routes = [
    Route("/api/sync/pull", pull, methods=["GET"]),
    Route("/api/sync/push", push_route, methods=["POST"]),
]
