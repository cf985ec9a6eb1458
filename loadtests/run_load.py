"""`make load`: the acceptance load profile of issue 18, with locust, on PostgreSQL + Redis.

    python loadtests/run_load.py                    # the acceptance run: 10,000 phones, one
                                                    # server process, 60 s measured (~4 min)
    python loadtests/run_load.py --quick            # smoke run: 1,000 phones, 20 s measured
    python loadtests/run_load.py --processes 1,2    # one server process, then --workers 2
    python loadtests/run_load.py --users 5000 --run-time 120 --locust-processes 1
    python loadtests/run_load.py --replica          # on a private primary + streaming replica
                                                    # (initdb + pg_basebackup -R), reads routed
                                                    # with DATABASE_REPLICA_URLS: prints the read
                                                    # load on each

With --replica the database is a throwaway primary and its streaming replica
(tests/support/pg_cluster.py) instead of a database on the machine's PostgreSQL, and the
report adds, for the measured window, each node's transactions, rows read and CPU
(pg_stat_database on each, the CPU of each postmaster's processes), and where the server
routed its read-only work (freshroots_db_reads by outcome, from /metrics).

Each run (one per entry of --processes) starts from nothing: a throwaway PostgreSQL database
and Redis prefix, 1,000 published listings created through the storage write path (stock
1,000,000, so purchases rarely run out), 300 accounts (bulk-inserted, with access tokens
minted for them and, for each, a cursor at the change log's head: their phones synced before
the run), one admin. Then one `freshroots serve` (`--workers N` for N > 1) with its default
settings except RATE_LIMITS=off (10,000 devices come from one address here) and a loopback
Expo URL; the access log stays on. The server's log goes to the run's folder.

The profile (loadtests/locustfile.py): 97 % of the users are phones pulling every 30 s from
their own cursor (pages of 100, gzip, If-None-Match, following `more`; device n is account
n % 300; 5 % start with a full paged initial sync), 2 % are offline bursts (5-20 mutations
every 60 s, sent twice, then a pull), 1 % search every 10 s, plus exactly one admin doing
2 actions a second (approve a pending order; edit a listing's stock or price). The users
come online over --ramp seconds (10,000 over 30 s: 333.4/s), the first polls spread over
each phone's first 30 s; --settle seconds after the last one started, the statistics are
reset and --run-time seconds are measured.

With ~20 listing changes a second, a poll 30 s behind is ~5 pages of 100: 10,000 phones
offer ~1,800 requests a second, so locust runs as a master and 2 workers above 2,000 users
(--locust-processes). Locust creates each second's users at once; the phones' own pacing
(counted from their first poll, not from their creation) keeps them from polling in step.

Reported per request type for the measured window (and, apart, for the ramp, which holds the
initial syncs): count, failures, req/s, p50/p95/p99/max; the server's CPU in the window as a
share of a core and as milliseconds of server CPU per request; locust's CPU (a locust process
near 100 % of a core means the load generator, not the server, is the limit: the report
says so); PostgreSQL's and Redis's CPU; what the server logged (5xx answers, warnings, errors)
and shed. The targets: p95 < 250 ms for every request type, no failure, server CPU <= 1 ms a
request. Everything goes to loadtests/reports/ (report.md; per run: locust's CSV and HTML,
its log, the server's log). Only 127.0.0.1 is contacted; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import jwt  # noqa: E402
import psutil  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from loadtests.seeding import Target, create_admin, password_hash, with_changelog  # noqa: E402
from protocol.cursor import CursorCodec, LogCursor  # noqa: E402
from storage.changelog import ChangeLog  # noqa: E402
from storage.db import Database, new_id, now_ms  # noqa: E402
from storage.listings import create_listing  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.models import ChangeLogEntry, User  # noqa: E402
from storage.seed import PRODUCE  # noqa: E402
from tests.support import services as real  # noqa: E402
from tests.support.pg_cluster import Cluster, streaming_cluster  # noqa: E402
from tests.support.processes import ServerProcess, start_server  # noqa: E402

REPORTS = ROOT / "loadtests" / "reports"
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
USER_CLASSES = ["SyncPhone", "BurstPhone", "Searcher", "Admin"]
P95_LIMIT_MS = 250.0
CPU_MS_PER_REQUEST_LIMIT = 1.0
LOCUST_SATURATED = 0.9  # a locust process above this share of a core is the bottleneck
# Measured here (locust against loadtests/bare_app.py, a new connection a request as with
# the server's 5 s keep-alive): one locust process uses ~0.43 ms of CPU a request. 10,000
# phones offer ~1,800 requests a second (a poll 30 s behind ~20 listing changes a second is
# ~5 pages of 100), ~0.8 of a core: too close to a full core for one gevent loop.
ONE_LOCUST_PROCESS_USERS = 2000
OUTSIDE_WORKLOAD = 0.15  # cores busy outside this run that make its figures unclean
FARMS = ["Vacoas", "Quatre Bornes", "Flacq", "Rose Belle", "Grand Baie", "Moka", "Triolet"]


# -- seeding -----------------------------------------------------------------------------------


async def create_listings(changelog: ChangeLog, count: int) -> list[tuple[str, int, str]]:
    """Published listings through the storage write path (so sync sees them), one
    transaction each as an admin would create them. Returns (id, price, title)."""
    created = []
    for index in range(count):
        title, unit, rupees, category, description = PRODUCE[index % len(PRODUCE)]
        batch = index // len(PRODUCE)
        name = title if batch == 0 else f"{title} ({FARMS[batch % len(FARMS)]})"
        price = (rupees + 5 * (batch % 3)) * 100
        values = {
            "title": name,
            "description": description,
            "price": price,
            "unit": unit,
            "stock": 1_000_000,
            "category": category,
            "images": [f"freshroots/demo/{category}-{index % 7 + 1}"],
            "status": "published",
        }
        async with changelog.transaction() as tx:
            listing_id = await create_listing(
                tx, None, values, source="load", source_ref=f"load:{index}"
            )
        created.append((listing_id, price, name))
        if (index + 1) % 250 == 0 or index + 1 == count:
            print(f"    listings: {index + 1}/{count}", flush=True)
    return created


async def create_accounts(target: Target, count: int) -> list[str]:
    """Buyer accounts, bulk-inserted with one precomputed password hash (nobody logs in:
    their tokens are minted)."""
    db = Database(target.database_url)
    try:
        hashed = password_hash(target, "load test password")
        user_ids = [new_id() for _ in range(count)]
        now = now_ms()
        async with db.write() as conn:
            await conn.execute(
                insert(User),
                [
                    {
                        "id": uid,
                        "email": f"load-{uid}@example.mu",
                        "password_hash": hashed,
                        "name": "Load buyer",
                        "phone": None,
                        "role": "user",
                        "email_verified": True,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for uid in user_ids
                ],
            )
        return user_ids
    finally:
        await db.dispose()


async def user_id_of(target: Target, email: str) -> str:
    db = Database(target.database_url)
    try:
        async with db.read() as conn:
            return str(
                (await conn.execute(select(User.id).where(User.email == email))).scalar_one()
            )
    finally:
        await db.dispose()


async def log_head(target: Target) -> int:
    db = Database(target.database_url)
    try:
        async with db.read() as conn:
            query = select(func.coalesce(func.max(ChangeLogEntry.position), 0))
            return int((await conn.execute(query)).scalar_one())
    finally:
        await db.dispose()


async def log_activity(target: Target, window: tuple[float, float]) -> dict[str, float]:
    """Change-log entries committed in the window, a second, by table and kind of scope
    (public: the catalogue every phone pulls; user: an account's own rows; admin)."""
    db = Database(target.database_url)
    try:
        async with db.read() as conn:
            rows = (
                await conn.execute(
                    select(ChangeLogEntry.table_name, ChangeLogEntry.scope, func.count())
                    .where(
                        ChangeLogEntry.committed_at >= int(window[0] * 1000),
                        ChangeLogEntry.committed_at < int(window[1] * 1000),
                    )
                    .group_by(ChangeLogEntry.table_name, ChangeLogEntry.scope)
                )
            ).all()
    finally:
        await db.dispose()
    seconds = max(window[1] - window[0], 1e-9)
    activity: dict[str, float] = {}
    for table, scope, count in rows:
        key = f"{table} ({scope.split(':', 1)[0]})"
        activity[key] = activity.get(key, 0.0) + count / seconds
    return dict(sorted(activity.items(), key=lambda item: -item[1]))


def token(secret: str, user_id: str, role: str) -> str:
    now = int(time.time())
    claims = {"sub": user_id, "role": role, "iat": now, "exp": now + 6 * 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


def search_words(titles: list[str]) -> list[str]:
    """Words of four letters or more that occur in the titles (the search is by prefix,
    accent-insensitive, so each one finds listings)."""
    return sorted({word.lower() for title in titles for word in re.findall(r"[^\W\d_]{4,}", title)})


def seed(env: dict[str, str], folder: Path, listings: int, accounts: int) -> dict[str, str]:
    """Seeds the database; returns the locust environment (files in `folder`)."""
    started = time.monotonic()
    print(f"  seeding {listings} listings (storage write path)", flush=True)
    target = Target.of(env)
    created = asyncio.run(with_changelog(target, lambda log: create_listings(log, listings)))
    print(f"  seeding {accounts} accounts", flush=True)
    user_ids = asyncio.run(create_accounts(target, accounts))
    create_admin(env, "load-admin@freshroots.test", "load admin pass", "Admin")
    admin_id = asyncio.run(user_id_of(target, "load-admin@freshroots.test"))
    # The phones synced before the run: each account's devices start at the log's head.
    codec = CursorCodec(target.jwt_secret.encode())
    head = LogCursor(asyncio.run(log_head(target)))
    (folder / "accounts.txt").write_text(
        "\n".join(
            f"{token(target.jwt_secret, uid, 'user')} {codec.encode(head, uid)}" for uid in user_ids
        )
    )
    (folder / "listings.txt").write_text("\n".join(f"{lid} {price}" for lid, price, _ in created))
    print(f"  seeded in {time.monotonic() - started:.0f} s (log head {head.position})", flush=True)
    return {
        "LOAD_ACCOUNTS": str(folder / "accounts.txt"),
        "LOAD_LISTINGS": str(folder / "listings.txt"),
        "LOAD_ADMIN": token(target.jwt_secret, admin_id, "admin"),
        "LOAD_SEARCH_WORDS": " ".join(search_words([title for _, _, title in created])),
    }


# -- CPU -----------------------------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def named(name: str, database: str | None = None) -> list[psutil.Process]:
    """Processes called `name`; for PostgreSQL, only the backends of `database` and the
    server's own helpers (not the backends of other databases: the machine may be shared)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] != name:
            continue
        command = " ".join(process.info["cmdline"] or [])
        if database is not None and "(" in command and database not in command:
            continue  # a backend of another database
        found.append(process)
    return found


def cpu_times(processes: list[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds of each process so far."""
    times = {}
    for process in processes:
        try:
            used = process.cpu_times()
        except psutil.Error:
            continue
        times[process.pid] = used.user + used.system
    return times


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class CpuWindow:
    """CPU seconds used by each group of processes between two samples, and by the whole
    machine."""

    seconds: float = 0.0
    used: dict[str, dict[int, float]] = field(default_factory=dict)
    machine: float = 0.0

    def share(self, group: str) -> float:
        return sum(self.used.get(group, {}).values()) / self.seconds if self.seconds else 0.0

    def busiest(self, group: str) -> float:
        values = self.used.get(group, {}).values()
        return max(values, default=0.0) / self.seconds if self.seconds else 0.0

    def processes(self, group: str) -> int:
        return len(self.used.get(group, {}))

    @property
    def machine_share(self) -> float:
        return self.machine / self.seconds if self.seconds else 0.0

    @property
    def outside_share(self) -> float:
        """Cores busy with something else than this run (another workload on the machine)."""
        return max(0.0, self.machine_share - sum(self.share(group) for group in self.used))


Sample = tuple[float, float, dict[str, dict[int, float]]]


def sample(
    server: int, locust: int, database: str, postmasters: dict[str, int] | None = None
) -> Sample:
    """CPU so far of this run's processes (looked up afresh: PostgreSQL backends and locust
    workers may come and go) and of the whole machine. `postmasters`: a private cluster's
    nodes by name (their processes are counted per node, not by database)."""
    groups = {
        "server": tree(server),
        "locust": tree(locust),
        "redis": named("redis-server"),
    }
    if postmasters:
        for node, pid in postmasters.items():
            groups[f"postgres {node}"] = tree(pid)
    else:
        groups["postgres"] = named("postgres", database)
    return (
        time.monotonic(),
        machine_busy(),
        {name: cpu_times(processes) for name, processes in groups.items()},
    )


def difference(before: Sample, after: Sample) -> CpuWindow:
    """A process that appeared in between counts whole; one that ended in between is lost."""
    used = {
        group: {pid: seconds - before[2][group].get(pid, 0.0) for pid, seconds in times.items()}
        for group, times in after[2].items()
    }
    return CpuWindow(after[0] - before[0], used, after[1] - before[1])


# -- read load on a primary and its replica (--replica) -------------------------------------------

NODE_STATISTICS = (
    "SELECT xact_commit, tup_returned + tup_fetched, blks_hit + blks_read "
    "FROM pg_stat_database WHERE datname = current_database()"
)


@dataclass
class ReadLoad:
    """What the measured window cost each node, and where the server sent its reads."""

    seconds: float
    nodes: dict[str, tuple[float, float, float]]  # node: transactions, rows read, blocks (/s)
    routed: dict[str, float]  # freshroots_db_reads outcome: count in the window


class ReplicaWatch:
    """Samples a private cluster's pg_stat_database and the server's routed reads at the
    window's start and end."""

    def __init__(self, cluster: Cluster, database: str) -> None:
        self.cluster = cluster
        self.database = database
        self.marks: list[tuple[float, dict[str, tuple[int, ...]], dict[str, float]]] = []

    @property
    def postmasters(self) -> dict[str, int]:
        return {
            node.name: int((node.data_dir / "postmaster.pid").read_text().split()[0])
            for node in (self.cluster.primary, self.cluster.replica)
        }

    def mark(self, base_url: str) -> None:
        statistics = {
            node.name: tuple(int(v) for v in node.query(NODE_STATISTICS, self.database)[0])
            for node in (self.cluster.primary, self.cluster.replica)
        }
        self.marks.append((time.monotonic(), statistics, routed_reads(base_url)))

    def load(self) -> ReadLoad | None:
        if len(self.marks) < 2:
            return None
        (start, first, routed_before), (end, last, routed_after) = self.marks[0], self.marks[-1]
        seconds = max(end - start, 1e-9)
        nodes = {
            name: tuple((b - a) / seconds for a, b in zip(first[name], last[name], strict=True))
            for name in first
        }
        routed = {k: v - routed_before.get(k, 0.0) for k, v in routed_after.items()}
        return ReadLoad(seconds, nodes, routed)  # type: ignore[arg-type]


def routed_reads(base_url: str) -> dict[str, float]:
    """freshroots_db_reads by outcome, as the server counts them since it started."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    pattern = r'^freshroots_db_reads\{outcome="(\w+)"\} (\S+)$'
    return {outcome: float(value) for outcome, value in re.findall(pattern, text, re.M)}


# -- one run -------------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    processes: int
    users: int
    ramp: dict[str, Any]
    steady: dict[str, Any]
    cpu: CpuWindow
    locust_processes: int
    server_log: dict[str, Any]
    shed: dict[str, float]
    locust_warnings: list[str]
    log_activity: dict[str, float]
    read_load: ReadLoad | None = None

    @property
    def requests(self) -> int:
        return int(self.steady["rows"].get("Aggregated", {}).get("count", 0))

    @property
    def cpu_ms_per_request(self) -> float:
        rate = self.requests / self.steady["seconds"] if self.steady.get("seconds") else 0.0
        return 1000 * self.cpu.share("server") / rate if rate else float("nan")

    @property
    def slow_types(self) -> list[str]:
        return [
            name
            for name, row in self.steady["rows"].items()
            if name != "Aggregated" and row["count"] and row["p95"] >= P95_LIMIT_MS
        ]

    @property
    def failures(self) -> int:
        return int(self.steady["rows"].get("Aggregated", {}).get("failures", 0))

    @property
    def locust_saturated(self) -> bool:
        return self.cpu.busiest("locust") >= LOCUST_SATURATED

    @property
    def holds(self) -> bool:
        return (
            not self.slow_types
            and self.failures == 0
            and self.cpu_ms_per_request <= CPU_MS_PER_REQUEST_LIMIT
        )


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def server_log_summary(path: Path, window: tuple[float, float]) -> dict[str, Any]:
    """What the server wrote: lines, answers by status class, 5xx by route, warnings and
    errors (first few), and the durations it logged per route inside the measured window
    (from the request reaching the app to its answer: queueing before that, in the kernel or
    the event loop, is not in it). 304 polls that changed nothing may be logged below INFO."""
    lines = 0
    by_status: dict[str, int] = {}
    errors_by_route: dict[str, int] = {}
    durations: dict[str, list[float]] = {}
    problems: list[str] = []
    problem_count = 0
    with path.open(errors="replace") as handle:
        for line in handle:
            lines += 1
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            status = entry.get("status")
            if isinstance(status, int):
                key = f"{status // 100}xx"
                by_status[key] = by_status.get(key, 0) + 1
                route = f"{entry.get('method', '')} {entry.get('route') or entry.get('path')}"
                if status >= 500:
                    errors_by_route[f"{route} {status}"] = (
                        errors_by_route.get(f"{route} {status}", 0) + 1
                    )
                took = entry.get("duration_ms")
                if isinstance(took, int | float) and window[0] <= entry.get("ts", 0) <= window[1]:
                    durations.setdefault(f"{route} {status}", []).append(float(took))
            if entry.get("level") in ("warning", "error", "critical"):
                problem_count += 1
                if len(problems) < 8:
                    problems.append(line.strip()[:300])
    server_side = {}
    for route, values in sorted(durations.items(), key=lambda item: -len(item[1])):
        values.sort()
        server_side[route] = {
            "count": len(values),
            "p50": values[len(values) // 2],
            "p95": values[min(len(values) - 1, int(len(values) * 0.95))],
            "max": values[-1],
        }
    return {
        "lines": lines,
        "by_status": by_status,
        "5xx_by_route": errors_by_route,
        "problems": problems,
        "problem_count": problem_count,
        "server_side": server_side,
    }


def shed_counts(base_url: str) -> dict[str, float]:
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    return {
        f"{where}/{priority}": float(value)
        for priority, where, value in re.findall(
            r'^freshroots_shed_total\{priority="(\w+)",where="(\w+)"\} (\S+)$', text, re.M
        )
        if float(value)
    }


def gc_pauses(base_url: str) -> str:
    """The server's cyclic garbage collections so far, per generation: count, total, and the
    share of the longest bucket (each one stops the event loop)."""
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return "unknown"
    parts = []
    for generation in (1, 2):  # the server does not time generation 0 (see GcPauses)
        count = re.search(
            rf'^freshroots_gc_pause_seconds_count\{{generation="{generation}"\}} (\S+)$', text, re.M
        )
        total = re.search(
            rf'^freshroots_gc_pause_seconds_sum\{{generation="{generation}"\}} (\S+)$', text, re.M
        )
        if count and total:
            parts.append(
                f"generation {generation}: {float(count.group(1)):,.0f} collections, "
                f"{float(total.group(1)):.2f} s"
            )
    return "; ".join(parts) or "none"


def run_locust(
    server: ServerProcess,
    database: str,
    folder: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    watch: ReplicaWatch | None = None,
) -> tuple[dict[str, Any], dict[str, Any], CpuWindow, list[str]]:
    """Runs locust until the locustfile closes the measured window; samples CPU (and, with a
    `watch`, each database node's statistics) at the window's start and end. Returns the ramp
    and steady statistics, the CPU, locust's warnings."""
    state = folder / "state"
    state.mkdir()
    rate = math.ceil(args.users / args.ramp * 10) / 10
    bound = int(3 * args.ramp + args.settle + args.run_time + 120)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        server.base_url,
        "-u",
        str(args.users),
        "-r",
        f"{rate:g}",
        "--run-time",
        f"{bound}s",
        "--stop-timeout",
        "5",
        "--csv",
        str(folder / "locust"),
        "--html",
        str(folder / "locust.html"),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        *(["--processes", str(args.locust_processes)] if args.locust_processes > 1 else []),
        *USER_CLASSES,
    ]
    print(
        f"  locust: {args.users:,} users at {rate:g}/s, settle {args.settle:g} s, measure "
        f"{args.run_time:g} s ({args.locust_processes} locust process(es))",
        flush=True,
    )
    environment = {
        **os.environ,
        **env,
        "LOAD_STATE_DIR": str(state),
        "LOAD_SETTLE_SECONDS": str(args.settle),
        "LOAD_STEADY_SECONDS": str(args.run_time),
        **({"LOAD_TRACE": str(folder / "trace")} if args.trace else {}),
    }
    with (folder / "locust.log").open("wb") as log:
        locust = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    before: Sample | None = None
    after: Sample | None = None
    last_print = 0.0
    try:
        while locust.poll() is None:
            now = time.monotonic()
            if server.process.poll() is not None:
                print(f"  !! the server exited ({server.process.returncode}); stopping", flush=True)
                break
            if now - started > bound + 60:
                print("  !! locust overran its time bound; stopping it", flush=True)
                break
            postmasters = watch.postmasters if watch is not None else None
            if before is None and (state / "window-start.json").exists():
                before = sample(server.process.pid, locust.pid, database, postmasters)
                if watch is not None:
                    watch.mark(server.base_url)
            if before is not None and after is None and (state / "window-end.json").exists():
                after = sample(server.process.pid, locust.pid, database, postmasters)
                if watch is not None:
                    watch.mark(server.base_url)
            if now - last_print >= 5:
                last_print = now
                print(f"  [{now - started:4.0f} s] {progress(state, args)}", flush=True)
            time.sleep(0.1)
    finally:
        if locust.poll() is None:
            locust.terminate()
        try:
            locust.wait(60)
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait(10)
    ramp, steady = read_json(state / "ramp.json"), read_json(state / "steady.json")
    if ramp is None or steady is None or before is None or after is None:
        tail = (folder / "locust.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"locust ended before the measured window closed; its log ends:\n{tail}")
    log_text = (folder / "locust.log").read_text(errors="replace")
    warnings = sorted(
        {line.split("] ", 1)[-1] for line in log_text.splitlines() if "CPU usage" in line}
    )
    return ramp, steady, difference(before, after), warnings


def progress(state: Path, args: argparse.Namespace) -> str:
    figures = read_json(state / "progress.json")
    if figures is None:
        return "starting locust"
    if (state / "window-end.json").exists():
        phase = "window closed, locust stopping"
    elif (start := read_json(state / "window-start.json")) is not None:
        phase = f"measuring {time.time() - start['t']:.0f}/{args.run_time:g} s"
    elif (spawned := read_json(state / "spawned.json")) is not None:
        phase = f"settling {time.time() - spawned['t']:.0f}/{args.settle:g} s"
    else:
        phase = "ramp"
    return (
        f"{phase}: {figures['users']:,} users, {figures['requests']:,} requests, "
        f"{figures['failures']:,} failures, {figures['rps']:.0f} req/s now, "
        f"p95 now {figures['p95']:.0f} ms"
    )


def run_once(args: argparse.Namespace, processes: int) -> Run:
    label = f"{processes}proc-{args.users}u"
    folder = REPORTS / label
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"\n== {label}: {processes} server process(es), {args.users:,} users", flush=True)
    with ExitStack() as stack:
        if args.replica:
            print("  making a primary and its streaming replica (initdb, pg_basebackup -R)")
            cluster = stack.enter_context(streaming_cluster())
            return run_on(args, processes, label, folder, cluster)
        return run_on(args, processes, label, folder, None)


def run_on(
    args: argparse.Namespace, processes: int, label: str, folder: Path, cluster: Cluster | None
) -> Run:
    database_url = real.create_database() if cluster is None else cluster.primary.url("freshroots")
    prefix = f"frload:{secrets.token_hex(3)}:"
    replica_urls = "" if cluster is None else cluster.replica.url("freshroots")
    watch = None if cluster is None else ReplicaWatch(cluster, "freshroots")
    env = {
        "DATABASE_URL": database_url,
        "DATABASE_REPLICA_URLS": replica_urls,
        "REDIS_URL": real.REDIS_URL,
        "REDIS_PREFIX": prefix,
        "JWT_SECRET": secrets.token_hex(24),
        # 10,000 devices behind one address: the per-IP and per-user limits would refuse them.
        "RATE_LIMITS": "off",
        # Nothing leaves the machine (no device registers an Expo token, but to be sure).
        "EXPO_PUSH_URL": "http://127.0.0.1:9",
        **dict(setting.split("=", 1) for setting in args.server_env),
    }
    if args.server_env:
        print(f"  server settings beyond the defaults: {', '.join(args.server_env)}")
    server: ServerProcess | None = None
    try:
        upgrade(database_url)
        locust_env = seed(env, folder, args.listings, args.accounts)
        serve_args = ["--workers", str(processes)] if processes > 1 else []
        if args.keep_alive is not None:
            serve_args += ["--keep-alive", str(args.keep_alive)]
        print(f"  starting freshroots serve {' '.join(serve_args)}".rstrip(), flush=True)
        with (folder / "server.log").open("wb") as server_log:
            # log_level=None: the server's own default (INFO, the access log on).
            server = start_server(env, log=server_log, serve_args=serve_args, log_level=None)
        ramp, steady, cpu, warnings = run_locust(
            server, database_url.rsplit("/", 1)[1], folder, locust_env, args, watch
        )
        shed = shed_counts(server.base_url)
        print(f"  server garbage collections: {gc_pauses(server.base_url)}", flush=True)
        activity = asyncio.run(log_activity(Target.of(env), (steady["started"], steady["ended"])))
    finally:
        if server is not None:
            server.process.terminate()
            try:
                server.process.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        if cluster is None:
            real.drop_database(database_url)
        real.clear_redis_prefix(prefix)
    run = Run(
        label,
        processes,
        args.users,
        ramp,
        steady,
        cpu,
        args.locust_processes,
        server_log_summary(folder / "server.log", (steady["started"], steady["ended"])),
        shed,
        warnings,
        activity,
        watch.load() if watch is not None else None,
    )
    print("\n".join(run_section(run)), flush=True)
    return run


# -- the report ----------------------------------------------------------------------------------


def stats_table(snapshot: dict[str, Any]) -> list[str]:
    seconds = snapshot["seconds"] or 1.0
    lines = [
        "| request | count | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = sorted(snapshot["rows"].items(), key=lambda item: (item[0] == "Aggregated", item[0]))
    for name, row in rows:
        slow = name != "Aggregated" and row["count"] and row["p95"] >= P95_LIMIT_MS
        lines.append(
            f"| {name} | {row['count']:,} | {row['failures']:,} | {row['count'] / seconds:.1f} "
            f"| {row['p50']:.0f} | {'**' if slow else ''}{row['p95']:.0f}{'**' if slow else ''} "
            f"| {row['p99']:.0f} | {row['max']:.0f} |"
        )
    return lines


def errors_list(snapshot: dict[str, Any]) -> list[str]:
    return [
        f"- {error['count']:,} x {error['method']} {error['name']}: {error['error'][:200]}"
        for error in sorted(snapshot["errors"], key=lambda e: -e["count"])[:15]
    ]


def run_section(run: Run) -> list[str]:
    cpu = run.cpu
    yes = {True: "yes", False: "**no**"}
    lines = [
        f"## {run.processes} server process(es), {run.users:,} users",
        "",
        f"**Targets {'HOLD' if run.holds else 'DO NOT HOLD'}** (steady window of "
        f"{run.steady['seconds']:.0f} s):",
        f"- p95 < {P95_LIMIT_MS:.0f} ms for every request type: {yes[not run.slow_types]}"
        + (f" (over: {', '.join(run.slow_types)})" if run.slow_types else ""),
        f"- no failures: {yes[run.failures == 0]} ({run.failures:,})",
        f"- server CPU <= {CPU_MS_PER_REQUEST_LIMIT:g} ms a request: "
        f"{yes[run.cpu_ms_per_request <= CPU_MS_PER_REQUEST_LIMIT]} "
        f"({run.cpu_ms_per_request:.2f} ms)",
        "",
    ]
    if run.locust_saturated:
        lines += [
            f"**!! THE LOAD GENERATOR IS THE LIMIT: a locust process used "
            f"{cpu.busiest('locust'):.2f} of a core. Latencies include locust's own queueing; "
            "the offered load may be below the profile's. Try --locust-processes 2. !!**",
            "",
        ]
    if cpu.outside_share >= OUTSIDE_WORKLOAD:
        lines += [
            f"**!! ANOTHER WORKLOAD SHARED THE MACHINE: {cpu.outside_share:.2f} of a core "
            "went to processes outside this run during the window. The figures are not "
            "clean; run again on a quiet machine. !!**",
            "",
        ]
    lines += ["### Steady window", "", *stats_table(run.steady), ""]
    # One group, or one per node of a private cluster (--replica).
    postgres = sum(cpu.share(group) for group in cpu.used if group.startswith("postgres"))
    lines += [
        f"CPU in the window (1.0 = one core): server {cpu.share('server'):.2f} "
        f"({cpu.processes('server')} process(es)), locust {cpu.share('locust'):.2f} "
        f"({cpu.processes('locust')} process(es), busiest {cpu.busiest('locust'):.2f}), "
        f"PostgreSQL {postgres:.2f}, Redis {cpu.share('redis'):.2f}; the whole "
        f"machine {cpu.machine_share:.2f} of {os.cpu_count()}, "
        f"{cpu.outside_share:.2f} of it outside this run. "
        f"Server CPU per request: **{run.cpu_ms_per_request:.2f} ms** "
        f"(server CPU seconds / requests: {cpu.share('server'):.2f} a second / "
        f"{run.requests / run.steady['seconds']:.0f} requests a second).",
        "",
    ]
    if run.log_activity:
        lines += [
            "Change-log entries committed in the window, a second: "
            + ", ".join(f"{key} {rate:.1f}" for key, rate in run.log_activity.items())
            + ".",
            "",
        ]
    if run.read_load is not None:
        lines += read_load_section(run.read_load, cpu)
    if run.steady["errors"]:
        lines += ["Failures in the window, by cause:", "", *errors_list(run.steady), ""]
    lines += [
        f"### Ramp and settle ({run.ramp['seconds']:.0f} s: the users coming online, the "
        "initial syncs; not part of the targets)",
        "",
        *stats_table(run.ramp),
        "",
    ]
    if run.ramp["errors"]:
        lines += ["Failures during the ramp, by cause:", "", *errors_list(run.ramp), ""]
    log = run.server_log
    lines += [
        "### Server",
        "",
        f"Log: {log['lines']:,} lines; answers logged by class: "
        + (", ".join(f"{k} {v:,}" for k, v in sorted(log["by_status"].items())) or "none")
        + f"; warnings and errors: {log['problem_count']:,}. Shed (from /metrics): "
        + (", ".join(f"{k} {v:.0f}" for k, v in run.shed.items()) or "nothing")
        + ".",
    ]
    if log["server_side"]:
        lines += [
            "",
            "Durations the server logged in the window (app only: no accept, no event-loop "
            "queueing, no transfer):",
            "",
            "| route, status | count | p50 ms | p95 ms | max ms |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {route} | {row['count']:,} | {row['p50']:.1f} | {row['p95']:.1f} "
            f"| {row['max']:.1f} |"
            for route, row in log["server_side"].items()
        ]
    if log["5xx_by_route"]:
        lines += ["", "5xx answers by route:", ""]
        lines += [f"- {route}: {count:,}" for route, count in log["5xx_by_route"].items()]
    if log["problems"]:
        lines += ["", "First warnings and errors:", "", "```", *log["problems"], "```"]
    if run.locust_warnings:
        lines += ["", "locust warned: " + "; ".join(run.locust_warnings)]
    lines += [
        "",
        f"Files: loadtests/reports/{run.label}/ (locust CSV, HTML and log, server log).",
        "",
    ]
    return lines


def read_load_section(load: ReadLoad, cpu: CpuWindow) -> list[str]:
    lines = [
        "### Read load: primary vs replica",
        "",
        "| node | transactions/s | rows read/s | blocks read or hit/s | CPU (cores) |",
        "|---|---:|---:|---:|---:|",
    ]
    for node, (transactions, rows, blocks) in load.nodes.items():
        lines.append(
            f"| {node} | {transactions:,.0f} | {rows:,.0f} | {blocks:,.0f} "
            f"| {cpu.share(f'postgres {node}'):.2f} |"
        )
    routed = {k: v for k, v in sorted(load.routed.items(), key=lambda kv: -kv[1]) if v}
    total = sum(routed.values())
    lines += [
        "",
        "Read-only work the server routed in the window (freshroots_db_reads): "
        + (
            ", ".join(f"{k} {v:,.0f} ({v / total:.0%})" for k, v in routed.items())
            if total
            else "none (the tail and the caches answered everything)"
        )
        + ". The primary also takes every write, the reads inside writes, and the live hub's "
        "reads of new commits.",
        "",
    ]
    return lines


def report(args: argparse.Namespace, runs: list[Run]) -> list[str]:
    rate = math.ceil(args.users / args.ramp * 10) / 10
    lines = [
        "# Load report: the acceptance profile of issue 18",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, PostgreSQL + Redis. "
        f"{args.listings:,} listings, {args.accounts} accounts. {args.users:,} users (97 % "
        "phones pulling every 30 s, 5 % of them starting with a full initial sync; 2 % offline "
        "bursts every 60 s; 1 % searching every 10 s) plus one admin at 2 actions a second, "
        f"coming online at {rate:g}/s over {args.ramp:g} s; statistics reset {args.settle:g} s "
        f"after the last started, then {args.run_time:g} s measured. `freshroots serve` with "
        "its default settings (access log on) except RATE_LIMITS=off"
        + (f", --keep-alive {args.keep_alive}" if args.keep_alive is not None else "")
        + "".join(f", {setting}" for setting in args.server_env)
        + (
            ", on a private PostgreSQL primary + streaming replica with DATABASE_REPLICA_URLS"
            if args.replica
            else ""
        )
        + f"; locust in {args.locust_processes} process(es). Server, locust, PostgreSQL and "
        "Redis share the same cores.",
        "",
    ]
    if len(runs) > 1:
        lines += [
            "| server processes | users | req/s | p95 ms (worst type) | failures | server CPU "
            "| CPU ms/request | locust CPU (busiest) | targets |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for run in runs:
            rows = [r for n, r in run.steady["rows"].items() if n != "Aggregated" and r["count"]]
            lines.append(
                f"| {run.processes} | {run.users:,} | {run.requests / run.steady['seconds']:.0f} "
                f"| {max((r['p95'] for r in rows), default=0):.0f} | {run.failures:,} "
                f"| {run.cpu.share('server'):.2f} | {run.cpu_ms_per_request:.2f} "
                f"| {run.cpu.busiest('locust'):.2f} | {'hold' if run.holds else 'do not hold'} |"
            )
        lines.append("")
    for run in runs:
        lines += run_section(run)
    return lines


def raise_file_limit() -> None:
    """10,000 phones hold up to 10,000 sockets in locust and as many in the server (both
    inherit this limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=None, help="locust users (default 10,000)")
    parser.add_argument(
        "--run-time", type=float, default=None, help="seconds measured in steady state (default 60)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1,000 users, 20 s measured"
    )
    parser.add_argument(
        "--processes",
        default="1",
        help="server process counts, one run each: 1 = one `freshroots serve`, N = --workers N "
        "(default 1; '1,2' compares)",
    )
    parser.add_argument(
        "--locust-processes",
        type=int,
        default=None,
        help="locust worker processes (locust's own --processes: a master and N workers); "
        f"default 1 up to {ONE_LOCUST_PROCESS_USERS:,} users, 2 above (one locust process "
        "costs ~0.4 ms of CPU a request here and would be the limit at 10,000 phones)",
    )
    parser.add_argument("--ramp", type=float, default=30.0, help="seconds to start every user")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds after the ramp before measuring"
    )
    parser.add_argument("--listings", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument(
        "--trace",
        action="store_true",
        help="write every request's start, duration and status to the run's folder "
        "(trace.<pid>; a debugging aid, it costs locust CPU)",
    )
    parser.add_argument(
        "--keep-alive",
        type=int,
        default=None,
        metavar="SECONDS",
        help="pass --keep-alive to the server (default: the server's default)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the server on top of its defaults, e.g. SYNC_TAIL_ENTRIES=0 (every "
        "pull reads the database); repeatable; the report names them",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="run on a private PostgreSQL primary + streaming replica with reads routed to it "
        "(DATABASE_REPLICA_URLS), and report the read load on each",
    )
    args = parser.parse_args()
    for setting in args.server_env:
        if "=" not in setting:
            parser.error(f"--server-env takes NAME=VALUE, got {setting!r}")
    if args.users is None:
        args.users = 1000 if args.quick else 10_000
    if args.run_time is None:
        args.run_time = 20.0 if args.quick else 60.0
    if args.locust_processes is None:
        args.locust_processes = 1 if args.users <= ONE_LOCUST_PROCESS_USERS else 2
    if not (real.port_open("127.0.0.1", 5432) and real.port_open("127.0.0.1", 6379)):
        raise SystemExit("needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379")
    if os.environ.pop("LOG_LEVEL", None) is not None:
        print("ignoring LOG_LEVEL: the server runs with its default (the access log on)")
    raise_file_limit()
    REPORTS.mkdir(parents=True, exist_ok=True)
    runs = [run_once(args, int(count)) for count in args.processes.split(",")]
    text = report(args, runs)
    (REPORTS / "report.md").write_text("\n".join(text))
    print(f"\nreport: {REPORTS / 'report.md'}", flush=True)
    if any(run.locust_saturated for run in runs):
        print("!! locust used a full core: the load generator was the limit (see the report)")
    if any(run.cpu.outside_share >= OUTSIDE_WORKLOAD for run in runs):
        print("!! another workload shared the machine: the figures are not clean (see the report)")


if __name__ == "__main__":
    main()
