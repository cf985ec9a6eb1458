"""`GET /api/sync/snapshot`: the catalogue snapshot (v1.1), cacheable and resumable.

HTTP does the work here: a strong ETag per encoding, `If-None-Match` → 304, `Range` with
`If-Range` → 206 of the version the client started (kept a while after a newer one, see
`sync_server.catalogue`), so a phone that lost its connection after N bytes fetches only
the rest, and nginx or a CDN can serve every phone from one fetch. The header grammar is
werkzeug's (`werkzeug.http`), not ours.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from werkzeug.http import parse_etags, parse_if_range_header, parse_range_header

from sync_server.catalogue import IDENTITY, Representation, negotiate
from sync_server.http import doc
from sync_server.services import services_of

PATH = "/api/sync/snapshot"


def _headers(representation: Representation, max_age: int) -> dict[str, str]:
    headers = {
        "etag": representation.etag,
        "cache-control": f"public, max-age={max_age}",
        "vary": "Accept-Encoding",
        "accept-ranges": "bytes",
    }
    if representation.encoding != IDENTITY:
        headers["content-encoding"] = representation.encoding
    return headers


@doc(
    "The published catalogue, column by column, and its position (v1.1); no authentication. "
    "Honours Accept-Encoding, If-None-Match (304), Range and If-Range (206)",
    tag="sync",
)
async def snapshot(request: Request) -> Response:
    services = services_of(request)
    max_age = services.settings.snapshot_max_age_seconds
    catalogue = services.catalogue
    representation = await catalogue.current(negotiate(request.headers.get("accept-encoding", "")))

    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = parse_etags(if_none_match)
        if tags.star_tag or tags.contains_weak(representation.etag.strip('"')):
            return Response(status_code=304, headers=_headers(representation, max_age))

    wanted = parse_range_header(request.headers.get("range"))
    if wanted is not None and wanted.units == "bytes":
        if_range = request.headers.get("if-range")
        if if_range is not None:
            # A strong comparison (RFC 9110 13.1.5): a weak tag or a date never matches, and
            # a tag we no longer keep means "send the whole current one".
            started = None
            if not if_range.lstrip().startswith("W/"):
                tag = parse_if_range_header(if_range).etag
                if tag is not None:
                    started = await catalogue.by_tag(f'"{tag}"')
            if started is None:
                wanted = None
            else:
                representation = started
    if wanted is not None and len(wanted.ranges) == 1:
        length = len(representation.body)
        span = wanted.range_for_length(length)
        headers = _headers(representation, max_age)
        if span is None:
            headers.pop("content-encoding", None)  # no body to decode
            headers["content-range"] = f"bytes */{length}"
            return Response(status_code=416, headers=headers)
        start, stop = span
        headers["content-range"] = f"bytes {start}-{stop - 1}/{length}"
        return Response(
            representation.body[start:stop],
            status_code=206,
            headers=headers,
            media_type="application/json",
        )
    # No Range, one we do not serve (several ranges, other units), or a stale If-Range.
    return Response(
        representation.body,
        headers=_headers(representation, max_age),
        media_type="application/json",
    )


routes = [Route(PATH, snapshot, methods=["GET"])]
