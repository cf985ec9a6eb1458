"""Delta-sync benchmark: bytes on the wire and requests/s, as ratios to baselines.

    python loadtests/bench_sync.py [--backend services|embedded|both] [--duration 10]

Prints, for each backend:
- bytes on the wire (status line, headers and body) of a first sync of 300 realistic
  listings: the plain first pull (no cursor, no limit: every page until `more` is false) and
  the v1.1 catalogue snapshot, each in br and gzip, against the information floor (the bare
  values, row by row, brotli at quality 11) and a conventional REST JSON of the same rows
  (camelCase, ISO timestamps, full Cloudinary URLs, nested image objects);
- the snapshot resumed after a cut at 40 % (only the rest is re-sent), and a cached
  snapshot fetch against /healthz, one request at a time;
- bytes of the pull that carries one stock change, and of a pull with nothing new;
- login latency (bcrypt at the production cost) and listing search / filter latency, one
  request at a time;
- requests/s (wrk) of an empty pull, a 50-change pull, the catalogue snapshot and a
  5-mutation push, each as a ratio to a bare Starlette JSON endpoint served by the same
  uvicorn in the same run.

Needs `wrk` (Debian package `wrk`). Traffic goes to 127.0.0.1 only; every run is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import brotli
import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.seeding import Target, create_admin, with_changelog  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.synced import LISTING_WIRE  # noqa: E402
from tests.support import services as real  # noqa: E402
from tests.support.live_server import free_port  # noqa: E402
from tests.support.processes import start_server  # noqa: E402

CLOUDINARY_BASE = "https://res.cloudinary.com/freshroots/image/upload"


def rest_baseline(rows: list[dict[str, Any]]) -> bytes:
    """How a conventional REST API would ship the same listings."""

    def iso(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")

    items = [
        {
            "id": row["id"],
            "title": row["title"],
            "description": row["description"],
            "price": {
                "amount": row["price"] / 100,
                "currency": "MUR",
                "formatted": f"Rs {row['price'] / 100:,.2f}",
            },
            "unit": row["unit"],
            "stockQuantity": row["stock"],
            "category": {"slug": row["category"], "name": row["category"].title()},
            "status": row["status"],
            "images": [
                {
                    "publicId": public_id,
                    "url": f"{CLOUDINARY_BASE}/{public_id}.jpg",
                    "thumbnailUrl": f"{CLOUDINARY_BASE}/c_fill,w_200,h_200/{public_id}.jpg",
                    "width": 1200,
                    "height": 900,
                    "format": "jpg",
                }
                for public_id in row["images"]
            ],
            "createdAt": iso(row["updated_at"]),
            "updatedAt": iso(row["updated_at"]),
        }
        for row in rows
    ]
    return orjson.dumps(
        {"data": items, "meta": {"total": len(items), "page": 1, "perPage": len(items)}}
    )


def wrk(
    url: str,
    duration: int,
    connections: int,
    headers: dict[str, str],
    script: Path | None = None,
    env: dict[str, str] | None = None,
    pid: int | None = None,
) -> tuple[float, str, str, str]:
    """requests/s, p50, p99 and, with `pid`, that process's CPU per request, split into user
    and kernel time (on loopback the kernel's share is the sockets of both ends)."""
    before = process_cpu(pid) if pid else (0.0, 0.0)
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(
        [*command, url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        env={**os.environ, **(env or {})},
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    # Anchored: "91.50%" in the thread statistics must not pass for the 50th percentile.
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        print(f"    warning: {errors.group(1)} non-2xx responses from {url}")
    cpu = ""
    if pid:
        user, system = (
            after - start for after, start in zip(process_cpu(pid), before, strict=True)
        )
        requests = max(rps * duration, 1)
        cpu = (
            f"; server CPU {1e6 * (user + system) / requests:.0f} us a request "
            f"(user {1e6 * user / requests:.0f}, kernel {1e6 * system / requests:.0f})"
        )
    return rps, p50.group(1) if p50 else "?", p99.group(1) if p99 else "?", cpu


def process_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by `pid` and its children (workers)."""
    user = system = 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return user, system
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user += times.user
        system += times.system
    return user, system


def pull(client: httpx.Client, token: str, **params: Any) -> httpx.Response:
    return client.get(
        "/api/sync/pull",
        params=params,
        headers={"authorization": f"Bearer {token}", "accept-encoding": "identity"},
    )


SEARCHES = [
    "pomme d'amour",
    "brede",
    "letchi",
    "giraumon",
    "chouchou",
    "fraise",
    "miel",
    "carotte",
    "ananas",
    "thym",
]


def information_floor(rows: list[dict[str, Any]]) -> int:
    """The bare values of the listings, row by row in id order, brotli at its best: what a
    first sync cannot go below without knowing the data."""
    values = [[row[field] for field in LISTING_WIRE] for row in sorted(rows, key=lambda r: r["id"])]
    return len(brotli.compress(orjson.dumps(values), quality=11))


def on_the_wire(response: httpx.Response, body: bytes) -> int:
    """Status line, header lines and body as HTTP/1.1 sends them."""
    status_line = len(f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n")
    headers = sum(len(name) + len(value) + 4 for name, value in response.headers.raw)
    return status_line + headers + 2 + len(body)


def raw_get(
    client: httpx.Client, path: str, headers: dict[str, str], **params: Any
) -> tuple[httpx.Response, bytes]:
    """A response and its body exactly as sent (a range of a br body does not decode)."""
    with client.stream("GET", path, params=params, headers=headers) as response:
        return response, b"".join(response.iter_raw())


def decode_body(response: httpx.Response, body: bytes) -> Any:
    encoding = response.headers.get("content-encoding")
    if encoding == "br":
        body = brotli.decompress(body)
    elif encoding == "gzip":
        body = gzip.decompress(body)
    return orjson.loads(body)


def first_pull(client: httpx.Client, token: str, encoding: str) -> tuple[int, int]:
    """A plain first pull as an app makes it (no limit: the server sizes the pages):
    (bytes on the wire, pages)."""
    total, pages, cursor = 0, 0, None
    headers = {"authorization": f"Bearer {token}", "accept-encoding": encoding}
    while True:
        params: dict[str, str] = {"cursor": cursor} if cursor else {}
        response, body = raw_get(client, "/api/sync/pull", headers, **params)
        response.raise_for_status()
        total, pages = total + on_the_wire(response, body), pages + 1
        page = decode_body(response, body)
        cursor = page["cursor"]
        if not page["more"]:
            return total, pages


def median_ms(client: httpx.Client, path: str, headers: dict[str, str], count: int = 300) -> float:
    for _ in range(20):  # warm: connection, caches
        client.get(path, headers=headers)
    return statistics.median(
        timed(partial(client.get, path, headers=headers)) for _ in range(count)
    )


def print_first_sync(
    name: str, client: httpx.Client, buyer: str, rows: list[dict[str, Any]]
) -> None:
    floor = information_floor(rows)
    rest = rest_baseline(rows)
    rest_gzip = len(gzip.compress(rest, compresslevel=6, mtime=0))
    rest_br = len(brotli.compress(rest, quality=5))
    print(f"\n== {name}: a first sync of {len(rows)} listings, bytes on the wire ==")
    print(
        f"  information floor (bare values, brotli 11): {floor:,} B; REST baseline "
        f"{rest_gzip:,} B gzip / {rest_br:,} B br ({len(rest):,} B plain)"
    )
    for encoding, rest_bytes in (("br", rest_br), ("gzip", rest_gzip)):
        total, pages = first_pull(client, buyer, encoding)
        print(
            f"  plain first pull, {encoding}: {total:,} B in {pages} page(s) = "
            f"{total / floor:.2f}x floor, {total / rest_bytes:.2f}x REST {encoding}"
        )
    for encoding in ("br", "gzip"):
        response, body = raw_get(client, "/api/sync/snapshot", {"accept-encoding": encoding})
        response.raise_for_status()
        wire = on_the_wire(response, body)
        print(
            f"  snapshot, {encoding}: {wire:,} B ({len(body):,} B body) = "
            f"{wire / floor:.2f}x floor ({len(body) / floor:.2f}x body only)"
        )
    whole_response, whole = raw_get(client, "/api/sync/snapshot", {"accept-encoding": "br"})
    cut = len(whole) * 2 // 5
    tag = whole_response.headers["etag"]
    resume = {"accept-encoding": "br", "range": f"bytes={cut}-", "if-range": tag}
    resumed, rest_body = raw_get(client, "/api/sync/snapshot", resume)
    intact = whole[:cut] + rest_body == whole
    print(
        f"  snapshot cut at 40 % ({cut:,} B received), resumed: {resumed.status_code}, "
        f"{len(rest_body):,} B re-sent ({on_the_wire(resumed, rest_body):,} B on the wire), "
        f"byte-for-byte {'intact' if intact else 'BROKEN'}"
    )
    healthz = median_ms(client, "/healthz", {})
    cached = median_ms(client, "/api/sync/snapshot", {"accept-encoding": "br"})
    print(
        f"  cached snapshot fetch: median {cached:.2f} ms vs /healthz {healthz:.2f} ms "
        f"({cached / healthz:.1f}x), one request at a time"
    )


def timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    call().raise_for_status()
    return (time.perf_counter() - started) * 1000


def session(client: httpx.Client, path: str, body: dict[str, Any]) -> str:
    response = client.post(path, json=body)
    response.raise_for_status()
    return str(response.json()["access_token"])


OUR_CODE = re.compile(r"\((sync_server|storage|protocol)/")


class Profiler:
    """py-spy on the server process during a wrk run: the top frames by own time."""

    def __init__(self, pid: int, duration: int) -> None:
        self.pid, self.duration = pid, duration

    def start(self, label: str) -> tuple[subprocess.Popen[bytes], Path, str]:
        out = Path(tempfile.mkdtemp()) / "stacks.txt"
        process = subprocess.Popen(
            [
                shutil.which("py-spy") or str(Path(sys.prefix) / "bin" / "py-spy"),
                "record",
                "--pid",
                str(self.pid),
                "--duration",
                str(self.duration),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return process, out, label

    def report(self, recording: tuple[subprocess.Popen[bytes], Path, str], top: int = 12) -> None:
        process, out, label = recording
        process.wait(self.duration + 30)
        own: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for line in out.read_text().splitlines():
            stack, _, samples = line.rpartition(" ")
            if not samples.isdigit():
                continue  # py-spy can leave a torn line when the process is busy
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + int(samples)
            # Inclusive time of our own functions (line numbers dropped, once per stack).
            for function in {f.rsplit(":", 1)[0] for f in frames if OUR_CODE.search(f)}:
                inclusive[function] = inclusive.get(function, 0) + int(samples)
            total += int(samples)
        print(f"    py-spy, {label}: top frames by own time ({total} samples)")
        for name, hits in sorted(own.items(), key=lambda item: -item[1])[:top]:
            print(f"      {100 * hits / max(total, 1):5.1f}%  {name[:110]}")
        print(f"    py-spy, {label}: our functions by inclusive time")
        for name, hits in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
            print(f"      {100 * hits / max(total, 1):5.1f}%  {name[:110]})")


def run_backend(
    name: str,
    env: dict[str, str],
    duration: int,
    connections: int,
    profile: bool = False,
    workers: int = 1,
) -> None:
    database = Target.of(env)
    upgrade(env["DATABASE_URL"])
    from storage.seed import seed_listings

    asyncio.run(with_changelog(database, lambda log: seed_listings(log, 300)))
    admin_email = "bench-admin@freshroots.test"
    create_admin(env, admin_email, "bench admin password", "Bench")

    # As a user runs it: the access log on (to a file, read by nobody, like production's).
    server_log = open(Path(tempfile.mkdtemp()) / "server.log", "wb")  # noqa: SIM115
    server = start_server(env, log=server_log, log_level=None)
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, str(ROOT / "loadtests" / "bare_app.py"), str(bare_port)],
        env={**os.environ, **env},
    )
    try:
        time.sleep(1.5)
        client = httpx.Client(base_url=server.base_url, timeout=30)
        admin = session(
            client, "/api/auth/login", {"email": admin_email, "password": "bench admin password"}
        )
        buyer = session(
            client,
            "/api/auth/register",
            {
                "email": f"bench-{secrets.token_hex(4)}@example.mu",
                "password": "bench buyer 1",
                "name": "Bench buyer",
            },
        )
        watcher = session(
            client,
            "/api/auth/register",
            {
                "email": f"watch-{secrets.token_hex(4)}@example.mu",
                "password": "bench buyer 1",
                "name": "Watcher",
            },
        )

        initial = pull(client, buyer, limit=1000).json()
        rows = initial["changes"]["listings"]["put"]
        cursor = initial["cursor"]
        print_first_sync(name, client, buyer, rows)

        # One stock change, as another buyer's phone sees it (a purchase moves public stock).
        watch_cursor = pull(client, watcher, limit=1000).json()["cursor"]
        target = next(row["id"] for row in rows if row["stock"] > 0)
        client.post(
            "/api/sync/push",
            headers={"authorization": f"Bearer {buyer}"},
            json={
                "client_id": "bench-stock-" + secrets.token_hex(4),
                "mutations": [
                    {
                        "id": 1,
                        "name": "purchase_request",
                        "args": {
                            "order_id": "bench-" + secrets.token_hex(6),
                            "payment_method": "cod",
                            "items": [
                                {
                                    "item_id": "item-" + secrets.token_hex(6),
                                    "listing_id": target,
                                    "quantity": 1,
                                }
                            ],
                        },
                    }
                ],
            },
        ).raise_for_status()
        stock_change = pull(client, watcher, cursor=watch_cursor)
        watch_cursor = stock_change.json()["cursor"]
        # An admin edit of the stock also moves `updated_at`.
        client.patch(
            f"/api/admin/listings/{target}",
            json={"stock": 3},
            headers={"authorization": f"Bearer {admin}"},
        ).raise_for_status()
        admin_edit = pull(client, watcher, cursor=watch_cursor)
        watch_cursor = admin_edit.json()["cursor"]
        empty = pull(client, watcher, cursor=watch_cursor)
        not_modified = client.get(
            "/api/sync/pull",
            params={"cursor": watch_cursor},
            headers={"authorization": f"Bearer {watcher}", "if-none-match": f'"{watch_cursor}"'},
        )

        print(f"\n== {name}: bytes on the wire of a change ==")
        print(
            f"  one stock change (a purchase, seen by another buyer): "
            f"{len(stock_change.content)} B body: {stock_change.content.decode()}"
        )
        print(
            f"  one stock change (admin edit, stock + updated_at): {len(admin_edit.content)} B body"
        )
        print(
            f"  pull with nothing new: {len(empty.content)} B body; with If-None-Match: "
            f"{not_modified.status_code}, {len(not_modified.content)} B body"
        )

        print(f"\n== {name}: latency, one request at a time ==")
        login_ms = sorted(
            timed(
                lambda: client.post(
                    "/api/auth/login",
                    json={"email": admin_email, "password": "bench admin password"},
                )
            )
            for _ in range(10)
        )
        print(
            f"  login (bcrypt, {database.bcrypt_rounds} rounds): p50 "
            f"{statistics.median(login_ms):.0f} ms, max {login_ms[-1]:.0f} ms"
        )
        for label, params in (
            ("listing search q= (10 queries x 5)", [{"q": q} for q in SEARCHES] * 5),
            (
                "listing filters (category, price, in_stock)",
                [
                    {"category": c, "max_price": p, "in_stock": "true"}
                    for c in ("vegetables", "fruits", "greens", "herbs", "eggs")
                    for p in (5000, 20000)
                ]
                * 5,
            ),
        ):
            cold = [timed(partial(client.get, "/api/listings", params=q)) for q in params[:10]]
            warm = sorted(
                timed(partial(client.get, "/api/listings", params=q)) for q in params[10:]
            )
            print(
                f"  {label}: first of each {statistics.median(cold):.1f} ms p50; "
                f"repeated (cached) p50 {statistics.median(warm):.1f} ms, "
                f"p95 {warm[int(len(warm) * 0.95) - 1]:.1f} ms"
            )

        # A phone's cursor with 50 listing changes after it, pulled again and again (gzip).
        fifty_cursor = pull(client, watcher, cursor=watch_cursor, limit=1000).json()["cursor"]
        for listing in rows[:50]:
            client.patch(
                f"/api/admin/listings/{listing['id']}",
                json={"stock": 1_000_000},
                headers={"authorization": f"Bearer {admin}"},
            ).raise_for_status()
        time.sleep(0.5)  # the server's hub reads the commits once, into its shared tail
        fifty = pull(client, watcher, cursor=fifty_cursor, limit=100).json()
        changed = sum(len(v) for t in fifty["changes"].values() for v in t.values())
        empty_cursor = pull(client, buyer, cursor=cursor, limit=1000).json()["cursor"]
        while True:
            page = pull(client, buyer, cursor=empty_cursor, limit=1000).json()
            empty_cursor = page["cursor"]
            if not page["more"] and not page["changes"]:
                break

        print(
            f"\n== {name}: requests/s (wrk, 2 threads, {connections} connections, "
            f"{duration}s each) =="
        )
        bare_rps, bare_p50, bare_p99, bare_cpu = wrk(
            f"http://127.0.0.1:{bare_port}/bare", duration, connections, {}, pid=bare.pid
        )
        print(
            f"  bare Starlette JSON endpoint: {bare_rps:,.0f} req/s (p50 {bare_p50}, "
            f"p99 {bare_p99}){bare_cpu}"
        )
        auth = {"Authorization": f"Bearer {buyer}"}
        profiler = Profiler(server.process.pid, duration) if profile else None
        for label, url, headers in (
            ("empty pull", f"{server.base_url}/api/sync/pull?cursor={empty_cursor}", auth),
            (
                "304 poll (If-None-Match)",
                f"{server.base_url}/api/sync/pull?cursor={empty_cursor}",
                {**auth, "If-None-Match": f'"{empty_cursor}"'},
            ),
            (
                f"{changed}-change pull, gzip",
                f"{server.base_url}/api/sync/pull?cursor={fifty_cursor}&limit=100",
                {"Authorization": f"Bearer {watcher}", "Accept-Encoding": "gzip"},
            ),
            (
                "catalogue snapshot, br (no cache in front)",
                f"{server.base_url}/api/sync/snapshot",
                {"Accept-Encoding": "br"},
            ),
        ):
            recording = profiler.start(label) if profiler else None
            rps, p50, p99, cpu = wrk(url, duration, connections, headers, pid=server.process.pid)
            print(
                f"  {label}: {rps:,.0f} req/s = {rps / bare_rps:.2f}x bare (p50 {p50}, p99 {p99})"
                + cpu
            )
            if profiler and recording:
                profiler.report(recording)
        listings = ",".join(listing["id"] for listing in rows[:50])
        rps, p50, p99, cpu = wrk(
            f"{server.base_url}/api/sync/push",
            duration,
            connections,
            {},
            script=ROOT / "loadtests" / "push.lua",
            env={"LISTINGS": listings, "TOKEN": buyer},
        )
        print(
            f"  5-mutation push: {rps:,.0f} req/s = {rps / bare_rps:.2f}x bare (p50 {p50}, "
            f"p99 {p99}){cpu}"
        )
        if workers > 1:
            compare_workers(
                env, server, client, admin, watcher, rows, workers, duration, connections
            )
    finally:
        bare.terminate()
        server.process.terminate()
        server.process.wait(10)
        bare.wait(10)


def compare_workers(
    env: dict[str, str],
    single: Any,
    client: httpx.Client,
    admin: str,
    watcher: str,
    rows: list[dict[str, Any]],
    workers: int,
    duration: int,
    connections: int,
) -> None:
    """The same 50-change gzip pull against one process and against `serve --workers N`.
    The changes are made after both started, so every worker's tail holds them (a process
    answers cursors older than its start from the database, once)."""
    log = open(Path(tempfile.mkdtemp()) / "workers.log", "wb")  # noqa: SIM115
    several = start_server(env, log=log, log_level=None, serve_args=["--workers", str(workers)])
    try:
        time.sleep(2)  # every worker up and subscribed
        cursor = pull(client, watcher, limit=1000).json()["cursor"]
        while True:
            page = pull(client, watcher, cursor=cursor, limit=1000).json()
            cursor = page["cursor"]
            if not page["more"]:
                break
        for listing in rows[50:100]:
            client.patch(
                f"/api/admin/listings/{listing['id']}",
                json={"stock": 999_999},
                headers={"authorization": f"Bearer {admin}"},
            ).raise_for_status()
        time.sleep(1)
        headers = {"Authorization": f"Bearer {watcher}", "Accept-Encoding": "gzip"}
        print(f"\n== --workers {workers} vs one process: 50-change gzip pull ==")
        rates = []
        for label, base_url, pid in (
            ("one process", single.base_url, single.process.pid),
            (f"{workers} workers", several.base_url, several.process.pid),
        ):
            rps, p50, p99, cpu = wrk(
                f"{base_url}/api/sync/pull?cursor={cursor}&limit=100",
                duration,
                connections,
                headers,
                pid=pid,
            )
            rates.append(rps)
            print(f"  {label}: {rps:,.0f} req/s (p50 {p50}, p99 {p99}){cpu}")
        print(f"  {workers} workers / one process: {rates[1] / rates[0]:.2f}x")
    finally:
        several.process.terminate()
        several.process.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("services", "embedded", "both"), default="both")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server during each pull run"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also compare `serve --workers N` with one process (PostgreSQL + Redis only)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required: apt-get install wrk")
    base = {
        "JWT_SECRET": secrets.token_hex(24),
        "RATE_LIMITS": "off",
        "BCRYPT_ROUNDS": "12",  # the production default, so the login figure is real
        # Everything else as a user runs it: the access log on, default pool and tail.
    }
    if args.backend in ("embedded", "both"):
        with tempfile.TemporaryDirectory() as directory:
            env = {**base, "DATABASE_URL": f"sqlite:///{directory}/bench.db"}
            run_backend(
                "embedded (SQLite, in-process cache)",
                env,
                args.duration,
                args.connections,
                args.profile,
            )
    if args.backend in ("services", "both"):
        database_url = real.create_database()
        prefix = f"frbench:{secrets.token_hex(3)}:"
        try:
            env = {
                **base,
                "DATABASE_URL": database_url,
                "REDIS_URL": real.REDIS_URL,
                "REDIS_PREFIX": prefix,
            }
            run_backend(
                "PostgreSQL + Redis",
                env,
                args.duration,
                args.connections,
                args.profile,
                args.workers,
            )
        finally:
            real.drop_database(database_url)
            real.clear_redis_prefix(prefix)


if __name__ == "__main__":
    main()
