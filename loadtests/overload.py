"""Overload: many phones pulling back to back while admins edit and a buyer pushes.

    python loadtests/overload.py                      # 1,500 phones, 25 s
    python loadtests/overload.py --phones 200 --seconds 10

Starts one `freshroots serve` with default settings (or those given with `--set`) on
PostgreSQL + Redis in a throwaway database and Redis prefix (seeded with the CLI: `migrate`,
`seed-demo`, `create-admin`), then for `--seconds`:
- `--phones` simulated phones, one keep-alive connection each, pull delta pages back to back
  (first sync, then from their cursor with If-None-Match). A 503 or 429 is honoured as a phone
  would: it waits `Retry-After` (`--hammer`: it retries at once);
- admins edit 20 listings a second (spread over four admin accounts: one account at 20/s
  would exceed the default per-user rate limit of 600 a minute);
- a buyer pushes 5 purchase requests every 0.5 s.
Prints the status counts (every answer that is not 200/304 must be a 429 or 503 carrying
`Retry-After`; anything else, and every connection error, is a violation), the longest wait
for any answer and for a refusal, admin edit and push p50/p95, what the server counted as
shed, and, 5 s after the load stops, the latency of one pull.

Only 127.0.0.1 is ever contacted; every step is bounded in time; the database, the Redis keys
and the server are removed at the end. This script does not import the server's code.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import services as real  # noqa: E402  (psycopg and redis only)

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 30.0
ADMIN_ACCOUNTS = 4
ADMIN_PASSWORD = "overload admin password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def freshroots_command() -> list[str]:
    beside = Path(sys.executable).parent / "freshroots"
    found = str(beside) if beside.exists() else shutil.which("freshroots")
    if found is None:
        raise SystemExit("the `freshroots` command is not installed (pip install -e .)")
    return [found]


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*freshroots_command(), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"freshroots {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def mint_token(secret: str, user_id: str) -> str:
    """An access token as the server issues them (HS256: sub, role, iat, exp): phones that
    signed in long ago. Registering 1,500 accounts would cost minutes of bcrypt."""
    now = int(time.time())
    claims = {"sub": user_id, "role": "user", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


# -- a minimal HTTP/1.1 client for the phones ---------------------------------------------------
# One keep-alive connection per phone, and cheap: the phones share the machine with the
# server, and every cycle spent in a heavyweight client is one the server does not get.


class PhoneConnection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def get(self, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        reused = self.writer is not None
        try:
            return await self._exchange(target, headers)
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            await self.close()
            if not reused or (isinstance(error, asyncio.IncompleteReadError) and error.partial):
                raise
            # The server closed an idle keep-alive connection: any client opens a new one.
            return await self._exchange(target, headers)

    async def _exchange(
        self, target: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None and self.writer is not None
        lines = [f"GET {target} HTTP/1.1", f"host: {HOST}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        response_headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                response_headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in response_headers:
            body = await self.reader.readexactly(int(response_headers["content-length"]))
        elif response_headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            body = b"".join(chunks)
        if response_headers.get("content-encoding") == "gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if response_headers.get("connection", "").lower() == "close":
            await self.close()
        return status, response_headers, body


# -- figures -------------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    refusal_latencies: list[float] = field(default_factory=list)
    violations: collections.Counter[str] = field(default_factory=collections.Counter)

    def record(self, status: int, headers: dict[str, str], seconds: float) -> None:
        self.statuses[str(status)] += 1
        self.latencies.append(seconds)
        if status in (200, 201, 204, 304):
            return
        if status in (429, 503):
            self.refusal_latencies.append(seconds)
            if "retry-after" not in headers:
                self.violations[f"{status} without Retry-After"] += 1
        else:
            self.violations[str(status)] += 1

    def error(self, error: BaseException, seconds: float) -> None:
        name = type(error).__name__
        self.statuses[name] += 1
        self.latencies.append(seconds)
        self.violations[name] += 1


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def retry_after(headers: dict[str, str]) -> float:
    try:
        return max(0.0, float(headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


# -- the actors ------------------------------------------------------------------------------------


class Phone:
    def __init__(self, port: int, token: str) -> None:
        self.connection = PhoneConnection(port)
        self.auth = f"Bearer {token}"
        self.cursor: str | None = None

    async def pull(self) -> tuple[int, dict[str, str], bytes]:
        target = "/api/sync/pull?limit=200"
        headers = {"authorization": self.auth, "accept-encoding": "gzip"}
        if self.cursor:
            target += f"&cursor={self.cursor}"
            headers["if-none-match"] = f'"{self.cursor}"'
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, response_headers, body = await self.connection.get(target, headers)
        if status == 200:
            self.cursor = orjson.loads(body)["cursor"]
        return status, response_headers, body

    async def run(self, until: float, tally: Tally, hammer: bool) -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                status, headers, _ = await self.pull()
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as error:
                tally.error(error, time.monotonic() - started)
                await self.connection.close()
                await asyncio.sleep(1.0)
                continue
            tally.record(status, headers, time.monotonic() - started)
            if status in (429, 503) and not hammer:
                await asyncio.sleep(retry_after(headers) * (0.5 + random.random()))


async def admin_edits(
    http: httpx.AsyncClient, tokens: list[str], listings: list[str], until: float, tally: Tally
) -> None:
    """20 edits a second, open loop: a slow answer does not slow the next edit down."""
    tasks: set[asyncio.Task[None]] = set()
    turn = itertools.count()

    async def edit() -> None:
        n = next(turn)
        started = time.monotonic()
        try:
            response = await http.patch(
                f"/api/admin/listings/{listings[n % len(listings)]}",
                headers={"authorization": f"Bearer {tokens[n % len(tokens)]}"},
                json={"stock": random.randint(100, 1000)},
            )
        except httpx.HTTPError as error:
            tally.error(error, time.monotonic() - started)
            return
        tally.record(response.status_code, dict(response.headers), time.monotonic() - started)

    next_at = time.monotonic()
    while next_at < until:
        task = asyncio.create_task(edit())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += 0.05
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)


async def buyer_pushes(
    http: httpx.AsyncClient, token: str, listings: list[str], until: float, tally: Tally
) -> None:
    """5 purchase requests every 0.5 s from one device, open loop."""
    tasks: set[asyncio.Task[None]] = set()
    client_id = "overload-" + secrets.token_hex(6)
    ids = itertools.count(1)

    async def push() -> None:
        mutations = []
        for _ in range(5):
            n = next(ids)
            mutations.append(
                {
                    "id": n,
                    "name": "purchase_request",
                    "args": {
                        "order_id": f"ovl-{client_id}-{n}",
                        "payment_method": "cod",
                        "items": [
                            {
                                "item_id": f"ovli-{client_id}-{n}",
                                "listing_id": random.choice(listings),
                                "quantity": 1,
                            }
                        ],
                    },
                }
            )
        started = time.monotonic()
        try:
            response = await http.post(
                "/api/sync/push",
                headers={"authorization": f"Bearer {token}"},
                json={"client_id": client_id, "mutations": mutations},
            )
        except httpx.HTTPError as error:
            tally.error(error, time.monotonic() - started)
            return
        tally.record(response.status_code, dict(response.headers), time.monotonic() - started)

    next_at = time.monotonic()
    while next_at < until:
        # One device sends its batches in order (mutation ids must increase): wait for the
        # previous batch when it is still in flight, as the app's queue would.
        if tasks:
            await asyncio.wait(tasks)
        task = asyncio.create_task(push())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += 0.5
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)


# -- the run ---------------------------------------------------------------------------------------


def start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*freshroots_command(), "serve", "--host", HOST, "--port", str(port)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited at start; see {log_path}")
        try:
            if httpx.get(f"http://{HOST}:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready within 30 s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def admission_figures(base_url: str) -> tuple[dict[str, float], dict[str, str]]:
    """What the server counted: shed requests by where/priority, and queueing for a
    database connection by priority (how many waited, and their mean wait)."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    shed = {
        f"{where}/{priority}": float(value)
        for priority, where, value in re.findall(
            r'^freshroots_shed_total\{priority="(\w+)",where="(\w+)"\} (\S+)$', text, re.M
        )
    }
    waits = {}
    for priority in ("low", "normal"):
        count = re.search(
            rf'^freshroots_admission_wait_seconds_count\{{priority="{priority}"\}} (\S+)$',
            text,
            re.M,
        )
        total = re.search(
            rf'^freshroots_admission_wait_seconds_sum\{{priority="{priority}"\}} (\S+)$',
            text,
            re.M,
        )
        if count and total and float(count.group(1)):
            n = float(count.group(1))
            waits[priority] = f"{n:,.0f} waited, mean {ms(float(total.group(1)) / n)}"
        else:
            waits[priority] = "none waited"
    return shed, waits


