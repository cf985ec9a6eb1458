"""WebSocket storm: thousands of phones opening the live socket at once, with no cursor.

    python loadtests/storm.py [--sockets 5000] [--users 500] [--rate 2000] [--changes 20]

One `freshroots serve` (PostgreSQL + Redis, default settings, a throwaway database with
1,000 listings). `--sockets` sockets of `--users` users (several devices each) connect at
`--rate` per second, each with `cursor: null` (a first sync over the socket), and read until
their catch-up ends (`more: false`). Then `--changes` listing edits, one a second: every
socket must receive every one. Prints handshakes and catch-ups completed, closes and their
codes, catch-up time p50/p99, commit→frame p50/p99/max, frames received of those due, and
the server's RSS per idle socket. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.bench_live import mint, rss_kib  # noqa: E402
from loadtests.seeding import Target, create_admin, with_changelog  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from tests.support import services as real  # noqa: E402
from tests.support.processes import start_server  # noqa: E402


class Tally:
    def __init__(self) -> None:
        self.handshakes = 0
        self.caught_up = 0
        self.catch_up_ms: list[float] = []
        self.closed: collections.Counter[str] = collections.Counter()
        self.arrivals: list[float] = []
        self.frames = 0


async def phone(url: str, token: str, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        socket = await websockets.connect(url, max_size=2**24, compression=None, open_timeout=30)
    except Exception as error:
        tally.closed[f"handshake: {type(error).__name__}"] += 1
        return
    tally.handshakes += 1
    try:
        async with socket:
            await socket.send(orjson.dumps({"type": "hello", "token": token, "cursor": None}))
            while True:
                frame = orjson.loads(await asyncio.wait_for(socket.recv(), 60))
                if frame["type"] == "changes" and not frame["more"]:
                    break
            tally.caught_up += 1
            tally.catch_up_ms.append((time.perf_counter() - started) * 1000)
            # No timeout per receive: thousands of sockets each arming a timer every second
            # would cost this process more than the frames do. `storm` cancels us at the end.
            async for raw in socket:
                received = time.time() * 1000
                frame = orjson.loads(raw)
                if frame["type"] == "ping":
                    await socket.send('{"type":"pong"}')
                    continue
                for patch in frame.get("changes", {}).get("listings", {}).get("patch", []):
                    if "updated_at" in patch:
                        tally.frames += 1
                        tally.arrivals.append(received - patch["updated_at"])
    except asyncio.CancelledError:
        return
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else "none"
        tally.closed[f"closed {code}"] += 1
    except Exception as error:
        tally.closed[type(error).__name__] += 1


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


async def storm(args: argparse.Namespace, base_url: str, pid: int, secret: str, admin: str) -> None:
    url = base_url.replace("http://", "ws://") + "/api/sync/ws"
    users = [f"storm-user-{n}-{secrets.token_hex(3)}" for n in range(args.users)]
    tally = Tally()
    before = rss_kib(pid)
    tasks = []
    wave = max(1, args.rate // 10)  # a wave every 0.1 s
    began = time.perf_counter()
    for first in range(0, args.sockets, wave):
        for n in range(first, min(args.sockets, first + wave)):
            token = mint(secret, users[n % len(users)])
            tasks.append(asyncio.create_task(phone(url, token, tally)))
        await asyncio.sleep(0.1)
    connect_seconds = time.perf_counter() - began
    deadline = time.monotonic() + 120
    while tally.caught_up + sum(tally.closed.values()) < args.sockets:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    caught_up_seconds = time.perf_counter() - began
    await asyncio.sleep(2)
    after = rss_kib(pid)
    print(f"  {args.sockets} sockets opened in {connect_seconds:.1f} s")
    print(
        f"  handshakes {tally.handshakes}, caught up {tally.caught_up} "
        f"(all within {caught_up_seconds:.1f} s); catch-up p50 "
        f"{statistics.median(tally.catch_up_ms or [0]):,.0f} ms, p99 "
        f"{percentile(tally.catch_up_ms, 0.99):,.0f} ms"
    )
    print(f"  closed / failed: {dict(tally.closed) or 'none'}")
    print(f"  server RSS +{(after - before) / max(1, tally.caught_up):,.1f} KiB per idle socket")
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        rows = (await http.get("/api/listings", params={"limit": 1})).json()["items"]
        for change in range(args.changes):
            await http.patch(
                f"/api/admin/listings/{rows[0]['id']}",
                json={"price": 2000 + change},
                headers={"authorization": f"Bearer {admin}"},
            )
            await asyncio.sleep(1)
    await asyncio.sleep(3)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    due = tally.caught_up * args.changes
    print(
        f"  {args.changes} changes, one a second: {tally.frames:,} of {due:,} frames arrived; "
        f"commit->frame p50 {statistics.median(tally.arrivals or [0]):,.0f} ms, "
        f"p99 {percentile(tally.arrivals, 0.99):,.0f} ms, max {max(tally.arrivals or [0]):,.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--rate", type=int, default=2000, help="new sockets per second")
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--listings", type=int, default=1000)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    secret = secrets.token_hex(24)
    database_url = real.create_database()
    prefix = f"frstorm:{secrets.token_hex(3)}:"
    env = {
        "JWT_SECRET": secret,
        "RATE_LIMITS": "off",  # one loopback client plays thousands of phones
        "DATABASE_URL": database_url,
        "REDIS_URL": real.REDIS_URL,
        "REDIS_PREFIX": prefix,
    }
    try:
        upgrade(database_url)
        create_admin(env, "storm-admin@freshroots.test", "storm admin pw", "A")
        from storage.seed import seed_listings

        asyncio.run(with_changelog(Target.of(env), lambda log: seed_listings(log, args.listings)))
        # As a user runs it: the access log on (to a file, read by nobody, like production's).
        server_log = open(Path(tempfile.mkdtemp()) / "server.log", "wb")  # noqa: SIM115
        server = start_server(env, log=server_log, log_level=None)
        try:
            admin = httpx.post(
                f"{server.base_url}/api/auth/login",
                json={"email": "storm-admin@freshroots.test", "password": "storm admin pw"},
            ).json()["access_token"]
            print(
                f"== storm: {args.sockets} sockets, {args.users} users, {args.rate}/s, "
                f"{args.listings} listings, one server process (PostgreSQL + Redis) =="
            )
            asyncio.run(storm(args, server.base_url, server.process.pid, secret, admin))
        finally:
            server.process.terminate()
            server.process.wait(10)
    finally:
        real.drop_database(database_url)
        real.clear_redis_prefix(prefix)


if __name__ == "__main__":
    main()
