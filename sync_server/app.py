"""The application factory: `create_app(settings)` builds routes, middleware and lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from integrations.analytics.sentry import init_sentry
from integrations.payments.sandbox import create_mips_standin
from protocol.errors import FreshRootsError
from storage.admission import Priority
from storage.changelog import prune
from storage.db import Database
from storage.migrate import pending_message
from storage.outbox import stats as outbox_stats
from storage.pull import log_head
from sync_server.channels import build_channels
from sync_server.errors import (
    DEPENDENCY_ERRORS,
    crash_response,
    dependency_response,
    error_response,
)
from sync_server.http import json_response
from sync_server.live.hub import LiveHub
from sync_server.metrics import GcPauses, Metrics
from sync_server.middleware import (
    PULL_PATH,
    BodyMiddleware,
    CompressionMiddleware,
    EdgeAdmission,
    RequestEdgeMiddleware,
)
from sync_server.openapi import build_openapi, docs_app
from sync_server.pull_lane import build_lane, takes
from sync_server.routes import (
    admin,
    admin_reports,
    admin_session,
    auth,
    codes,
    health,
    listings,
    metrics,
    orders,
    payments,
    snapshot,
    sync,
    watermelon,
    webhooks,
    ws,
)
from sync_server.services import Services, open_services
from sync_server.settings import Settings
from sync_server.worker import OutboxWorker

log = logging.getLogger("freshroots")
ADMIN_UI = Path(__file__).parent / "admin_ui"
VERSION = "0.1.0"
YOUNG_COLLECTION_THRESHOLD = 20_000  # see the lifespan
PRIORITY = {priority: priority.name.lower() for priority in Priority}  # metric labels


class SchemaNotReady(RuntimeError):
    pass


class FreshRootsApp(Starlette):
    """Starlette, with the live socket taken before the middleware stack: every layer would
    hold a coroutine frame for as long as a phone keeps its socket open, and at thousands of
    sockets that is a third of what an idle one costs (`sync_server.live.session`)."""

    pull_lane: ASGIApp | None = None  # see sync_server.pull_lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == ws.LIVE_PATH:
            scope["app"] = self
            await ws.live_socket(scope, receive, send)
            return
        if self.pull_lane is not None and takes(scope, PULL_PATH):
            scope["app"] = self
            await self.pull_lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def on_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, FreshRootsError)
    return error_response(error)


async def on_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    envelope = FreshRootsError(str(error.detail), code=codes.get(error.status_code, "http_error"))
    response = error_response(envelope)
    response.status_code = error.status_code
    return response


async def on_crash(request: Request, error: Exception) -> Response:
    return crash_response(request.url.path)


async def on_dependency_error(request: Request, error: Exception) -> Response:
    return dependency_response(error, request.url.path)


async def refresh_gauges(services: Services, metrics: Metrics, edge: EdgeAdmission) -> None:
    gate = services.db.gate
    for priority in Priority:
        metrics.admission_waiting.labels(priority.name.lower()).set(gate.waiting(priority))
    metrics.low_priority_in_flight.set(edge.in_flight)
    metrics.event_loop_lag.set(edge.lag)
    figures = await outbox_stats(services.db)
    for status in ("pending", "sending", "sent", "dead"):
        metrics.outbox_items.labels(status).set(figures[status])
    metrics.outbox_lag.set(figures["lag_seconds"])
    pool = services.db.engine.pool
    checked_out = getattr(pool, "checkedout", None)
    metrics.db_pool_in_use.set(checked_out() if callable(checked_out) else 0)
    metrics.live_sessions.set(len(services.live.sessions))
    metrics.live_overflows.set(services.live.overflows)
    metrics.snapshot_work.labels("built").set(services.catalogue.builds)
    metrics.snapshot_work.labels("compressed").set(services.catalogue.compressions)
    async with services.db.read() as conn:
        metrics.changelog_head.set(await log_head(conn))
    metrics.observe_reads(services.reads)


async def _wake(worker: OutboxWorker) -> None:
    worker.wake()


async def prune_periodically(db: Database, settings: Settings) -> None:
    """Trim the change log to its retention window; every instance may do it, it is idempotent."""
    while True:
        try:
            removed = await prune(db, settings.changelog_retention_seconds * 1000)
            if removed:
                log.info("pruned change log", extra={"entries": removed})
        except Exception:
            log.exception("change-log pruning failed; will retry")
        await anyio.sleep(settings.prune_interval_seconds)


def create_app(settings: Settings) -> Starlette:
    if not init_sentry(
        settings.sentry_dsn,
        environment=settings.environ.get("SENTRY_ENVIRONMENT", "production"),
        release=f"freshroots-sync@{VERSION}",
    ):
        log.info("Sentry is off: SENTRY_DSN is not set")
    sandbox = payments.payments_sandbox(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        problem = await anyio.to_thread.run_sync(pending_message, settings.database_url)
        if problem is not None:
            raise SchemaNotReady(problem)
        async with open_services(
            settings, payments_gateway=sandbox.settings if sandbox else None
        ) as services:
            services.live = LiveHub(services)
            app.state.services = services
            app.state.metrics = app_metrics
            app_metrics.refresh = lambda: refresh_gauges(services, app_metrics, edge_admission)
            for database in services.reads.databases:  # the primary, then each replica
                database.gate.configure(
                    low_wait=settings.admission_low_priority_wait_ms / 1000,
                    wait=settings.admission_wait_ms / 1000,
                    on_shed=lambda priority: app_metrics.count_shed("database", PRIORITY[priority]),
                    on_wait=lambda priority, seconds: app_metrics.observe_wait(
                        PRIORITY[priority], seconds
                    ),
                )

            async def refresh_listing_caches(_heads: dict[str, int], tables: set[str]) -> None:
                if "listings" in tables:
                    await listings.bump_listings_generation(services)

            services.feed.listeners.append(refresh_listing_caches)
            # A listing change whose bump was lost with Redis (an outage, a failover that
            # lost the last writes) would leave the listing pages cached for
            # LISTINGS_CACHE_SECONDS: a new generation once Redis is back.
            services.feed.resync_listeners.append(
                lambda: listings.bump_listings_generation(services)
            )
            async with anyio.create_task_group() as background:
                background.start_soon(prune_periodically, services.db, settings)
                background.start_soon(services.feed.follow)
                background.start_soon(services.live.run)
                background.start_soon(services.reads.watch)
                if services.analytics is not None:
                    background.start_soon(services.analytics.run_periodic_flush, 5.0)
                if settings.runs_outbox_worker:
                    channels = build_channels(settings.environ, services.db, services.http)
                    worker = OutboxWorker(
                        services.db,
                        channels,
                        settings.outbox_poll_seconds,
                        metrics=app_metrics,
                        lease_seconds=settings.outbox_lease_seconds,
                    )
                    services.feed.listeners.append(lambda _heads, _tables: _wake(worker))
                    background.start_soon(worker.run_forever)
                background.start_soon(services.limiter.flush_periodically)
                background.start_soon(edge_admission.watch_loop)
                gc_pauses = GcPauses(app_metrics)
                gc_pauses.install()
                # Everything built so far (modules, the ORM's metadata, compiled statements)
                # lives as long as the process: out of the collector's reach, a full collection
                # walks only what requests and connections made since.
                gc.collect()
                gc.freeze()
                # The default threshold (700 container allocations) runs a young collection
                # every request or two at phone scale; each promotes survivors until a full
                # collection walks a heap of thousands of connections (~100 ms a pause, 26 in
                # 90 s at 10,000 phones). Reference counting frees nearly all of what a request
                # makes; the collector is only for cycles, and those can wait a little longer.
                gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
                try:
                    yield
                finally:
                    gc_pauses.remove()
                background.cancel_scope.cancel()

    app_metrics = Metrics()
    edge_admission = EdgeAdmission(
        max_in_flight=settings.admission_max_low_priority_in_flight,
        lag_limit=settings.admission_loop_lag_ms / 1000,
    )
    # Sync first: the router tries routes in order and background sync is most of the traffic.
    api_routes = [
        *sync.routes,
        *snapshot.routes,
        *watermelon.routes,
        *listings.routes,
        *orders.routes,
        *auth.routes,
        *codes.routes,
        *admin.routes,
        *admin_reports.routes,
        *webhooks.routes,
        *payments.routes,
        *health.routes,
        *metrics.routes,
    ]
    openapi_document = build_openapi([*api_routes, *admin_session.routes], VERSION)

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document)

    cors = (
        [
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=[
                    "authorization",
                    "content-type",
                    "content-encoding",
                    "idempotency-key",
                    "if-none-match",
                ],
                expose_headers=["etag", "retry-after", "x-request-id"],
                max_age=600,
            )
        ]
        if settings.cors_origins
        else []
    )
    # What every answer goes through, the pull lane's included (it has no body to cap).
    answer_middleware = [
        Middleware(
            RequestEdgeMiddleware,
            dashboard_csp=dashboard_policy(settings),
            metrics=app_metrics,
            admission=edge_admission,
        ),
        *cors,
        Middleware(CompressionMiddleware),
    ]
    middleware = [
        *answer_middleware,
        Middleware(BodyMiddleware, max_bytes=settings.max_body_bytes),
    ]
    # Off: not mounted at all, so /sandbox/... is a plain 404.
    sandbox_routes = (
        [Mount(payments.SANDBOX_PATH, create_mips_standin(sandbox), name="payments_sandbox")]
        if sandbox
        else []
    )
    app = FreshRootsApp(
        routes=[
            *api_routes,
            *admin_session.routes,
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/docs", lambda request: RedirectResponse("/docs/"), methods=["GET"]),
            Mount("/docs", docs_app(), name="docs"),  # the API reference, rendering the above
            Route("/admin", lambda request: RedirectResponse("/admin/"), methods=["GET"]),
            Mount("/admin", StaticFiles(directory=ADMIN_UI, html=True), name="admin"),
            *sandbox_routes,
        ],
        middleware=middleware,
        exception_handlers={
            FreshRootsError: on_error,
            HTTPException: on_http_error,
            # Handled where FreshRootsError is (not as a crash, which Starlette re-raises and
            # uvicorn answers by closing the connection): a phone keeps its connection.
            **dict.fromkeys(DEPENDENCY_ERRORS, on_dependency_error),
            Exception: on_crash,
        },
        lifespan=lifespan,
    )
    pull_route = next(route for route in sync.routes if route.path == PULL_PATH)
    app.pull_lane = build_lane(pull_route, answer_middleware)
    app.state.payments_sandbox = sandbox  # the stand-in's state, for tests (None when off)
    return app


def dashboard_policy(settings: Settings) -> str:
    """The dashboard runs only our own script; uploads go straight to Cloudinary."""
    upload = settings.environ.get("CLOUDINARY_UPLOAD_PREFIX", "https://api.cloudinary.com")
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data: https://res.cloudinary.com; "
        f"connect-src 'self' {upload}; frame-ancestors 'none'; base-uri 'none'"
    )


def app_from_environment() -> Starlette:
    """Entry point for `uvicorn --factory` (used by `freshroots serve --workers N`)."""
    from sync_server.logs import configure_logging

    settings = Settings.from_environ()
    configure_logging(settings.log_level)
    return create_app(settings)
