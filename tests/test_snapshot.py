"""The catalogue snapshot (v1.1): one document per catalogue version, fixed bytes per encoding,
resumable with Range, and `pull?snapshot=` starting a device from it."""

from __future__ import annotations

import asyncio
import gzip
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import brotli
import httpx
import orjson
import pytest

from storage.changelog import prune
from storage.db import Database
from sync_server.app import create_app
from sync_server.catalogue import CatalogueSnapshots
from tests.conftest import Backend
from tests.support.api import Api, client_id, purchase, register
from tests.support.live_server import run_in_server, serve_in_thread
from tests.support.racing import at_once
from tests.support.replica import Replica, build, without_empty
from tests.test_sync_pull import wait_until_pruned_in_tail

SNAPSHOT = "/api/sync/snapshot"
LISTING_FIELDS = {
    "id",
    "title",
    "description",
    "price",
    "unit",
    "stock",
    "category",
    "images",
    "status",
    "updated_at",
}


@pytest.fixture(scope="module")
def fresh(backend: Backend) -> Iterator[str]:
    """A server that looks for a newer catalogue on every request (the default looks at most
    once a second unless it heard of a change), so a test sees each version at once."""
    settings = backend.settings(SNAPSHOT_REFRESH_SECONDS="0")
    with serve_in_thread(create_app(settings)) as base_url:
        yield base_url


def fetch(base_url: str, **headers: str) -> httpx.Response:
    """The response with its body exactly as sent (never decoded: a range of a br body is
    not a br stream)."""
    with httpx.Client(base_url=base_url) as client:
        request = client.build_request("GET", SNAPSHOT, headers=headers)
        response = client.send(request, stream=True)
        response._content = b"".join(response.iter_raw())
        response.close()
        return response


def decoded(response: httpx.Response) -> dict[str, Any]:
    body = response.content
    encoding = response.headers.get("content-encoding")
    if encoding == "br":
        body = brotli.decompress(body)
    elif encoding == "gzip":
        body = gzip.decompress(body)
    document: dict[str, Any] = orjson.loads(body)
    return document


def rows_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    columns = document["listings"]
    count = len(columns["id"])
    assert all(len(values) == count for values in columns.values())
    return {
        columns["id"][i]: {field: values[i] for field, values in columns.items()}
        for i in range(count)
    }


def start_from(api: Api, document: dict[str, Any], limit: int = 200) -> tuple[Replica, list]:
    """What a phone does: the document's listings, then pull?snapshot= and on by cursor."""
    replica: Replica = {"listings": rows_of(document)}
    pages = []
    response = api.get("/api/sync/pull", params={"snapshot": document["position"], "limit": limit})
    assert response.status_code == 200, response.text
    pages.append(response.json())
    if pages[0]["more"]:
        _, rest = api.pull_all(pages[0]["cursor"], limit=limit)
        pages += rest
    return build(pages, replica), pages


def fresh_sync(api: Api) -> Replica:
    _, pages = api.pull_all(limit=1000)
    return without_empty(build(pages))


def test_the_document_is_the_published_catalogue_column_by_column(admin: Api, buyer: Api) -> None:
    admin.create_listing(title="Pipengaille", images=["freshroots/pipengaille"])
    draft = admin.create_listing(title="Brède (draft)", status="draft")
    gone = admin.create_listing(title="Margoz")
    assert admin.delete(f"/api/admin/listings/{gone['id']}").status_code == 204
    buyer.push(client_id(), [purchase(1, gone["id"])])  # refused, but the buyer has a history

    response = fetch(buyer.base_url, **{"accept-encoding": "identity"})
    assert response.status_code == 200
    document = decoded(response)
    assert set(document) == {"position", "listings"}
    assert set(document["listings"]) == LISTING_FIELDS
    assert rows_of(document) == fresh_sync(buyer)["listings"]
    assert draft["id"] not in document["listings"]["id"]
    assert buyer.user is not None and buyer.user["id"].encode() not in response.content
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"].startswith("public, max-age=")
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["accept-ranges"] == "bytes"
    assert not response.headers["etag"].startswith("W/")


def test_each_encoding_is_one_fixed_byte_string_with_its_own_tag(buyer: Api) -> None:
    answers = {
        encoding: [fetch(buyer.base_url, **{"accept-encoding": encoding}) for _ in range(2)]
        for encoding in ("br", "gzip", "identity")
    }
    documents = []
    for encoding, (first, second) in answers.items():
        assert first.headers.get("content-encoding", "identity") == encoding
        assert first.content == second.content and first.headers["etag"] == second.headers["etag"]
        assert int(first.headers["content-length"]) == len(first.content)
        documents.append(decoded(first))
    assert documents[0] == documents[1] == documents[2]
    assert len({first.headers["etag"] for first, _ in answers.values()}) == 3
    sizes = {encoding: len(first.content) for encoding, (first, _) in answers.items()}
    assert sizes["br"] < sizes["gzip"] < sizes["identity"]

    # Built and compressed once per version, never per request.
    work = snapshot_work(buyer.base_url)
    for encoding in ("br", "gzip", "identity", "br"):
        fetch(buyer.base_url, **{"accept-encoding": encoding})
    assert snapshot_work(buyer.base_url) == work


