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
        # no-transform: a proxy (or our own compression middleware) must not re-encode the
        # identity bytes, or a resumed range would splice two encodings.
        "cache-control": f"public, max-age={max_age}, no-transform",
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
    headers=(("If-None-Match", "The ETag held: 304 when it is still current"),),
    response="CatalogueSnapshot",
    description="One immutable document per catalogue version; each encoding (br, gzip, "
    "identity) is a fixed byte string with its own strong ETag, `Cache-Control: public` and "
    "`Accept-Ranges: bytes`, cacheable by nginx or a CDN.\n\n"
    "A download cut after N bytes resumes with `Range: bytes=N-` and `If-Range: <its ETag>`: "
    "206 with the rest of that same representation (same Content-Encoding; decode the "
    "bytes joined, not the slice), or 200 with the whole current one when that version is no "
    "longer kept. (Range and If-Range are not listed as parameters: a slice of a compressed "
    "representation is not decodable on its own, which generic clients and fuzzers try.)",
    other=(
        (206, "Bytes N.. of the representation the ETag names (same Content-Encoding)", None),
        (304, "Not modified; no body", None),
        (416, "The range starts past the end; no body", None),
    ),
)
async def snapshot(request: Request) -> Response:
    services = services_of(request)
    max_age = services.settings.snapshot_max_age_seconds
    catalogue = services.catalogue
    encoding = negotiate(request.headers.get("accept-encoding", ""))

    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        current = await catalogue.current(encoding)
        tags = parse_etags(if_none_match)
        if tags.star_tag or tags.contains_weak(current.etag.strip('"')):
            return Response(status_code=304, headers=_headers(current, max_age))

    wanted = parse_range_header(request.headers.get("range"))
    if wanted is not None and (wanted.units != "bytes" or len(wanted.ranges) != 1):
        wanted = None  # other units, or several ranges: ignored, the whole document (RFC 9110)
    resumed: Representation | None = None
    if wanted is not None and (if_range := request.headers.get("if-range")) is not None:
        # A strong comparison (RFC 9110 13.1.5): a weak tag or a date never matches, and a
        # tag we no longer keep means "send the whole current one". Looked up before the
        # current version, so a resume never waits for a newer one to be built.
        if not if_range.lstrip().startswith("W/"):
            tag = parse_if_range_header(if_range).etag
            if tag is not None:
                resumed = await catalogue.by_tag(f'"{tag}"')
        if resumed is None:
            wanted = None
    if wanted is None:
        current = await catalogue.current(encoding)
        return Response(
            current.body, headers=_headers(current, max_age), media_type="application/json"
        )
    representation = resumed or await catalogue.current(encoding)
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


routes = [Route(PATH, snapshot, methods=["GET"])]
