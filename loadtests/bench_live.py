"""Live-sync benchmark: memory per idle WebSocket and commit→frame latency under fan-out.

    python loadtests/bench_live.py [--subscribers 1,100,1000,5000] [--backend services|embedded]

For each subscriber count N: opens N sockets (distinct users, tokens minted with the
server's secret), waits for catch-up, measures the server's RSS growth per connection,
then makes 5 listing edits through HTTP and records, for every socket, the time from the
edit's `updated_at` (stamped just before commit) to the frame's arrival: p50 / p99 / max.
Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import orjson
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.seeding import Target, create_admin, with_changelog  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from tests.support import services as real  # noqa: E402
from tests.support.processes import start_server  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def mint(secret: str, user_id: str) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": user_id, "role": "user", "iat": now, "exp": now + 3600}, secret, algorithm="HS256"
    )


async def subscriber(
    url: str,
    token: str,
    connected: asyncio.Future[bool],
    arrivals: list[float],
    started: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    try:
        socket = await websockets.connect(url, max_size=2**22, compression=None, open_timeout=60)
        await socket.send(orjson.dumps({"type": "hello", "token": token, "cursor": None}).decode())
        while True:
            frame = orjson.loads(await socket.recv())
            if frame["type"] == "changes" and not frame["more"]:
                break
    except Exception:
        connected.set_result(False)
        return
    connected.set_result(True)
    async with socket:
        await started.wait()
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(socket.recv(), 1)
            except TimeoutError:
                continue
            received = time.time()
            frame = orjson.loads(raw)
            if frame["type"] == "ping":
                await socket.send('{"type":"pong"}')
                continue
            for patch in frame.get("changes", {}).get("listings", {}).get("patch", []):
                if "updated_at" in patch:
                    arrivals.append(received * 1000 - patch["updated_at"])


async def measure(
    base_url: str, pid: int, secret: str, admin_token: str, listing_id: str, count: int
) -> None:
    url = base_url.replace("http://", "ws://") + "/api/sync/ws"
    before = rss_kib(pid)
    started, stop = asyncio.Event(), asyncio.Event()
    arrivals: list[float] = []
    tasks = []
    outcomes: list[asyncio.Future[bool]] = []
    loop = asyncio.get_running_loop()
    for first in range(0, count, 100):  # connect in waves, as phones would, not all at once
        wave = []
        for n in range(first, min(count, first + 100)):
            token = mint(secret, f"bench-user-{n}-{secrets.token_hex(3)}")
            connected: asyncio.Future[bool] = loop.create_future()
            wave.append(connected)
            tasks.append(
                asyncio.create_task(subscriber(url, token, connected, arrivals, started, stop))
            )
        await asyncio.wait_for(asyncio.gather(*wave), 120)
        outcomes += wave
    connected_count = sum(1 for outcome in outcomes if outcome.result())
    await asyncio.sleep(2)
    after = rss_kib(pid)
    started.set()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        for edit in range(5):
            await http.patch(
                f"/api/admin/listings/{listing_id}",
                json={"price": 1000 + edit},
                headers={"authorization": f"Bearer {admin_token}"},
            )
            deadline = time.monotonic() + 30
            while len(arrivals) < connected_count * (edit + 1) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = sorted(arrivals)
    if not latencies:
        print(f"  {count:>5} subscribers: no frames arrived")
        return
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    per_connection = (after - before) / max(1, connected_count)
    print(
        f"  {count:>5} subscribers ({connected_count} connected): RSS +{per_connection:,.1f} "
        f"KiB per idle connection; commit->frame p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, "
        f"max {latencies[-1]:,.0f} ms ({len(latencies)}/{connected_count * 5} frames)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", default="1,100,1000,5000")
    parser.add_argument("--backend", choices=("services", "embedded"), default="services")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    secret = secrets.token_hex(24)
    env = {
        "JWT_SECRET": secret,
        "RATE_LIMITS": "off",
        "BCRYPT_ROUNDS": "10",
        "WS_IMPLEMENTATION": os.environ.get("WS_IMPLEMENTATION", "auto"),
        "LOG_LEVEL": "WARNING",
    }
    cleanups: list[Callable[[], None]] = []
    if args.backend == "services":
        database_url = real.create_database()
        prefix = f"frlive:{secrets.token_hex(3)}:"
        env.update(DATABASE_URL=database_url, REDIS_URL=real.REDIS_URL, REDIS_PREFIX=prefix)

        def drop_services() -> None:
            real.drop_database(database_url)
            real.clear_redis_prefix(prefix)

        cleanups.append(drop_services)
    else:
        env["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/live.db"
    try:
        upgrade(env["DATABASE_URL"])
        create_admin(env, "live-admin@freshroots.test", "live admin pass", "A")
        from storage.seed import seed_listings

        asyncio.run(with_changelog(Target.of(env), lambda log: seed_listings(log, 50)))
        server = start_server(env)
        try:
            http = httpx.Client(base_url=server.base_url)
            admin = http.post(
                "/api/auth/login",
                json={"email": "live-admin@freshroots.test", "password": "live admin pass"},
            ).json()
            rows = http.get("/api/listings", params={"limit": 1}).json()["items"]
            print(f"== live fan-out, {args.backend}, one server process ==")
            for count in (int(n) for n in args.subscribers.split(",")):
                asyncio.run(
                    measure(
                        server.base_url,
                        server.process.pid,
                        secret,
                        admin["access_token"],
                        rows[0]["id"],
                        count,
                    )
                )
        finally:
            server.process.terminate()
            server.process.wait(10)
    finally:
        for cleanup in cleanups:
            cleanup()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    main()