def snapshot_work(base_url: str) -> dict[str, float]:
    lines = httpx.get(f"{base_url}/metrics").text.splitlines()
    prefix = "freshroots_snapshot_work{kind="
    work = {
        line.split('"')[1]: float(line.split()[-1]) for line in lines if line.startswith(prefix)
    }
    assert set(work) == {"built", "compressed"} and work["compressed"] >= 2
    return work


def test_a_cut_download_resumes_with_only_the_rest_byte_for_byte(buyer: Api) -> None:
    whole = fetch(buyer.base_url, **{"accept-encoding": "br"})
    tag, cut = whole.headers["etag"], len(whole.content) * 2 // 5
    rest = fetch(
        buyer.base_url, **{"accept-encoding": "br", "range": f"bytes={cut}-", "if-range": tag}
    )
    assert rest.status_code == 206
    assert rest.headers["content-encoding"] == "br" and rest.headers["etag"] == tag
    assert (
        rest.headers["content-range"]
        == f"bytes {cut}-{len(whole.content) - 1}/{len(whole.content)}"
    )
    assert rest.content == whole.content[cut:]
    assert whole.content[:cut] + rest.content == whole.content
    assert decoded(whole)["listings"]  # the joined bytes are the whole brotli stream

    past_the_end = fetch(
        buyer.base_url,
        **{"accept-encoding": "br", "range": f"bytes={len(whole.content)}-", "if-range": tag},
    )
    assert past_the_end.status_code == 416
    assert past_the_end.headers["content-range"] == f"bytes */{len(whole.content)}"


