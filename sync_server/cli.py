"""`freshroots`: the server's command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from sync_server.settings import ConfigError, Settings

if TYPE_CHECKING:
    from storage.changelog import ChangeLog, Tx
    from storage.payments import VerifiedNotification

T = TypeVar("T")

DESCRIPTION = """Fresh Roots sync server.

Configuration comes from the environment (DATABASE_URL, REDIS_URL, JWT_SECRET, ...);
with nothing set it runs embedded: a SQLite file in the working directory and in-process
cache and pub/sub. See README.md for every variable."""


def _settings() -> Settings:
    try:
        return Settings.from_environ()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from storage.migrate import pending_message
    from sync_server.logs import configure_logging
    from sync_server.serving import PROTOCOL

    settings = _settings()
    problem = pending_message(settings.database_url)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    if args.workers > 1 and not settings.uses_redis:
        # Each worker would keep its own heads and pub/sub: pulls and sockets on one worker
        # would not hear of commits made through another until caches expire.
        print(
            "--workers above 1 needs REDIS_URL (shared heads and pub/sub between workers)",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level)
    database = "embedded SQLite" if settings.is_sqlite else "PostgreSQL"
    if settings.database_replica_urls:
        database += f" with {len(settings.database_replica_urls)} read replica(s)"
    cache = ", in-process cache"
    if settings.uses_redis:
        cache = f" + {settings.redis_target.describe()}"
    print(
        f"Fresh Roots serving on http://{args.host}:{args.port} ({database}{cache})",
        file=sys.stderr,
    )
    uvicorn.run(
        "sync_server.app:app_from_environment",
        factory=True,
        # httptools with each response's head and body in one write (sync_server/serving.py);
        # an import string, so `--workers N` processes load it too.
        http=PROTOCOL,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        # RequestEdgeMiddleware writes the access log (with route, user and request id).
        access_log=False,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws=settings.ws_implementation,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=args.keep_alive,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from storage.migrate import current_revision, head_revision, upgrade

    settings = _settings()
    before = current_revision(settings.database_url)
    upgrade(settings.database_url)
    after = head_revision()
    if before == after:
        print(f"schema already current ({after})")
    else:
        print(f"schema migrated: {before or 'empty'} -> {after}")
    return 0


async def _with_changelog(settings: Settings, work: Callable[[ChangeLog], Awaitable[T]]) -> T:
    from storage.standalone import open_changelog

    async with open_changelog(
        settings.database_url,
        settings.redis_target,
        redis_prefix=settings.redis_prefix,
        head_cache_seconds=settings.head_cache_seconds,
    ) as changelog:
        return await work(changelog)


async def ensure_admin(settings: Settings, email: str, password: str, name: str) -> str:
    from storage import users
    from sync_server.security import PasswordHasher

    password_hash = await PasswordHasher(settings.bcrypt_rounds).hash(password)

    async def work(changelog: ChangeLog) -> str:
        async with changelog.transaction() as tx:
            existing = await users.find_by_email(tx.conn, email)
            if existing is None:
                await users.create_user(
                    tx,
                    email=email,
                    password_hash=password_hash,
                    name=name,
                    phone=None,
                    role="admin",
                )
                return "created"
            await users.set_role(tx, existing["id"], "admin", password_hash)
            return "updated"

    return str(await _with_changelog(settings, work))


def cmd_create_admin(args: argparse.Namespace) -> int:
    from sync_server.security import check_password_shape

    settings = _settings()
    try:
        check_password_shape(args.password)
    except Exception as error:
        print(f"password rejected: {error}", file=sys.stderr)
        return 2
    outcome = asyncio.run(ensure_admin(settings, args.email, args.password, args.name))
    print(f"admin {args.email} {outcome}")
    return 0


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from storage.seed import seed_listings

    settings = _settings()
    report = asyncio.run(
        _with_changelog(settings, lambda changelog: seed_listings(changelog, args.listings))
    )
    print(
        f"demo listings: {report.listings_created} created, "  # type: ignore[attr-defined]
        f"{report.listings_total} in the catalogue"
    )  # type: ignore[attr-defined]
    password = args.admin_password or secrets.token_urlsafe(9)
    outcome = asyncio.run(ensure_admin(settings, args.admin_email, password, "Demo admin"))
    print(f"demo admin {outcome}: email {args.admin_email}  password {password}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from storage.db import Database
    from sync_server.channels import build_channels
    from sync_server.logs import configure_logging
    from sync_server.worker import OutboxWorker

    settings = _settings()
    configure_logging(settings.log_level)

    async def run() -> None:
        import httpx

        db = Database(settings.database_url, pool_size=2)
        async with httpx.AsyncClient(timeout=20) as http:
            channels = build_channels(settings.environ, db, http)
            names = ", ".join(channel.name for channel in channels)
            print(
                f"outbox worker: channels {names}; polling every {settings.outbox_poll_seconds:g}s",
                file=sys.stderr,
            )
            try:
                await OutboxWorker(
                    db,
                    channels,
                    settings.outbox_poll_seconds,
                    lease_seconds=settings.outbox_lease_seconds,
                ).run_forever()
            finally:
                await db.dispose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


def cmd_facebook_parse(args: argparse.Namespace) -> int:
    import orjson

    from integrations.facebook.parser import feed_page_to_json_lines

    try:
        with open(args.feed, "rb") as handle:
            page = orjson.loads(handle.read())
    except (OSError, orjson.JSONDecodeError) as error:
        print(f"cannot read {args.feed}: {error}", file=sys.stderr)
        return 2
    for line in feed_page_to_json_lines(page):
        print(line)
    return 0


def cmd_facebook_import(args: argparse.Namespace) -> int:
    import httpx

    from integrations.facebook.graph import FacebookError, GraphClient
    from integrations.facebook.parser import parse_feed_page
    from integrations.facebook.settings import FacebookSettings
    from integrations.media.cloudinary_media import CloudinaryAdmin
    from storage.imports import import_posts

    settings = _settings()
    facebook = FacebookSettings.from_environ(settings.environ)
    page_id = args.page_id or facebook.page_id
    if not facebook.page_token or not page_id:
        print("Set FACEBOOK_PAGE_TOKEN and FACEBOOK_PAGE_ID (or pass --page-id).", file=sys.stderr)
        return 2

    async def run(changelog: ChangeLog) -> int:
        totals = {"posts": 0, "created": 0, "stored": 0, "failed": 0}
        async with httpx.AsyncClient(timeout=30) as http:
            graph = GraphClient(http, facebook)
            pictures = CloudinaryAdmin.from_environ(http, settings.environ)
            if pictures is None:
                print(
                    "CLOUDINARY_URL is not set: drafts are imported without pictures.",
                    file=sys.stderr,
                )

            async def flush(batch: list[dict[str, object]]) -> None:
                report = await import_posts(
                    changelog, parse_feed_page({"data": batch}), pictures=pictures
                )
                totals["posts"] += report.posts
                totals["created"] += report.created
                totals["stored"] += report.pictures_stored
                totals["failed"] += report.pictures_failed
                print(
                    f"  {totals['posts']} posts read, {totals['created']} drafts created",
                    file=sys.stderr,
                )

            batch: list[dict[str, object]] = []
            try:
                async for post in graph.iter_feed(page_id):
                    batch.append(post)
                    if len(batch) == 25 or (
                        args.limit and totals["posts"] + len(batch) >= args.limit
                    ):
                        await flush(batch)
                        batch = []
                        if args.limit and totals["posts"] >= args.limit:
                            break
                if batch:
                    await flush(batch)
            except FacebookError as error:
                print(f"import stopped: {error}", file=sys.stderr)
                return 1
        failed = totals["failed"]
        print(
            f"imported {totals['posts']} posts: {totals['created']} new draft listings, "
            f"{totals['stored']} pictures stored"
            f"{f', {failed} pictures failed (retried on the next import)' if failed else ''} "
            "(review and publish them in the dashboard)"
        )
        return 0

    return asyncio.run(_with_changelog(settings, run))


async def _apply_verified(tx: Tx, note: VerifiedNotification) -> tuple[str, str | None]:
    from storage.payments import apply_notification

    return await apply_notification(tx, note)


def cmd_payments_reconcile(args: argparse.Namespace) -> int:
    import httpx
    from sqlalchemy import select

    from integrations.payments.base import PaymentProviderUnavailable
    from integrations.payments.mips import MipsProvider
    from integrations.payments.settings import MipsSettings
    from storage.models import PaymentEvent
    from storage.payments import expire_stale_attempts, mark_event

    settings = _settings()
    mips = MipsSettings.from_environ(settings.environ)

    async def run(changelog: ChangeLog) -> int:
        settled = 0
        if mips is not None:
            async with changelog.db.read() as conn:
                waiting = (
                    await conn.execute(
                        select(PaymentEvent.id, PaymentEvent.raw).where(
                            PaymentEvent.outcome == "verify_pending"
                        )
                    )
                ).all()
            async with httpx.AsyncClient(timeout=20) as http:
                provider = MipsProvider(http, mips)
                for event_id, raw in waiting:
                    try:
                        note = await provider.verify_notification(raw)
                    except PaymentProviderUnavailable:
                        print("gateway still unavailable; run again later", file=sys.stderr)
                        return 1
                    if note is None:
                        await mark_event(changelog.db, event_id, "unverified", None)
                        continue
                    outcome, payment_id = await changelog.run(
                        functools.partial(_apply_verified, note=note)
                    )
                    await mark_event(changelog.db, event_id, outcome, payment_id)
                    settled += 1
            print(f"re-verified {len(waiting)} stored notifications, {settled} applied")
        else:
            print("online payments are off (MIPS_API_URL not set): nothing to re-verify")
        hours = args.older_than_hours
        async with changelog.transaction() as tx:
            expired = await expire_stale_attempts(tx, int(hours * 3_600_000))
        print(f"{expired} unpaid attempts older than {hours:g} h marked failed")
        return 0

    return asyncio.run(_with_changelog(settings, run))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshroots",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the HTTP and WebSocket API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1; use >1 only with PostgreSQL + Redis)",
    )
    serve.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-For from --forwarded-allow-ips (behind nginx)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies trusted for X-Forwarded-* (default 127.0.0.1)",
    )
    serve.add_argument(
        "--keep-alive",
        type=int,
        default=75,
        metavar="SECONDS",
        help="close idle HTTP connections after this long (default 75: longer than a "
        "phone's 30 s background-sync interval, so each poll reuses its connection instead "
        "of a new TCP handshake, and than nginx's 60 s upstream keepalive_timeout, so a "
        "proxy never sends on a connection the app is closing)",
    )
    serve.set_defaults(run=cmd_serve)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(run=cmd_migrate)

    seed = commands.add_parser("seed-demo", help="load a demo catalogue and a demo admin")
    seed.add_argument("--listings", type=int, default=40, help="how many listings (default 40)")
    seed.add_argument("--admin-email", default="admin@freshroots.demo")
    seed.add_argument(
        "--admin-password",
        default=None,
        help="demo admin password (default: a new random one, printed)",
    )
    seed.set_defaults(run=cmd_seed_demo)

    worker = commands.add_parser(
        "worker", help="deliver queued notifications (push, email); several may run"
    )
    worker.set_defaults(run=cmd_worker)

    facebook = commands.add_parser("facebook", help="import listings from the farm's Page")
    facebook_commands = facebook.add_subparsers(
        dest="facebook_command", required=True, metavar="ACTION"
    )
    parse = facebook_commands.add_parser(
        "parse", help="print the drafts a Graph API feed page (JSON file) would create"
    )
    parse.add_argument("feed", help="a /{page-id}/feed answer saved as JSON")
    parse.set_defaults(run=cmd_facebook_parse)
    fb_import = facebook_commands.add_parser(
        "import", help="read the Page feed through the Graph API and create draft listings"
    )
    fb_import.add_argument("--page-id", default=None, help="default: FACEBOOK_PAGE_ID")
    fb_import.add_argument("--limit", type=int, default=0, help="stop after N posts (0: all)")
    fb_import.set_defaults(run=cmd_facebook_import)

    payments = commands.add_parser("payments", help="settle online payments")
    payment_commands = payments.add_subparsers(
        dest="payments_command", required=True, metavar="ACTION"
    )
    reconcile = payment_commands.add_parser(
        "reconcile",
        help="re-verify notifications stored during a gateway outage and expire "
        "attempts nobody paid",
    )
    reconcile.add_argument("--older-than-hours", type=float, default=24.0)
    reconcile.set_defaults(run=cmd_payments_reconcile)

    admin = commands.add_parser("create-admin", help="create an admin, or promote a user")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", required=True)
    admin.add_argument("--name", default="Admin")
    admin.set_defaults(run=cmd_create_admin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
