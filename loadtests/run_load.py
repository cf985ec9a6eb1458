"""`make load`: seed realistic data on a throwaway PostgreSQL database + Redis prefix, start
one and then two server processes on loopback, and run locust headless against them.

    python loadtests/run_load.py                      # one bounded run per process count
    python loadtests/run_load.py --capacity           # step users up until p95 >= 250 ms
    python loadtests/run_load.py --users 1000 --run-time 60

Seeding: listings go through the storage write path (so sync sees them), users and past
orders are bulk-inserted with one precomputed bcrypt hash (hashing tens of thousands of
passwords would take minutes and proves nothing here). Reports (CSV + a summary) go to
loadtests/reports/. Only 127.0.0.1 is ever targeted; every step is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from storage.db import Database, new_id, now_ms  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.models import Listing, Order, OrderItem, User  # noqa: E402
from storage.seed import seed_listings  # noqa: E402
from sync_server.cli import _with_changelog, ensure_admin  # noqa: E402
from sync_server.security import PasswordHasher  # noqa: E402
from sync_server.settings import Settings  # noqa: E402
from tests.support import services as real  # noqa: E402
from tests.support.processes import ServerProcess, start_server  # noqa: E402

REPORTS = ROOT / "loadtests" / "reports"


async def seed(
    settings: Settings, listings: int, users: int, orders: int
) -> tuple[list[str], list[str]]:
    started = time.monotonic()
    report = await _with_changelog(settings, lambda log: seed_listings(log, listings))
    print(f"  listings: {report.listings_total} ({time.monotonic() - started:.0f}s)", flush=True)
    db = Database(settings.database_url)
    password_hash = await PasswordHasher(settings.bcrypt_rounds).hash("load test password")
    user_ids = [new_id() for _ in range(users)]
    now = now_ms()
    async with db.write() as conn:
        for start in range(0, users, 5000):
            await conn.execute(
                insert(User),
                [
                    {
                        "id": uid,
                        "email": f"load-{uid}@example.mu",
                        "password_hash": password_hash,
                        "name": "Load buyer",
                        "phone": None,
                        "role": "user",
                        "email_verified": True,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for uid in user_ids[start : start + 5000]
                ],
            )
            print(f"  users: {min(users, start + 5000)}/{users}", flush=True)
        listing_rows = (await conn.execute(select(Listing.id, Listing.price))).all()
        for start in range(0, orders, 5000):
            batch_orders, batch_items = [], []
            for n in range(start, min(orders, start + 5000)):
                listing_id, price = listing_rows[n % len(listing_rows)]
                order_id = "hist-" + new_id()
                batch_orders.append(
                    {
                        "id": order_id,
                        "user_id": user_ids[n % users],
                        "status": "completed",
                        "payment_method": "cod",
                        "payment_status": "paid",
                        "total": price * 2,
                        "note": None,
                        "reject_reason": None,
                        "created_at": now - n * 60_000,
                        "updated_at": now - n * 60_000,
                        "approved_at": now - n * 60_000,
                    }
                )
                batch_items.append(
                    {
                        "id": "histi-" + new_id(),
                        "order_id": order_id,
                        "listing_id": listing_id,
                        "quantity": 2,
                        "price": price,
                    }
                )
            await conn.execute(insert(Order), batch_orders)
            await conn.execute(insert(OrderItem), batch_items)
            print(f"  past orders: {min(orders, start + 5000)}/{orders}", flush=True)
    # Stock enough that purchases during the run rarely run out.
    async with db.write() as conn:
        await conn.execute(Listing.__table__.update().values(stock=1_000_000))
    await db.dispose()
    return user_ids, [row[0] for row in listing_rows]


async def user_id_of(settings: Settings, email: str) -> str:
    db = Database(settings.database_url)
    try:
        async with db.read() as conn:
            return str(
                (await conn.execute(select(User.id).where(User.email == email))).scalar_one()
            )
    finally:
        await db.dispose()


def tokens_for(secret: str, user_ids: list[str], path: Path) -> Path:
    now = int(time.time())
    path.write_text(
        "\n".join(
            jwt.encode(
                {"sub": uid, "role": "user", "iat": now, "exp": now + 6 * 3600},
                secret,
                algorithm="HS256",
            )
            for uid in user_ids
        )
    )
    return path


def run_locust(
    hosts: list[str], users: int, seconds: int, label: str, env: dict[str, str]
) -> dict[str, Any]:
    REPORTS.mkdir(parents=True, exist_ok=True)
    prefix = REPORTS / label
    # Several server processes: one locust process per host, users split between them.
    processes = []
    for index, host in enumerate(hosts):
        share = users // len(hosts) + (1 if index < users % len(hosts) else 0)
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "locust",
                    "-f",
                    str(ROOT / "loadtests" / "locustfile.py"),
                    "--headless",
                    "--host",
                    host,
                    "-u",
                    str(share),
                    "-r",
                    str(max(1, share // 20)),
                    "--run-time",
                    f"{seconds}s",
                    "--stop-timeout",
                    "5",
                    "--csv",
                    f"{prefix}-{index}",
                    "--only-summary",
                ],
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for process in processes:
        process.wait(timeout=seconds + 120)
    return summarise([Path(f"{prefix}-{index}_stats.csv") for index in range(len(hosts))])


def summarise(files: list[Path]) -> dict[str, Any]:
    rows: dict[str, dict[str, float]] = {}
    for path in files:
        with path.open() as handle:
            for row in csv.DictReader(handle):
                entry = rows.setdefault(
                    row["Name"],
                    {"requests": 0, "failures": 0, "rps": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0},
                )
                entry["requests"] += int(row["Request Count"])
                entry["failures"] += int(row["Failure Count"])
                entry["rps"] += float(row["Requests/s"])
                for key, column in (("p50", "50%"), ("p95", "95%"), ("p99", "99%")):
                    value = row.get(column) or "0"
                    entry[key] = max(entry[key], float(value if value != "N/A" else 0))
    return rows


def print_summary(title: str, rows: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(
        f"  {'request':42} {'count':>8} {'fail':>6} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6}"
    )
    for name, row in sorted(rows.items()):
        print(
            f"  {name[:42]:42} {row['requests']:>8.0f} {row['failures']:>6.0f} "
            f"{row['rps']:>8.1f} {row['p50']:>6.0f} {row['p95']:>6.0f} {row['p99']:>6.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--run-time", type=int, default=60, help="seconds per run")
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="step background-sync users up until p95 >= 250 ms or failures",
    )
    parser.add_argument("--steps", default="250,500,1000,2000,3000")
    parser.add_argument("--listings", type=int, default=1000)
    parser.add_argument("--seed-users", type=int, default=20000)
    parser.add_argument("--seed-orders", type=int, default=20000)
    args = parser.parse_args()

    secret = secrets.token_hex(24)
    database_url = real.create_database()
    prefix = f"frload:{secrets.token_hex(3)}:"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": real.REDIS_URL,
        "REDIS_PREFIX": prefix,
        "JWT_SECRET": secret,
        "RATE_LIMITS": "off",
        "BCRYPT_ROUNDS": "10",
        "LOG_LEVEL": "WARNING",
        "EXPO_PUSH_URL": "http://127.0.0.1:9",
    }
    servers: list[ServerProcess] = []
    try:
        upgrade(database_url)
        settings = Settings.from_environ(env)
        print("seeding", flush=True)
        user_ids, listing_ids = asyncio.run(
            seed(settings, args.listings, args.seed_users, args.seed_orders)
        )
        asyncio.run(ensure_admin(settings, "load-admin@freshroots.test", "load admin pass", "A"))
        REPORTS.mkdir(parents=True, exist_ok=True)
        admin_id = asyncio.run(user_id_of(settings, "load-admin@freshroots.test"))
        admin = jwt.encode(
            {
                "sub": admin_id,
                "role": "admin",
                "iat": int(time.time()),
                "exp": int(time.time()) + 6 * 3600,
            },
            secret,
            algorithm="HS256",
        )
        locust_env = {
            "LOAD_TOKENS": str(tokens_for(secret, user_ids, REPORTS / "tokens.txt")),
            "LOAD_ADMIN": admin,
        }
        (REPORTS / "listings.txt").write_text("\n".join(listing_ids))
        locust_env["LOAD_LISTINGS"] = str(REPORTS / "listings.txt")
        servers = [start_server(env), start_server(env)]
        table = []
        for count in (1, 2):
            hosts = [server.base_url for server in servers[:count]]
            steps = [int(n) for n in args.steps.split(",")] if args.capacity else [args.users]
            for users in steps:
                rows = run_locust(hosts, users, args.run_time, f"{count}proc-{users}u", locust_env)
                print_summary(f"{count} server process(es), {users} users, {args.run_time}s", rows)
                total = rows.get("Aggregated", {})
                table.append(
                    (
                        count,
                        users,
                        total.get("rps", 0),
                        total.get("p50", 0),
                        total.get("p95", 0),
                        total.get("p99", 0),
                        total.get("failures", 0),
                    )
                )
                if args.capacity and (total.get("p95", 0) >= 250 or total.get("failures", 0)):
                    break
        print("\nprocesses  users  req/s   p50   p95   p99  failures")
        for count, users, rps, p50, p95, p99, failures in table:
            print(
                f"{count:>9} {users:>6} {rps:>6.0f} {p50:>5.0f} {p95:>5.0f} {p99:>5.0f} "
                f"{failures:>9.0f}"
            )
    finally:
        for server in servers:
            server.process.terminate()
            server.process.wait(10)
        real.drop_database(database_url)
        real.clear_redis_prefix(prefix)


if __name__ == "__main__":
    main()