def test_if_none_match_with_the_current_tag_is_304(buyer: Api) -> None:
    first = fetch(buyer.base_url, **{"accept-encoding": "gzip"})
    again = fetch(
        buyer.base_url, **{"accept-encoding": "gzip", "if-none-match": first.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    # Another encoding's tag names other bytes: the whole document in this one.
    other = fetch(
        buyer.base_url, **{"accept-encoding": "br", "if-none-match": first.headers["etag"]}
    )
    assert other.status_code == 200 and decoded(other) == decoded(first)


def test_a_replaced_version_is_resumed_then_the_phone_pulls_the_difference(
    fresh: str, admin: Api, buyer: Api
) -> None:
    listing = admin.create_listing(title="Calebasse", stock=7)
    old = fetch(fresh, **{"accept-encoding": "br"})
    admin.on(fresh).patch(f"/api/admin/listings/{listing['id']}", json={"stock": 3})
    new = fetch(fresh, **{"accept-encoding": "br"})
    assert new.headers["etag"] != old.headers["etag"]
    assert rows_of(decoded(new))[listing["id"]]["stock"] == 3

    cut = len(old.content) // 2
    rest = fetch(
        fresh,
        **{"accept-encoding": "br", "range": f"bytes={cut}-", "if-range": old.headers["etag"]},
    )
    assert rest.status_code == 206 and old.content[:cut] + rest.content == old.content
    document = decoded(old)
    assert rows_of(document)[listing["id"]]["stock"] == 7
    replica, pages = start_from(buyer.on(fresh), document)
    assert without_empty(replica) == fresh_sync(buyer.on(fresh))
    patches = [
        patch for page in pages for patch in page["changes"].get("listings", {}).get("patch", [])
    ]
    assert {"id": listing["id"], "stock": 3}.items() <= next(
        patch for patch in patches if patch["id"] == listing["id"]
    ).items()


def test_a_stale_if_range_gets_the_whole_current_version(
    backend: Backend, fresh: str, admin: Api
) -> None:
    current = fetch(fresh, **{"accept-encoding": "br"})
    tag = current.headers["etag"]
    forged = tag[:-3] + ("AA" if tag[-3:-1] != "AA" else "BB") + '"'
    for stale in ('"not-ours"', f"W/{tag}", forged, "Wed, 21 Oct 2015 07:28:00 GMT"):
        answer = fetch(fresh, **{"accept-encoding": "br", "range": "bytes=10-", "if-range": stale})
        assert answer.status_code == 200, stale
        assert answer.content == current.content

    # With no grace, a replaced version is not resumed: the whole new one comes instead.
    settings = backend.settings(SNAPSHOT_REFRESH_SECONDS="0", SNAPSHOT_GRACE_SECONDS="0")
    with serve_in_thread(create_app(settings)) as strict:
        old = fetch(strict, **{"accept-encoding": "br"})
        admin.on(strict).create_listing(title="Patole")
        answer = fetch(
            strict,
            **{"accept-encoding": "br", "range": "bytes=10-", "if-range": old.headers["etag"]},
        )
        assert answer.status_code == 200
        assert answer.headers["etag"] != old.headers["etag"]
        assert "Patole" in decoded(answer)["listings"]["title"]


def test_two_instances_serve_the_same_bytes_and_tags(instances: list[str]) -> None:
    for encoding in ("br", "gzip", "identity"):
        first, second = (fetch(url, **{"accept-encoding": encoding}) for url in instances)
        assert first.headers["etag"] == second.headers["etag"]
        assert first.content == second.content
        # A download started on one instance resumes on the other.
        tag, cut = first.headers["etag"], len(first.content) // 3
        rest = fetch(
            instances[1], **{"accept-encoding": encoding, "range": f"bytes={cut}-", "if-range": tag}
        )
        assert rest.status_code == 206 and first.content[:cut] + rest.content == first.content


def test_a_phone_starting_from_an_older_snapshot_converges_to_a_fresh_sync(
    fresh: str, admin: Api, buyer: Api
) -> None:
    admin = admin.on(fresh)
    buyer = buyer.on(fresh)
    kept, changed, hidden = (admin.create_listing(title=f"Lalo {n}", stock=9) for n in range(3))
    assert buyer.push(client_id(), [purchase(1, kept["id"], quantity=2)]).json()["results"][0]["ok"]
    document = decoded(fetch(fresh, **{"accept-encoding": "br"}))

    # After the document's position: stock moves, a listing is hidden, one is new, and the
    # buyer orders again.
    admin.patch(f"/api/admin/listings/{changed['id']}", json={"price": 7500})
    admin.patch(f"/api/admin/listings/{hidden['id']}", json={"status": "draft"})
    added = admin.create_listing(title="Fruit à pain")
    assert buyer.push(client_id(), [purchase(1, changed["id"])]).json()["results"][0]["ok"]

    for limit in (200, 2):
        replica, pages = start_from(buyer, document, limit=limit)
        assert without_empty(replica) == fresh_sync(buyer)
        assert not any(page["reset"] for page in pages)
        listings = replica["listings"]
        assert hidden["id"] not in listings and added["id"] in listings
        assert listings[changed["id"]]["price"] == 7500
        assert len(replica["orders"]) == 2


def test_a_bad_position_gets_a_reset_snapshot(admin: Api, buyer: Api) -> None:
    admin.create_listing(title="Songe")
    document = decoded(fetch(buyer.base_url))
    position = document["position"]
    cursor, _ = buyer.pull_all()
    tampered = position[:-2] + ("AA" if position[-2:] != "AA" else "BB")
    for bad in (tampered, cursor, "!!!", "x", "A" * 500):
        response = buyer.get("/api/sync/pull", params={"snapshot": bad, "limit": 1000})
        assert response.status_code == 200, bad
        page = response.json()
        assert page["reset"] is True
        _, rest = buyer.pull_all(page["cursor"]) if page["more"] else ("", [])
        assert build([page, *rest]) == build(buyer.pull_all()[1])
    # A position is not a cursor, and a request cannot be both.
    assert buyer.get("/api/sync/pull", params={"cursor": position}).status_code == 400
    both = buyer.get("/api/sync/pull", params={"cursor": cursor, "snapshot": position})
    assert both.status_code == 400 and both.json()["error"]["code"] == "invalid_parameter"


def test_an_expired_position_gets_a_reset_snapshot(
    admin: Api, buyer: Api, backend: Backend
) -> None:
    document = decoded(fetch(buyer.base_url))
    for n in range(2):
        admin.create_listing(title=f"Chouchou {n}")

    async def prune_everything() -> int:
        db = Database(backend.env["DATABASE_URL"])
        try:
            return await prune(db, retention_ms=-60_000)
        finally:
            await db.dispose()

    assert asyncio.run(prune_everything()) > 0
    wait_until_pruned_in_tail(buyer.base_url)
    page = buyer.get(
        "/api/sync/pull", params={"snapshot": document["position"], "limit": 1000}
    ).json()
    assert page["reset"] is True
    _, rest = buyer.pull_all(page["cursor"]) if page["more"] else ("", [])
    assert build([page, *rest])["listings"] == fresh_sync(buyer)["listings"]


def test_an_admin_starting_from_the_snapshot_also_gets_the_drafts(admin: Api) -> None:
    draft = admin.create_listing(title="Bringelle (draft)", status="draft")
    document = decoded(fetch(admin.base_url))
    assert draft["id"] not in document["listings"]["id"]
    replica, _ = start_from(admin, document, limit=1000)
    assert draft["id"] in replica["listings"]
    assert without_empty(replica) == fresh_sync(admin)


def test_a_new_version_is_built_at_most_a_burst_then_once_per_interval(
    fresh: str, admin: Api
) -> None:
    """Every purchase moves a listing's stock: a version per change would compress the
    catalogue again and again. Any version is a valid start (the pull brings the rest), so
    rebuilds are rate-limited; the clock here is the test's."""
    now = [1000.0]

    def make(app: Any) -> CatalogueSnapshots:
        services = app.state.services
        return CatalogueSnapshots(
            services.db,
            services.feed,
            services.cursors,
            shared=None,
            refresh_seconds=1.0,
            grace_seconds=600,
            clock=lambda: now[0],
        )

    async def build_one(app: Any) -> CatalogueSnapshots:
        return make(app)

    snapshots = run_in_server(fresh, build_one)

    async def tag(app: Any) -> str:
        return (await snapshots.current("identity")).etag

    admin = admin.on(fresh)
    tags = [run_in_server(fresh, tag)]
    for n in range(8):
        admin.create_listing(title=f"Piment {n} {secrets.token_hex(2)}")
        now[0] += 0.01
        tags.append(run_in_server(fresh, tag))
    # The first build, then a burst of rebuilds, then none until the interval has passed.
    assert snapshots.builds == 1 + 4
    assert len(set(tags)) == 5 and tags[-1] == tags[-2]
    now[0] += 1.0
    assert run_in_server(fresh, tag) != tags[-1]
    assert snapshots.builds == 6


def test_a_herd_of_first_fetches_builds_a_new_version_once(fresh: str, admin: Api) -> None:
    admin.on(fresh).create_listing(title=f"Letchi {secrets.token_hex(3)}")  # a new version
    before = snapshot_work(fresh)
    answers = at_once(*[partial(fetch, fresh, **{"accept-encoding": "br"}) for _ in range(40)])
    after = snapshot_work(fresh)
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.content for answer in answers}) == 1
    assert len({answer.headers["etag"] for answer in answers}) == 1
    assert after["built"] - before["built"] == 1
    assert after["compressed"] - before["compressed"] == 1  # br only: nobody asked for gzip


