"""The edge cache of the catalogue snapshot (deploy/nginx/snapshot-cache*.conf, included by
deploy/nginx.conf): the shipped snippets in a real nginx in front of a real `freshroots
serve` with a demo catalogue.

What it guarantees: a herd of first fetches costs the app one request; each encoding is its
own cached variant, whatever the spelling of Accept-Encoding; a resumed download (Range,
If-Range) and a revalidation (If-None-Match) are answered by nginx from the cached bytes; an
expired entry is revalidated without a second download; while the app is down, phones get
the last version.

What reached the app is read from its own access log. Both backends run: whether the answer
is cacheable (its headers, one fixed byte string per version) is up to the app, on each.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest

from tests.conftest import Backend, fresh_backend
from tests.support.nginx import Nginx, link_snippets, nginx_binary, running_nginx
from tests.support.processes import ServerProcess, start_server
from tests.support.services import services_required

SNAPSHOT = "/api/sync/snapshot"
LISTINGS = 400
HERD = 200
# nginx keeps an entry's expiry in whole seconds and expires it only once that second is
# over: max-age=1 has surely run out 2 s after the entry was written.
EXPIRY = 2.2
SECURITY_HEADERS = (
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "cross-origin-opener-policy",
)


@pytest.fixture(scope="module", autouse=True)
def nginx_installed() -> None:
    if nginx_binary() is None:
        message = "nginx is not installed (Debian: apt-get install nginx)"
        if services_required():
            pytest.fail(f"REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)


# ---- the app, nginx, a client -----------------------------------------------------------


@dataclass
class Origin:
    """A `freshroots serve` process whose access log is a file, to see what reached it."""

    server: ServerProcess
    log: Path

    def snapshot_statuses(self) -> list[int]:
        """The status of every snapshot request the app has answered (and logged: 304s are
        logged at DEBUG, so these are its 200s and errors)."""
        # Lines reach the file in order: once this request's line is there, so is every
        # earlier one.
        marker = f"marker-{secrets.token_hex(6)}"
        httpx.get(f"{self.server.base_url}/healthz", headers={"x-request-id": marker})
        deadline = time.monotonic() + 5
        while marker not in self.log.read_text():
            assert time.monotonic() < deadline, "the app's access line never reached its log"
            time.sleep(0.02)
        lines = [line for line in self.log.read_text().splitlines() if SNAPSHOT in line]
        return [entry["status"] for entry in map(json.loads, lines) if entry["path"] == SNAPSHOT]


@contextmanager
def running_origin(env: dict[str, str], directory: Path, max_age: int) -> Iterator[Origin]:
    log = directory / "origin.log"
    with log.open("wb") as sink:
        server = start_server(
            {**env, "SNAPSHOT_MAX_AGE_SECONDS": str(max_age)}, log=sink, log_level="INFO"
        )
        try:
            yield Origin(server, log)
        finally:
            if server.process.poll() is None:
                server.process.terminate()
                server.process.wait(timeout=15)


@contextmanager
def running_edge(origin: Origin, directory: Path) -> Iterator[Nginx]:
    """nginx, empty cache, with the snapshot snippets included as deploy/nginx.conf does."""
    directory.mkdir()
    link_snippets(directory)
    with running_nginx(
        directory,
        http="include freshroots/snapshot-cache-http.conf;",
        server=f"set $freshroots_app {origin.server.base_url};\n"
        "include freshroots/snapshot-cache.conf;",
    ) as nginx:
        yield nginx


@pytest.fixture(scope="module")
def catalogue(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A database of its own with a demo catalogue: a snapshot of some size (the session's
    shared database is nearly empty, and stays out of this)."""
    with fresh_backend(backend.name, tmp_path_factory.mktemp("catalogue")) as private:
        subprocess.run(
            [sys.executable, "-m", "sync_server.cli", "seed-demo", "--listings", str(LISTINGS)],
            env={**os.environ, **private.env},
            check=True,
            capture_output=True,
        )
        yield private


