"""The acceptance load profile of issue 18 (locust, FastHttpUser). Run it through
loadtests/run_load.py, which seeds the data, starts the server on loopback and passes:

- LOAD_ACCOUNTS: a file of "<access token> <cursor>" lines, one per seeded account (300);
  the cursor is the change log's head at seeding: these phones synced before the run.
- LOAD_LISTINGS: a file of "<listing id> <price in cents>" lines (the published listings).
- LOAD_ADMIN: an admin access token. LOAD_SEARCH_WORDS: words found in the listing titles.
- LOAD_STATE_DIR, LOAD_SETTLE_SECONDS, LOAD_STEADY_SECONDS: the measured window (below).

The profile: each phone pulls every 30 s from its own cursor (pages of 100, gzip,
If-None-Match on the first page, follows `more`); device n belongs to account n % 300
(~33 devices an account); 1 in 20 phones starts with a full paged initial sync (at once),
the others make their first pull at a random moment of their first 30 s. ~2 % are offline
bursts: every 60 s a batch of 5-20 mutations (purchase requests and interest), sent twice
(the second answer must equal the first), then a pull. ~1 % search every 10 s. One admin
does 2 actions a second, alternating approving a pending order and editing a listing's
stock or price. With 10,000 phones that is ~20 listing changes a second.

Each request type has its own name, so its own p95: "/api/sync/pull" (first page of a
poll), "/api/sync/pull [more]" (follow-up pages), "/api/sync/pull [initial]" (every page
of an initial sync), "/api/sync/push" and "/api/sync/push [resend]", "/api/listings?q=",
and the admin's. A 304 is a success; any other answer than 200/304 is a failure.

The measured window: LOAD_SETTLE_SECONDS after every user has been spawned, the statistics
so far are written to LOAD_STATE_DIR/ramp.json and reset, and LOAD_STATE_DIR/window-start.json
marks the start of the steady window; LOAD_STEADY_SECONDS later the window's statistics go
to steady.json, window-end.json marks its end and locust stops. progress.json is rewritten
every few seconds. Only the master (or the single local process) does this; with locust's
--processes, workers report every 3 s, which blurs the window's edges by up to that, and
each worker numbers its own devices from 0 (accounts stay evenly shared). LOAD_TRACE, if
set, is the path prefix of a per-request trace (one file per locust process).
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gevent
import orjson
from gevent import monkey
from geventhttpclient.connectionpool import ConnectionPool
from locust import FastHttpUser, events, task
from locust.runners import WorkerRunner

# geventhttpclient (2.6) checks that a pooled keep-alive socket is still open with
# select.select(), which refuses a descriptor past 1023 (ValueError, taken as "dead"). Past
# ~1,000 users in one locust process every request then opens a new TCP connection: the load
# generator measures connection set-up, not phones keeping their connection (the server keeps
# an idle one 75 s, more than the 30 s between polls). The same check with poll(2), which
# takes any descriptor; the real poll, not gevent's, since it must not wait.
_poll = monkey.get_original("select", "poll")
_READABLE_OR_GONE = 0x001 | 0x002 | 0x008 | 0x010 | 0x020  # POLLIN, PRI, ERR, HUP, NVAL


def _still_open(self: ConnectionPool, sock: Any) -> bool:
    """An idle keep-alive socket has nothing to read; readable means closed (or dirty)."""
    if sock is None or sock.fileno() < 0:
        return False
    poller = _poll()
    poller.register(sock.fileno(), _READABLE_OR_GONE)
    return not poller.poll(0)


ConnectionPool._is_socket_alive = _still_open  # type: ignore[method-assign]


def _lines(variable: str) -> list[list[str]]:
    path = os.environ.get(variable)
    if not path:
        return []
    return [line.split() for line in Path(path).read_text().splitlines() if line.strip()]


ACCOUNTS = [(parts[0], parts[1]) for parts in _lines("LOAD_ACCOUNTS")]
LISTINGS = [(parts[0], int(parts[1])) for parts in _lines("LOAD_LISTINGS")]
ADMIN = os.environ.get("LOAD_ADMIN", "")
SEARCH_WORDS = os.environ.get("LOAD_SEARCH_WORDS", "pomme letchi fraise miel carotte").split()

PAGE_LIMIT = 100
MAX_PAGES = 200  # a poll never loops forever, even if the server kept saying `more`
PULL_SECONDS = 30.0
BURST_SECONDS = 60.0
SEARCH_SECONDS = 10.0
ADMIN_SECONDS = 0.5
INITIAL_SYNC_EVERY = 20  # 1 device in 20 (5 %) starts from nothing


def pacing(seconds: float) -> Callable[[Any], float]:
    """locust's `constant_pacing`, counted from the first task instead of from the user's
    creation: `constant_pacing` would run the second task `seconds` after the user was
    created whatever on_start waited, and undo the stagger (locust creates the users of a
    second at once, so every phone started in the same second would then poll together).
    A user sets `task_started` when its first task is due (at the end of on_start)."""

    def wait(user: Any) -> float:
        now = time.monotonic()
        user.task_started = max(getattr(user, "task_started", now) + seconds, now)
        return float(user.task_started - now)

    return wait


def json_fields(answer: Any, what: str, *keys: str) -> list[Any] | None:
    """The values of `keys` in a 200 answer's JSON body, the answer marked a success; or None,
    the answer marked a failure saying why."""
    if answer.status_code != 200:
        answer.failure(f"{what} answered {answer.status_code}")
        return None
    try:
        body = orjson.loads(answer.content or b"")
        values = [body[key] for key in keys]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        answer.failure(f"{what} answered 200 without {' and '.join(keys)}")
        return None
    answer.success()
    return values


# Devices of every kind are numbered in the order they start (per locust process); device n
# belongs to account n % len(ACCOUNTS).
_devices = itertools.count()


def next_device() -> int:
    return next(_devices)


def account_of(device: int) -> tuple[str, str]:
    return ACCOUNTS[device % len(ACCOUNTS)]


class Phone(FastHttpUser):
    """What every phone shares: its account, its own cursor and the pull loop."""

    abstract = True

    def start_device(self) -> int:
        device = next_device()
        token, cursor = account_of(device)
        self.cursor: str | None = cursor
        self.pull_headers = {"authorization": f"Bearer {token}", "accept-encoding": "gzip"}
        self.push_headers = {**self.pull_headers, "content-type": "application/json"}
        return device

    def pull(self, first: str = "/api/sync/pull", more: str = "/api/sync/pull [more]") -> None:
        """Pull until `more` is false: If-None-Match on the first page only."""
        name = first
        for page in range(MAX_PAGES):
            target = f"/api/sync/pull?limit={PAGE_LIMIT}"
            headers = self.pull_headers
            if self.cursor is not None:
                target += "&cursor=" + quote(self.cursor, safe="")
                if page == 0:
                    headers = {**headers, "if-none-match": f'"{self.cursor}"'}
            with self.client.get(target, headers=headers, name=name, catch_response=True) as answer:
                if answer.status_code == 304:
                    answer.success()
                    return
                fields = json_fields(answer, "pull", "cursor", "more")
            if fields is None:
                return
            self.cursor = str(fields[0])
            if not fields[1]:
                return
            name = more


class SyncPhone(Phone):
    """A phone in a pocket: pulls every 30 s from its own cursor."""

    weight = 97
    wait_time = pacing(PULL_SECONDS)

    def on_start(self) -> None:
        device = self.start_device()
        if device % INITIAL_SYNC_EVERY == 0:
            # A fresh install: the whole scope, page after page, straight away; its next
            # poll comes 30 s after it began.
            started = time.monotonic()
            self.cursor = None
            self.pull(first="/api/sync/pull [initial]", more="/api/sync/pull [initial]")
            gevent.sleep(max(0.0, PULL_SECONDS - (time.monotonic() - started)))
        else:
            # Phones are not synchronised: the first poll falls anywhere in the first 30 s.
            gevent.sleep(random.uniform(0, PULL_SECONDS))
        self.task_started = time.monotonic()

    @task
    def poll(self) -> None:
        self.pull()


class BurstPhone(Phone):
    """Back online every 60 s with 5-20 queued mutations; the answer is "lost", so it sends
    the same batch again and must get the same outcomes. Then it pulls, as the app does."""

    weight = 2
    wait_time = pacing(BURST_SECONDS)

    def on_start(self) -> None:
        device = self.start_device()
        self.client_id = f"load-{device}-{secrets.token_hex(6)}"
        self.next_id = 1
        gevent.sleep(random.uniform(0, BURST_SECONDS))
        self.task_started = time.monotonic()

    def mutation(self) -> dict[str, Any]:
        mutation_id, self.next_id = self.next_id, self.next_id + 1
        listing_id = random.choice(LISTINGS)[0]
        if random.random() < 0.5:
            return {
                "id": mutation_id,
                "name": "purchase_request",
                "args": {
                    "order_id": "lo-" + secrets.token_hex(8),
                    "payment_method": "cod",
                    "items": [
                        {
                            "item_id": "li-" + secrets.token_hex(8),
                            "listing_id": listing_id,
                            "quantity": 1,
                        }
                    ],
                },
            }
        return {
            "id": mutation_id,
            "name": "express_interest",
            "args": {"interest_id": "lx-" + secrets.token_hex(8), "listing_id": listing_id},
        }

    def push(self, payload: str, name: str) -> Any:
        """The `results` of the answer, or None (reported as a failure)."""
        with self.client.post(
            "/api/sync/push",
            data=payload,
            headers=self.push_headers,
            name=name,
            catch_response=True,
        ) as answer:
            fields = json_fields(answer, "push", "results")
        return None if fields is None else fields[0]

    @task
    def come_online(self) -> None:
        batch = [self.mutation() for _ in range(random.randint(5, 20))]
        payload = orjson.dumps({"client_id": self.client_id, "mutations": batch}).decode()
        first = self.push(payload, "/api/sync/push")
        with self.client.post(
            "/api/sync/push",
            data=payload,
            headers=self.push_headers,
            name="/api/sync/push [resend]",
            catch_response=True,
        ) as again:
            if again.status_code != 200:
                again.failure(f"resent push answered {again.status_code}")
            elif first is not None:
                try:
                    same = orjson.loads(again.content or b"")["results"] == first
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    same = False
                if same:
                    again.success()
                else:
                    again.failure("the resent batch did not get the original outcomes")
            else:
                again.success()
        self.pull()


class Searcher(FastHttpUser):
    """Full-text search every 10 s, with a word that occurs in the listing titles."""

    weight = 1
    wait_time = pacing(SEARCH_SECONDS)

    def on_start(self) -> None:
        gevent.sleep(random.uniform(0, SEARCH_SECONDS))
        self.task_started = time.monotonic()

    @task
    def search(self) -> None:
        word = quote(random.choice(SEARCH_WORDS))
        self.client.get(
            f"/api/listings?q={word}&limit=20",
            headers={"accept-encoding": "gzip"},
            name="/api/listings?q=",
        )


class Admin(FastHttpUser):
    """One admin, 2 actions a second: approve a pending order, edit a listing's stock or
    price, in turn. The pending queue is fetched when the local copy runs out; a 409
    (decided meanwhile) counts as a success. A stock edit is a restock, so purchases
    rarely run out."""

    fixed_count = 1
    wait_time = pacing(ADMIN_SECONDS)

    def on_start(self) -> None:
        self.headers = {
            "authorization": f"Bearer {ADMIN}",
            "content-type": "application/json",
            "accept-encoding": "gzip",
        }
        self.pending: list[str] = []
        self.turn = 0
        self.task_started = time.monotonic()

    def refill(self) -> None:
        with self.client.get(
            "/api/admin/orders?status=pending&limit=100",
            headers=self.headers,
            name="/api/admin/orders?status=pending",
            catch_response=True,
        ) as answer:
            fields = json_fields(answer, "pending orders", "items")
        if fields is None:
            return
        items = fields[0]
        self.pending = [str(item["id"]) for item in reversed(items)]  # oldest last popped

    def approve(self) -> bool:
        if not self.pending:
            self.refill()
        if not self.pending:
            return False
        order_id = self.pending.pop()
        with self.client.put(
            f"/api/admin/orders/{order_id}/approve",
            data="{}",
            headers=self.headers,
            name="/api/admin/orders/{id}/approve",
            catch_response=True,
        ) as answer:
            if answer.status_code in (200, 409):  # 409: already decided (or cancelled)
                answer.success()
            else:
                answer.failure(f"approve answered {answer.status_code}")
        return True

    def edit(self) -> None:
        listing_id, price = random.choice(LISTINGS)
        if random.random() < 0.5:
            kind, values = "stock", {"stock": random.randint(500_000, 1_000_000)}
        else:
            kind, values = "price", {"price": max(100, price + random.choice((-500, 0, 500)))}
        with self.client.patch(
            f"/api/admin/listings/{listing_id}",
            data=orjson.dumps(values).decode(),
            headers=self.headers,
            name=f"/api/admin/listings/{{id}} [{kind}]",
            catch_response=True,
        ) as answer:
            if answer.status_code == 200:
                answer.success()
            else:
                answer.failure(f"listing edit answered {answer.status_code}")

    @task
    def act(self) -> None:
        self.turn += 1
        if self.turn % 2 == 1 and self.approve():
            return
        self.edit()


# -- the measured window ---------------------------------------------------------------------------

_environment: Any = None
_window_opened = False


def _state_path(name: str) -> Path | None:
    directory = os.environ.get("LOAD_STATE_DIR")
    return Path(directory) / name if directory else None


def _write(name: str, data: dict[str, Any]) -> None:
    path = _state_path(name)
    if path is not None:
        partial = path.with_suffix(".part")
        partial.write_bytes(orjson.dumps(data))
        partial.replace(path)  # readers never see half a file


def _snapshot(stats: Any, started: float) -> dict[str, Any]:
    """Per request type: count, failures, percentiles; and the failures by cause."""
    now = time.time()

    def row(entry: Any) -> dict[str, Any]:
        return {
            "method": entry.method or "",
            "count": entry.num_requests,
            "failures": entry.num_failures,
            "p50": entry.get_response_time_percentile(0.50) or 0,
            "p95": entry.get_response_time_percentile(0.95) or 0,
            "p99": entry.get_response_time_percentile(0.99) or 0,
            "avg": entry.avg_response_time,
            "max": entry.max_response_time or 0,
        }

    rows = {name: row(entry) for (name, _method), entry in stats.entries.items()}
    rows["Aggregated"] = row(stats.total)
    errors = [
        {
            "name": error.name,
            "method": error.method,
            "error": str(error.error),
            "count": error.occurrences,
        }
        for error in stats.errors.values()
    ]
    return {
        "started": started,
        "ended": now,
        "seconds": now - started,
        "rows": rows,
        "errors": errors,
    }


def _controls() -> bool:
    runner = _environment.runner if _environment is not None else None
    return runner is not None and not isinstance(runner, WorkerRunner)


@events.init.add_listener  # type: ignore[untyped-decorator]
def _on_init(environment: Any, **_: Any) -> None:
    global _environment
    _environment = environment
    if _controls():
        gevent.spawn(_report_progress, time.time())
    trace = os.environ.get("LOAD_TRACE")
    if trace:
        # One line a request: start (epoch s), time to answer (ms), status, name. A debugging
        # aid (run_load.py --trace): it tells bursts sent by locust from answers held back.
        handle = open(f"{trace}.{os.getpid()}", "a", buffering=1 << 16)  # noqa: SIM115

        def _trace(name: str, response_time: float, **extra: Any) -> None:
            response = extra.get("response")
            status = getattr(response, "status_code", 0) if response is not None else 0
            handle.write(f"{extra.get('start_time', 0):.4f} {response_time:.1f} {status} {name}\n")

        environment.events.request.add_listener(_trace)
        environment.events.quitting.add_listener(lambda **_: handle.close())


def _report_progress(started: float) -> None:
    while True:
        runner = _environment.runner
        total = runner.stats.total
        try:
            p95_now = total.get_current_response_time_percentile(0.95) or 0
        except ValueError:  # no response-time cache in this runner
            p95_now = 0
        _write(
            "progress.json",
            {
                "t": time.time(),
                "elapsed": time.time() - started,
                "users": runner.user_count,
                "requests": total.num_requests,
                "failures": total.num_failures,
                "rps": total.current_rps,
                "p95": p95_now,
            },
        )
        gevent.sleep(2)


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _on_test_start(environment: Any, **_: Any) -> None:
    if _controls():
        _write("test-start.json", {"t": time.time()})


@events.spawning_complete.add_listener  # type: ignore[untyped-decorator]
def _on_spawned(user_count: int, **_: Any) -> None:
    global _window_opened
    if not _controls() or _window_opened:
        return
    _window_opened = True
    _write("spawned.json", {"t": time.time(), "users": user_count})
    settle = float(os.environ.get("LOAD_SETTLE_SECONDS", "30"))
    gevent.spawn_later(settle, _open_window)


def _open_window() -> None:
    runner = _environment.runner
    _write("ramp.json", _snapshot(runner.stats, runner.stats.total.start_time))
    runner.stats.reset_all()
    started = time.time()
    _write("window-start.json", {"t": started})
    steady = float(os.environ.get("LOAD_STEADY_SECONDS", "60"))
    gevent.spawn_later(steady, _close_window, started)


def _close_window(started: float) -> None:
    runner = _environment.runner
    snapshot = _snapshot(runner.stats, started)
    _write("steady.json", snapshot)
    _write("window-end.json", {"t": snapshot["ended"]})
    runner.quit()