def test_phones_starting_from_snapshots_while_the_catalogue_changes_converge(
    fresh: str, admin: Api
) -> None:
    """Writers and first syncs really racing: whatever version a phone got and whenever it
    pulls from its position, no change is skipped or applied twice."""
    admin = admin.on(fresh)
    listings = [admin.create_listing(title=f"Ananas {n}", stock=50) for n in range(6)]
    phones = [register(fresh, f"racer{n}") for n in range(4)]
    stop = threading.Event()

    def write() -> int:
        edits = 0
        while not stop.is_set():
            listing = listings[edits % len(listings)]
            changes: dict[str, Any] = {"stock": 50 + edits}
            if edits % 7 == 3:
                changes["status"] = "draft" if edits % 2 else "published"
            admin.patch(f"/api/admin/listings/{listing['id']}", json=changes)
            edits += 1
        return edits

    def start(phone: Api) -> tuple[Replica, str]:
        document = decoded(fetch(fresh, **{"accept-encoding": "br"}))
        replica, pages = start_from(phone, document, limit=3)
        return replica, pages[-1]["cursor"]

    with ThreadPoolExecutor(len(phones) + 1) as pool:
        writer = pool.submit(write)
        started = [(phone, pool.submit(start, phone)) for phone in phones for _ in range(3)]
        replicas = [(phone, *future.result()) for phone, future in started]
        stop.set()
        assert writer.result() > 0
    for phone, replica, cursor in replicas:
        _, pages = phone.pull_all(cursor)
        assert without_empty(build(pages, replica)) == fresh_sync(phone)


def test_replaced_versions_kept_for_resumes_are_bounded(fresh: str, admin: Api) -> None:
    """Under a stream of changes a version a second may be replaced: what is kept for
    resumes is bounded by a count as well as by the grace period."""

    async def make(app: Any) -> CatalogueSnapshots:
        services = app.state.services
        return CatalogueSnapshots(
            services.db,
            services.feed,
            services.cursors,
            shared=None,
            refresh_seconds=0,
            grace_seconds=600,
        )

    snapshots = run_in_server(fresh, make)

    async def tag(app: Any) -> str:
        return (await snapshots.current("gzip")).etag

    async def servable(app: Any, etag: str) -> bool:
        return await snapshots.by_tag(etag) is not None

    admin = admin.on(fresh)
    tags = []
    for n in range(12):
        admin.create_listing(title=f"Thym {n} {secrets.token_hex(2)}")
        tags.append(run_in_server(fresh, tag))
    assert len(set(tags)) == 12
    kept = [run_in_server(fresh, partial(servable, etag=etag)) for etag in tags]
    assert kept == [False] * 3 + [True] * 9  # the current one and the 8 before it