@pytest.fixture(scope="module")
def origin(catalogue: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    # A max-age far longer than these tests: nothing expires unless a test wants it to.
    with running_origin(catalogue.env, tmp_path_factory.mktemp("origin"), max_age=600) as made:
        yield made


@pytest.fixture
def edge(origin: Origin, tmp_path: Path) -> Iterator[str]:
    """The snapshot's URL through a fresh nginx (an empty cache) in front of `origin`."""
    with running_edge(origin, tmp_path / "nginx") as nginx:
        yield nginx.base_url + SNAPSHOT


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as made:
        yield made


@dataclass
class Fetched:
    status: int
    headers: httpx.Headers
    body: bytes  # as sent, still compressed

    @property
    def cache(self) -> str:
        return str(self.headers.get("x-cache-status", ""))

    def document(self) -> Any:
        encoding = self.headers.get("content-encoding")
        decompress = {"br": brotli.decompress, "gzip": gzip.decompress}
        return json.loads(decompress[encoding](self.body) if encoding else self.body)


def fetch(client: httpx.Client, url: str, accept_encoding: str = "br", **headers: str) -> Fetched:
    """GET with that Accept-Encoding (and `headers`, `_` for `-` in names); the raw body."""
    sent = {"accept-encoding": accept_encoding}
    sent.update({name.replace("_", "-"): value for name, value in headers.items()})
    with client.stream("GET", url, headers=sent) as response:
        return Fetched(response.status_code, response.headers, b"".join(response.iter_raw()))


# ---- the tests ----------------------------------------------------------------------------


def test_a_herd_of_first_fetches_costs_the_app_one_request(edge: str, origin: Origin) -> None:
    before = len(origin.snapshot_statuses())
    start = threading.Barrier(HERD)

    def one_phone(client: httpx.Client) -> Fetched:
        start.wait(timeout=30)
        return fetch(client, edge)

    limits = httpx.Limits(max_connections=HERD, max_keepalive_connections=HERD)
    with (
        httpx.Client(timeout=60, limits=limits) as client,
        ThreadPoolExecutor(HERD) as pool,
    ):
        answers = list(pool.map(one_phone, [client] * HERD))

    assert Counter(answer.status for answer in answers) == {200: HERD}
    assert len({answer.body for answer in answers}) == 1
    assert len({answer.headers["etag"] for answer in answers}) == 1
    assert {answer.headers["content-encoding"] for answer in answers} == {"br"}
    # One filled the cache; the rest waited on its lock and were answered from the cache.
    assert Counter(answer.cache for answer in answers) == {"MISS": 1, "HIT": HERD - 1}
    assert origin.snapshot_statuses()[before:] == [200]
    listings = answers[0].document()["listings"]
    assert len(listings["id"]) > LISTINGS // 2
    assert {len(column) for column in listings.values()} == {len(listings["id"])}


def test_a_resume_and_a_revalidation_are_answered_from_the_cache(
    edge: str, origin: Origin, client: httpx.Client
) -> None:
    # A phone got part of the document, then the connection dropped; it resumes through an
    # edge that does not have the document yet (say, it was evicted).
    whole = fetch(client, origin.server.base_url + SNAPSHOT)
    etag, size = whole.headers["etag"], len(whole.body)
    cut = size // 3
    before = len(origin.snapshot_statuses())

    resumed = fetch(client, edge, range=f"bytes={cut}-", if_range=etag)
    assert (resumed.status, resumed.cache) == (206, "MISS")
    assert resumed.body == whole.body[cut:]
    assert resumed.headers["content-range"] == f"bytes {cut}-{size - 1}/{size}"
    assert (resumed.headers["content-encoding"], resumed.headers["etag"]) == ("br", etag)
    # nginx did not pass the Range on: it fetched the whole representation, cached it, and
    # cut the rest out of it.
    assert origin.snapshot_statuses()[before:] == [200]

    again = fetch(client, edge, range=f"bytes={cut}-", if_range=etag)
    assert (again.status, again.body) == (206, resumed.body)

    # A tag that is no longer current: the whole current representation.
    outdated = fetch(client, edge, range=f"bytes={cut}-", if_range='"an-older-version"')
    assert (outdated.status, outdated.body) == (200, whole.body)

    unchanged = fetch(client, edge, if_none_match=etag)
    assert (unchanged.status, unchanged.body, unchanged.headers["etag"]) == (304, b"", etag)

    # All answered by nginx itself (HIT: no request to the app at all).
    assert [answer.cache for answer in (again, outdated, unchanged)] == ["HIT"] * 3
    assert origin.snapshot_statuses()[before:] == [200]


def test_each_encoding_is_a_variant_of_its_own(
    edge: str, origin: Origin, client: httpx.Client
) -> None:
    before = len(origin.snapshot_statuses())
    # (Accept-Encoding, the encoding the app picks for it, what the cache does)
    spellings = [
        ("br", "br", "MISS"),
        ("gzip, deflate, br", "br", "HIT"),  # another spelling, the same variant
        ("gzip", "gzip", "MISS"),
        ("GZIP, deflate", "gzip", "HIT"),
        ("identity", None, "MISS"),
        ("deflate", None, "HIT"),
    ]
    variants: dict[str | None, Fetched] = {}
    for accept_encoding, encoding, cache in spellings:
        answer = fetch(client, edge, accept_encoding)
        got = (answer.status, answer.headers.get("content-encoding"), answer.cache)
        assert got == (200, encoding, cache), accept_encoding
        assert answer.body == variants.setdefault(encoding, answer).body, accept_encoding
    assert origin.snapshot_statuses()[before:] == [200, 200, 200]

    # One document, three representations, each with its own tag.
    assert len({json.dumps(answer.document()) for answer in variants.values()}) == 1
    assert len({answer.headers["etag"] for answer in variants.values()}) == 3

    # A query string is not part of the key: it cannot bypass the cache.
    busted = fetch(client, f"{edge}?v={secrets.token_hex(4)}")
    assert (busted.cache, busted.body) == ("HIT", variants["br"].body)
    assert origin.snapshot_statuses()[before:] == [200, 200, 200]

    # Headers of an answer from the cache: the security headers once each (as on every
    # route), a request id of its own, the app's Vary and Cache-Control.
    first, again = fetch(client, edge), fetch(client, edge)
    for name in (*SECURITY_HEADERS, "x-request-id", "x-cache-status"):
        assert len(again.headers.get_list(name)) == 1, name
    assert first.headers["x-request-id"] != again.headers["x-request-id"]
    assert again.headers["vary"] == "Accept-Encoding"
    assert again.headers["cache-control"] == "public, max-age=600, no-transform"


def test_an_expired_copy_is_revalidated_and_served_while_the_app_is_down(
    catalogue: Backend, tmp_path: Path, client: httpx.Client
) -> None:
    with (
        running_origin(catalogue.env, tmp_path, max_age=1) as origin,
        running_edge(origin, tmp_path / "nginx") as nginx,
    ):
        url = nginx.base_url + SNAPSHOT
        first = fetch(client, url)
        assert first.cache == "MISS"

        # Expired: served at once, revalidated in the background (the catalogue did not
        # change: a 304, not a second download), then fresh again.
        time.sleep(EXPIRY)
        expired = fetch(client, url)
        assert (expired.cache, expired.body) == ("STALE", first.body)
        assert _eventually(lambda: fetch(client, url).cache == "HIT")
        assert origin.snapshot_statuses() == [200]

        origin.server.kill()
        time.sleep(EXPIRY)
        for _ in range(3):
            down = fetch(client, url)
            assert (down.status, down.cache, down.body) == (200, "STALE", first.body)
            assert down.headers["etag"] == first.headers["etag"]


def _eventually(check: Callable[[], bool], seconds: float = 1.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
