"""Public listings: search with filters and keyset paging, one listing; cached.

Cached pages are keyed by a *generation* that changes after every committed listing change,
so a cached page is never served once a listing changed: requests after the change look up
a new key. (A request that read the old generation before the commit may still store its
page, but under the old key that nobody asks for any more.)
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from integrations.media.cloudinary_media import is_valid_public_id, wants_low_bandwidth
from storage.db import now_ms
from storage.listings import ListingQuery, get_listing, search_listings
from storage.models import SearchLog
from storage.pull import log_head
from storage.scopes import Principal
from sync_server import reading
from sync_server.http import (
    doc,
    optional_principal,
    path_param,
    query_bool,
    query_int,
)
from sync_server.services import Services, services_of

T = TypeVar("T")

GENERATION_KEY = "listings:generation"
GENERATION_TTL = 86_400


async def listings_generation(services: Services) -> str:
    value = await services.cache.get(GENERATION_KEY)
    if value is None:
        return await bump_listings_generation(services)
    return value.decode()


async def bump_listings_generation(services: Services) -> str:
    # A random token, not a counter: a counter that expired and restarted could meet
    # an old page cached under the same number.
    generation = secrets.token_hex(6)
    await services.cache.set(GENERATION_KEY, generation.encode(), GENERATION_TTL)
    return generation


def _viewer_class(request: Request, principal: Principal | None) -> str:
    """What a cached page depends on besides the query: role, and image quality wanted."""
    role = "admin" if principal is not None and principal.is_admin else "public"
    return f"{role}:{'eco' if wants_low_bandwidth(request.headers) else 'full'}"


def with_image_urls(services: Services, request: Request, item: dict[str, Any]) -> dict[str, Any]:
    """Responsive Cloudinary URLs next to the public ids (smaller ones for Save-Data)."""
    if services.media is None:
        return item
    low = wants_low_bandwidth(request.headers)
    urls = [
        services.media.image_urls(public_id, low_bandwidth=low)
        for public_id in item["images"]
        if is_valid_public_id(public_id)
    ]
    return {**item, "image_urls": urls}


async def _cached(services: Services, key: str) -> bytes | None:
    if services.settings.listings_cache_seconds <= 0:
        return None
    try:
        return await services.cache.get(key)
    except Exception:  # the cache is an optimisation: when it is down, serve from the database
        return None


async def _store(services: Services, key: str, body: bytes) -> None:
    if services.settings.listings_cache_seconds <= 0:
        return
    try:
        await services.cache.set(key, body, services.settings.listings_cache_seconds)
    except Exception:
        return


# listings.price is a 32-bit integer: a bound past it means "no bound", not a database error.
PRICE_CEILING = 2**31 - 1


@doc(
    "Search and filter listings (keyset paged)",
    auth="optional",
    tag="listings",
    query=(
        ("q", "Words to search titles and descriptions for"),
        ("category", "Only this category"),
        ("min_price", "Cents"),
        ("max_price", "Cents"),
        ("in_stock", "true: only listings with stock"),
        ("cursor", "next_cursor of the previous page"),
        ("limit", "Listings per page"),
    ),
    headers=(("Save-Data", "on: smaller image URLs"),),
    response="ListingPage",
)
async def list_listings(request: Request) -> Response:
    services = services_of(request)
    principal = await optional_principal(request)
    query = ListingQuery(
        q=(request.query_params.get("q") or None),
        category=request.query_params.get("category") or None,
        min_price=query_int(request, "min_price", minimum=0, maximum=PRICE_CEILING),
        max_price=query_int(request, "max_price", minimum=0, maximum=PRICE_CEILING),
        in_stock=query_bool(request, "in_stock"),
        cursor=request.query_params.get("cursor") or None,
        limit=query_int(request, "limit", 20, minimum=1, maximum=100) or 20,
    )
    if query.q is not None and len(query.q) > 200:
        query = ListingQuery(**{**query.__dict__, "q": query.q[:200]})
    fingerprint = hashlib.sha256(orjson.dumps(query.__dict__)).hexdigest()[:24]
    viewer = _viewer_class(request, principal)
    key = f"listings:{await listings_generation(services)}:{viewer}:{fingerprint}"
    body = await _cached(services, key)
    if body is None:

        async def search(conn: AsyncConnection) -> tuple[list[dict[str, Any]], str | None]:
            return await search_listings(conn, services.db.dialect, principal, query)

        (items, next_cursor), current = await _read_catalogue(services, principal, search)
        items = [with_image_urls(services, request, item) for item in items]
        body = orjson.dumps({"items": items, "next_cursor": next_cursor})
        if current:
            await _store(services, key, body)
    if query.q and query.cursor is None:
        # Every search counts (cached or not): "searches with no results" feed the catalogue.
        results = len(orjson.loads(body)["items"])
        services.track(
            principal.user_id if principal else "anonymous",
            "listing_search",
            query=query.q[:200],
            results_count=results,
        )
        async with services.db.write() as conn:
            await conn.execute(
                insert(SearchLog).values(query=query.q[:200], results=results, created_at=now_ms())
            )
    return Response(body, media_type="application/json")


@doc(
    "One listing",
    auth="optional",
    tag="listings",
    headers=(("Save-Data", "on: smaller image URLs"),),
    response="Listing",
)
async def one_listing(request: Request) -> Response:
    services = services_of(request)
    principal = await optional_principal(request)
    listing_id = path_param(request, "listing_id")
    viewer = _viewer_class(request, principal)
    key = f"listing:{await listings_generation(services)}:{viewer}:{listing_id}"
    body = await _cached(services, key)
    if body is None:

        async def read_listing(conn: AsyncConnection) -> dict[str, Any]:
            return await get_listing(conn, principal, listing_id)

        listing, current = await _read_catalogue(services, principal, read_listing)
        body = orjson.dumps(with_image_urls(services, request, listing))
        if current:
            await _store(services, key, body)
    services.track(
        principal.user_id if principal else "anonymous", "listing_viewed", listing_id=listing_id
    )
    return Response(body, media_type="application/json")


async def _read_catalogue(
    services: Services,
    principal: Principal | None,
    read: Callable[[AsyncConnection], Awaitable[T]],
) -> tuple[T, bool]:
    """`read(conn)` for a listing page, and whether the page may be cached as current.

    Listing pages are cached under a generation that every listing change renews, after
    announcing its position. A buyer's or visitor's read may come from any replica in
    rotation (a listing as it was a moment ago, like a phone's copy), but is cached only when
    it holds the catalogue's newest announced change: else a replica's older copy would be
    kept as current under the new generation for LISTINGS_CACHE_SECONDS. An admin's read
    must include that change (their own edit, which they look at next)."""
    position = await reading.catalogue_position(services, principal)
    is_admin = principal is not None and principal.is_admin

    async def read_and_judge(conn: AsyncConnection) -> tuple[T, bool]:
        result = await read(conn)
        if reading.on_primary(services, conn):
            return result, True
        return result, position is not None and await log_head(conn) >= position

    return await reading.read(
        services, read_and_judge, writer=None, after=position if is_admin else 0
    )


routes = [
    Route("/api/listings", list_listings, methods=["GET"]),
    Route("/api/listings/{listing_id}", one_listing, methods=["GET"]),
]

__all__ = ["bump_listings_generation", "routes"]
