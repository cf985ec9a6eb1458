"""`make load`: seed realistic data on a throwaway PostgreSQL database + Redis prefix, start
one and then two server processes on loopback, and run locust headless against them.

    python loadtests/run_load.py               # the mixed profile, 500 users, 1 and 2 processes
    python loadtests/run_load.py --capacity    # first step background-sync phones up until
                                               # p95 >= 250 ms or a failure (`make load`)
    python loadtests/run_load.py --capacity --processes 2 --steps 6000,8000 --run-time 90

Seeding: listings go through the storage write path (so sync sees them), users and past
orders are bulk-inserted with one precomputed bcrypt hash (hashing tens of thousands of
passwords would take minutes and proves nothing here). Reports go to loadtests/reports/:
report.md (every run, and the capacity table), locust's CSV and HTML per run, the server log.
Only 127.0.0.1 is ever targeted; every step is bounded in time.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from sqlalchemy import func, insert, select, update  # noqa: E402

from protocol.cursor import CursorCodec, LogCursor  # noqa: E402
from storage.db import Database, new_id, now_ms  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.models import ChangeLogEntry, Listing, Order, OrderItem, User  # noqa: E402
from storage.seed import seed_listings  # noqa: E402
from sync_server.cli import _with_changelog, ensure_admin  # noqa: E402
from sync_server.security import PasswordHasher  # noqa: E402
from sync_server.settings import Settings  # noqa: E402
from tests.support import services as real  # noqa: E402
from tests.support.processes import ServerProcess, start_server  # noqa: E402

REPORTS = ROOT / "loadtests" / "reports"
P95_LIMIT_MS = 250
# Statistics are reset this long after the last user has started: the capacity figure is
# for steady state, not for the stampede of every phone starting at the same moment.
SETTLE_SECONDS = 30
SPAWN_PER_SECOND = 50


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
        listing_rows = (
            await conn.execute(
                select(Listing.id, Listing.price).where(Listing.status == "published")
            )
        ).all()
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
        await conn.execute(update(Listing).values(stock=1_000_000))
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


def mint_tokens(secret: str, user_ids: list[str]) -> list[str]:
    now = int(time.time())
    return [
        jwt.encode(
            {"sub": uid, "role": "user", "iat": now, "exp": now + 6 * 3600},
            secret,
            algorithm="HS256",
        )
        for uid in user_ids
    ]


async def log_head(settings: Settings) -> int:
    db = Database(settings.database_url)
    try:
        async with db.read() as conn:
            query = select(func.coalesce(func.max(ChangeLogEntry.position), 0))
            return int((await conn.execute(query)).scalar_one())
    finally:
        await db.dispose()


def write_accounts(settings: Settings, user_ids: list[str], tokens: list[str], path: Path) -> Path:
    """One "<token> <cursor>" line per user, the cursor at the log's current head: the
    phones synced before this run started, as phones in pockets have."""
    codec = CursorCodec(settings.jwt_secret.encode())
    head = LogCursor(asyncio.run(log_head(settings)))
    path.write_text(
        "\n".join(
            f"{token} {codec.encode(head, uid)}"
            for uid, token in zip(user_ids, tokens, strict=True)
        )
    )
    return path


@dataclass
class Step:
    label: str
    processes: int
    users: int
    profile: str
    rows: dict[str, dict[str, float]]
    live_frames: str
    cpu: dict[str, float]

    @property
    def total(self) -> dict[str, float]:
        return self.rows.get("Aggregated", {})

    @property
    def passed(self) -> bool:
        return self.total.get("p95", 0) < P95_LIMIT_MS and not self.total.get("failures", 0)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by these processes (from /proc)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def pids_of(name: str) -> list[int]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def run_locust(
    servers: list[ServerProcess],
    users: int,
    steady_seconds: int,
    label: str,
    env: dict[str, str],
    user_classes: list[str],
) -> tuple[dict[str, Any], str, dict[str, float]]:
    """Returns the merged statistics, the live-frame totals and the CPU use (share of one
    core) of each part during the measured window: the servers, locust, PostgreSQL, Redis."""
    prefix = REPORTS / label
    # Phones come online at a steady rate, not all in the same second: a stampede of
    # thousands of first syncs measures the stampede, not the steady state.
    ramp_seconds = max(10, users // SPAWN_PER_SECOND)
    run_seconds = ramp_seconds + SETTLE_SECONDS + steady_seconds
    # One locust process per server, users split between them: one process of locust
    # drives one core's worth of load, and each server gets the same share.
    processes = []
    for index, server in enumerate(servers):
        share = users // len(servers) + (1 if index < users % len(servers) else 0)
        log = (REPORTS / f"{label}-{index}.log").open("wb")
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
                    server.base_url,
                    "-u",
                    str(share),
                    "-r",
                    f"{SPAWN_PER_SECOND / len(servers):g}",
                    "--run-time",
                    f"{run_seconds}s",
                    "--stop-timeout",
                    "5",
                    "--csv",
                    f"{prefix}-{index}",
                    "--html",
                    f"{prefix}-{index}.html",
                    "--only-summary",
                    # One farm in all: with two locust processes the second runs none, so
                    # the change rate is the same for one server process and for two.
                    *(user_classes if index == 0 else [c for c in user_classes if c != "Farm"]),
                ],
                env={**os.environ, **env, "LOAD_SETTLE_SECONDS": str(SETTLE_SECONDS)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    groups = {
        "servers": [server.process.pid for server in servers],
        "locust": [process.pid for process in processes],
        "postgres": pids_of("postgres"),
        "redis": pids_of("redis-server"),
    }
    # Stats are reset SETTLE_SECONDS after spawning completes, so sample the same window.
    time.sleep(ramp_seconds + SETTLE_SECONDS)
    before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    window_start = time.monotonic()
    time.sleep(max(1, steady_seconds - 3))
    elapsed = time.monotonic() - window_start
    cpu = {name: (cpu_seconds(pids) - before[name]) / elapsed for name, pids in groups.items()}
    for process in processes:
        process.wait(timeout=steady_seconds + 180)
    frames = [
        line.split(":", 1)[1].strip()
        for index in range(len(servers))
        for line in (REPORTS / f"{label}-{index}.log").read_text().splitlines()
        if line.startswith("live frames received:")
    ]
    rows = summarise([Path(f"{prefix}-{index}_stats.csv") for index in range(len(servers))])
    return rows, "; ".join(frames), cpu


def summarise(files: list[Path]) -> dict[str, Any]:
    """Merge the per-process CSVs: counts and rates add up; for percentiles the worse of
    the processes is kept (each saw half the users, so neither is a better estimate)."""
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


def step_table(step: Step) -> list[str]:
    lines = [
        f"### {step.processes} server process(es), {step.users} users, profile {step.profile}",
        "",
        "| request | count | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in sorted(step.rows.items(), key=lambda item: item[0] == "Aggregated"):
        lines.append(
            f"| {name} | {row['requests']:.0f} | {row['failures']:.0f} | {row['rps']:.1f} "
            f"| {row['p50']:.0f} | {row['p95']:.0f} | {row['p99']:.0f} |"
        )
    if step.live_frames:
        lines.append(f"\nlive frames received: {step.live_frames}")
    lines.append(
        "\nCPU during the measured window (1.0 = one core): "
        + ", ".join(f"{name} {share:.2f}" for name, share in step.cpu.items())
    )
    return [*lines, ""]


def capacity_table(steps: list[Step]) -> list[str]:
    lines = [
        "| server processes | users | req/s | p50 ms | p95 ms | p99 ms | failures | server CPU "
        "| locust CPU | within limit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for step in steps:
        total = step.total
        lines.append(
            f"| {step.processes} | {step.users} | {total.get('rps', 0):.0f} "
            f"| {total.get('p50', 0):.0f} | {total.get('p95', 0):.0f} | {total.get('p99', 0):.0f} "
            f"| {total.get('failures', 0):.0f} | {step.cpu.get('servers', 0):.2f} "
            f"| {step.cpu.get('locust', 0):.2f} | {'yes' if step.passed else 'no'} |"
        )
    best = {
        count: max((s.users for s in steps if s.processes == count and s.passed), default=0)
        for count in sorted({s.processes for s in steps})
    }
    lines.append("")
    lines.append(
        "capacity (most background-sync users with p95 < 250 ms and no failures): "
        + ", ".join(f"{count} process(es): {users}" for count, users in best.items())
    )
    if best.get(1) and best.get(2):
        lines.append(f"two processes / one: {best[2] / best[1]:.2f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=500, help="users in the mixed-profile run")
    parser.add_argument(
        "--run-time", type=int, default=60, help="seconds measured per run, after the ramp"
    )
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="step background-sync users up until p95 >= 250 ms or a failure",
    )
    parser.add_argument(
        "--steps", default="2000,4000,5000,6000,8000,10000", help="user counts for --capacity"
    )
    parser.add_argument("--processes", default="1,2", help="server process counts to run")
    parser.add_argument("--listings", type=int, default=2000)
    parser.add_argument("--seed-users", type=int, default=20000)
    parser.add_argument("--seed-orders", type=int, default=30000)
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
    REPORTS.mkdir(parents=True, exist_ok=True)
    servers: list[ServerProcess] = []
    steps: list[Step] = []
    try:
        upgrade(database_url)
        settings = Settings.from_environ(env)
        print("seeding", flush=True)
        user_ids, listing_ids = asyncio.run(
            seed(settings, args.listings, args.seed_users, args.seed_orders)
        )
        asyncio.run(ensure_admin(settings, "load-admin@freshroots.test", "load admin pass", "A"))
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
        tokens = mint_tokens(secret, user_ids)
        (REPORTS / "listings.txt").write_text("\n".join(listing_ids))
        locust_env = {
            "LOAD_TOKENS": str(REPORTS / "accounts.txt"),
            "LOAD_ADMIN": admin,
            "LOAD_LISTINGS": str(REPORTS / "listings.txt"),
        }
        counts = [int(n) for n in args.processes.split(",")]
        server_log = (REPORTS / "servers.log").open("wb")
        # Phones reach the app through nginx, which keeps their connections 65 s; here they
        # connect directly, so the app keeps them as long as nginx would.
        servers = [
            start_server(env, log=server_log, serve_args=["--keep-alive", "65"])
            for _ in range(max(counts))
        ]
        plan: list[tuple[int, int, str]] = []
        for count in counts:
            if args.capacity:
                plan += [(count, int(n), "sync") for n in args.steps.split(",")]
            plan.append((count, args.users, "mixed"))
        failed_at: set[int] = set()
        for count, users, profile in plan:
            if profile == "sync" and count in failed_at:
                continue
            write_accounts(settings, user_ids, tokens, REPORTS / "accounts.txt")
            label = f"{count}proc-{users}u-{profile}"
            print(
                f"\n{label}: {SPAWN_PER_SECOND} users/s coming online, settle "
                f"{SETTLE_SECONDS} s, {args.run_time} s measured",
                flush=True,
            )
            classes = (
                ["BackgroundSyncPhone", "Farm"]
                if profile == "sync"
                else ["BackgroundSyncPhone", "OfflineBurstPhone", "Browser", "Admin", "Farm"]
            )
            rows, frames, cpu = run_locust(
                servers[:count],
                users,
                args.run_time,
                label,
                locust_env,
                classes,
            )
            step = Step(label, count, users, profile, rows, frames, cpu)
            steps.append(step)
            print("\n".join(step_table(step)), flush=True)
            if profile == "sync" and not step.passed:
                failed_at.add(count)
        capacity = [step for step in steps if step.profile == "sync"]
        report = [
            "# Load report",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, PostgreSQL + Redis, "
            f"{args.listings} listings, {args.seed_users} users, {args.seed_orders} past orders; "
            f"{args.run_time} s measured per step, after the users came online at "
            f"{SPAWN_PER_SECOND}/s and {SETTLE_SECONDS} s more to settle. Server, load generator, "
            "PostgreSQL and Redis share the same cores.",
            "",
        ]
        if capacity:
            report += ["## Capacity (background-sync phones + one farm editing stock)", ""]
            report += [*capacity_table(capacity), ""]
        report += ["## Every run", ""]
        for step in steps:
            report += step_table(step)
        (REPORTS / "report.md").write_text("\n".join(report))
        print("\n" + "\n".join(report), flush=True)
        print(f"\nreport: {REPORTS / 'report.md'}; CSVs and HTML beside it", flush=True)
    finally:
        for server in servers:
            server.process.terminate()
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        real.drop_database(database_url)
        real.clear_redis_prefix(prefix)


if __name__ == "__main__":
    main()