async def drive(args: argparse.Namespace, port: int, secret: str, base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as http:
        admins = []
        for n in range(ADMIN_ACCOUNTS):
            response = await http.post(
                "/api/auth/login",
                json={"email": f"overload-admin-{n}@freshroots.test", "password": ADMIN_PASSWORD},
            )
            response.raise_for_status()
            admins.append(response.json()["access_token"])
        registered = await http.post(
            "/api/auth/register",
            json={
                "email": f"overload-buyer-{secrets.token_hex(4)}@example.mu",
                "password": "overload buyer password",
                "name": "Overload buyer",
            },
        )
        registered.raise_for_status()
        buyer = registered.json()["access_token"]
        listings: list[str] = []
        cursor: str | None = None
        while len(listings) < args.listings:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/api/listings", params=params)).json()
            listings += [item["id"] for item in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break

        phones = [
            Phone(port, mint_token(secret, "phone-" + secrets.token_hex(6)))
            for _ in range(args.phones)
        ]
        pulls, edits, pushes = Tally(), Tally(), Tally()
        print(
            f"driving {args.phones} phones, 20 admin edits/s and a 5-mutation push every 0.5 s "
            f"for {args.seconds} s ...",
            flush=True,
        )
        started = time.monotonic()
        until = started + args.seconds
        await asyncio.gather(
            *(phone.run(until, pulls, args.hammer) for phone in phones),
            admin_edits(http, admins, listings, until, edits),
            buyer_pushes(http, buyer, listings, until, pushes),
        )
        elapsed = time.monotonic() - started
        for phone in phones:
            await phone.connection.close()

        print(f"\nload ran {elapsed:.1f} s")
        for name, tally in (("pulls", pulls), ("admin edits", edits), ("pushes", pushes)):
            statuses = ", ".join(
                f"{status}: {count:,}" for status, count in sorted(tally.statuses.items())
            )
            count = len(tally.latencies)
            print(f"{name:12} {count:>8,} answers ({count / elapsed:,.0f}/s)  {statuses}")
        every = pulls.latencies + edits.latencies + pushes.latencies
        refusals = pulls.refusal_latencies + edits.refusal_latencies + pushes.refusal_latencies
        print(f"max wait for any answer:      {ms(max(every, default=0))}")
        print(f"max wait for a 503/429:       {ms(max(refusals, default=0))}")
        print(
            f"pull p50 / p95 / p99:         {ms(percentile(pulls.latencies, 0.5))} / "
            f"{ms(percentile(pulls.latencies, 0.95))} / {ms(percentile(pulls.latencies, 0.99))}"
        )
        for name, tally in (("admin edit", edits), ("push", pushes)):
            print(
                f"{name + ' p50 / p95:':30}{ms(percentile(tally.latencies, 0.5))} / "
                f"{ms(percentile(tally.latencies, 0.95))}"
            )
        violations = pulls.violations + edits.violations + pushes.violations
        print(
            f"violations (not 200/304, not 429/503 with Retry-After): {sum(violations.values())}"
            + (f"  {dict(violations)}" if violations else "")
        )
        shed, waits = admission_figures(base_url)
        print(f"shed, as the server counted:  {shed}")
        print(f"queued for a database slot:   {waits}")

        await asyncio.sleep(5)
        probe = phones[0]
        begun = time.monotonic()
        status, _, _ = await probe.pull()
        print(f"one pull 5 s after the load:  {status} in {ms(time.monotonic() - begun)}")
        await probe.connection.close()


def raise_file_limit(wanted: int) -> None:
    """Each phone holds a socket here and one in the server."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=1500)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--listings", type=int, default=200, help="catalogue size to seed")
    parser.add_argument(
        "--hammer", action="store_true", help="phones ignore Retry-After and retry at once"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting to change from its default (repeatable)",
    )
    args = parser.parse_args()
    if not (real.port_open(HOST, 5432) and real.port_open(HOST, 6379)):
        raise SystemExit("needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379")

    database_url = real.create_database()
    prefix = f"overload:{secrets.token_hex(4)}:"
    secret = secrets.token_hex(32)
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": real.REDIS_URL,
        "REDIS_PREFIX": prefix,
        "JWT_SECRET": secret,
        **dict(item.split("=", 1) for item in args.set),
    }
    workdir = Path(tempfile.mkdtemp(prefix="freshroots-overload-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        print("seeding ...", flush=True)
        cli(env, "migrate")
        cli(env, "seed-demo", "--listings", str(args.listings))
        for n in range(ADMIN_ACCOUNTS):
            cli(
                env,
                "create-admin",
                "--email",
                f"overload-admin-{n}@freshroots.test",
                "--password",
                ADMIN_PASSWORD,
            )
        raise_file_limit(2 * args.phones + 256)  # before the server starts: it inherits it
        port = free_port()
        process = start_server(env, port, workdir / "server.log")
        asyncio.run(
            asyncio.wait_for(drive(args, port, secret, f"http://{HOST}:{port}"), args.seconds + 120)
        )
        log_lines = (workdir / "server.log").read_text(errors="replace").splitlines()
        warnings = [
            line for line in log_lines if '"level":"warning"' in line or '"level":"error"' in line
        ]
        print(
            f"server log: {len(log_lines):,} lines, {len(warnings)} warnings or errors "
            f"({workdir / 'server.log'})"
        )
        for line in warnings[:5]:
            print("  " + line[:200])
    finally:
        if process is not None:
            stop_server(process)
        real.drop_database(database_url)
        real.clear_redis_prefix(prefix)


if __name__ == "__main__":
    main()
