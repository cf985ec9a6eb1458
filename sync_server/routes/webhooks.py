"""Webhooks from providers. Facebook: the Page feed changed → import the post as drafts."""

from __future__ import annotations

import logging

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from integrations.facebook.graph import (
    FacebookError,
    FacebookTokenExpired,
    FacebookUnavailable,
    GraphClient,
)
from integrations.facebook.parser import parse_feed_page
from integrations.facebook.settings import FacebookSettings
from integrations.facebook.webhook import changed_posts, handshake, verify_signature
from protocol.errors import Forbidden, MalformedJSON, NotConfigured, ServiceUnavailable
from storage.imports import import_posts
from sync_server.http import doc, json_response, read_json, require_admin
from sync_server.services import services_of

log = logging.getLogger("freshroots.webhooks")


def _facebook(request: Request) -> FacebookSettings:
    settings = FacebookSettings.from_environ(services_of(request).settings.environ)
    if not settings.can_receive_webhooks:
        raise NotConfigured(
            "Facebook webhooks are off: set FACEBOOK_APP_SECRET and FACEBOOK_VERIFY_TOKEN."
        )
    return settings


@doc(
    "Facebook webhook subscription handshake",
    tag="webhooks",
    query=(
        ("hub.mode", "subscribe"),
        ("hub.verify_token", "FACEBOOK_VERIFY_TOKEN"),
        ("hub.challenge", "Echoed back when the token matches"),
    ),
    response="text",
    media_type="text/plain",
    errors=(403, 404),
)
async def facebook_verify(request: Request) -> Response:
    settings = _facebook(request)
    challenge = handshake(request.query_params, settings.verify_token or "")
    if challenge is None:
        raise Forbidden("Wrong verify token.", code="verify_token_mismatch")
    return PlainTextResponse(challenge)


@doc(
    "Facebook Page feed changes (signed with the app secret)",
    tag="webhooks",
    body="FacebookEvent",
    headers=(("X-Hub-Signature-256", "sha256=<HMAC of the body with the app secret>"),),
    response="text",
    media_type="text/plain",
    errors=(403, 404),
)
async def facebook_event(request: Request) -> Response:
    settings = _facebook(request)
    raw = await request.body()
    if not verify_signature(
        settings.app_secret or "", raw, request.headers.get("x-hub-signature-256")
    ):
        raise Forbidden("The X-Hub-Signature-256 does not match.", code="bad_signature")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedJSON() from None
    wanted = [post_id for post_id, verb in changed_posts(payload) if verb in ("add", "edited")]
    if not wanted:
        return PlainTextResponse("ok")
    if not settings.can_read:
        log.warning("feed change received but FACEBOOK_PAGE_TOKEN is not set")
        return PlainTextResponse("ok")
    services = services_of(request)
    graph = GraphClient(services.http, settings, max_attempts=3)
    posts = []
    try:
        for post_id in wanted[:25]:
            posts.append(await graph.get_post(post_id))
    except FacebookUnavailable:
        # Facebook retries a webhook that did not get a 200: exactly what we want here.
        raise ServiceUnavailable("The Graph API is unavailable; retry the delivery.") from None
    except FacebookError as error:
        log.warning("facebook import skipped: %s", error)
        return PlainTextResponse("ok")
    report = await import_posts(
        services.changelog,
        parse_feed_page({"data": posts}),
        pictures=services.media_admin,
    )
    log.info(
        "facebook webhook import",
        extra={"created": report.created, "already": report.already_imported},
    )
    return PlainTextResponse("ok")


class ImportBody(msgspec.Struct, forbid_unknown_fields=True):
    limit: int = 100


@doc(
    "Import the farm's Facebook Page feed as draft listings now",
    auth="admin",
    body=ImportBody,
    tag="admin",
    response="ImportReport",
    errors=(404,),
)
async def admin_import(request: Request) -> Response:
    await require_admin(request)
    body = await read_json(request, ImportBody) if await request.body() else ImportBody()
    services = services_of(request)
    settings = FacebookSettings.from_environ(services.settings.environ)
    if not settings.can_read or not settings.page_id:
        raise NotConfigured("Facebook import is off: set FACEBOOK_PAGE_TOKEN and FACEBOOK_PAGE_ID.")
    graph = GraphClient(services.http, settings, max_attempts=3)
    posts = []
    try:
        async for post in graph.iter_feed(settings.page_id):
            posts.append(post)
            if len(posts) >= max(1, min(body.limit, 500)):
                break
    except FacebookTokenExpired as error:
        raise ServiceUnavailable(str(error), retry_after=3600) from None
    except FacebookError as error:
        raise ServiceUnavailable(f"The Graph API failed: {error}") from None
    report = await import_posts(
        services.changelog,
        parse_feed_page({"data": posts}),
        pictures=services.media_admin,
    )
    return json_response(
        {
            "posts": report.posts,
            "created": report.created,
            "updated_drafts": report.updated_drafts,
            "suggestions": report.suggestions,
            "already_imported": report.already_imported,
            "without_offers": report.without_offers,
            "pictures_stored": report.pictures_stored,
            "pictures_failed": report.pictures_failed,
        }
    )


routes = [
    Route("/api/admin/facebook/import", admin_import, methods=["POST"]),
    Route("/api/webhooks/facebook", facebook_verify, methods=["GET"]),
    Route("/api/webhooks/facebook", facebook_event, methods=["POST"]),
]
