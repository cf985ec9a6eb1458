"""The catalogue snapshot (v1.1): one document per catalogue version, fixed bytes per encoding,
resumable with Range, and `pull?snapshot=` starting a device from it."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import brotli
import httpx
import orjson
import pytest

from sync_server.app import create_app
from sync_server.catalogue import CatalogueSnapshots
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.support.api import Api, client_id, login, purchase, register
from tests.support.live_server import run_in_server, serve_in_thread
from tests.support.processes import server_processes
from tests.support.racing import at_once
from tests.support.replica import Replica, build, without_empty
from tests.test_sync_pull import prune_everything, wait_until_pruned_in_tail

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
    once a second unless it heard of a change), so a test sees each version at once. Its
    edge does not shed a herd for event-loop lag (tests/test_admission.py is about that;
    here a busy test machine would make the herd's answers depend on it)."""
    settings = backend.settings(SNAPSHOT_REFRESH_SECONDS="0", ADMISSION_LOOP_LAG_MS="5000")
    with serve_in_thread(create_app(settings)) as base_url:
        yield base_url


def own_snapshots(app: Any, **options: Any) -> CatalogueSnapshots:
    """A CatalogueSnapshots of the test's own on a running server's database and feed: no
    Redis, a look at the catalogue on every request, unless `options` say otherwise."""
    services = app.state.services
    settings: dict[str, Any] = {"shared": None, "refresh_seconds": 0, "grace_seconds": 600}
    return CatalogueSnapshots(
        services.db, services.feed, services.cursors, **{**settings, **options}
    )


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
    assert work["built"] >= 1 and work["compressed"] >= 2
    for encoding in ("br", "gzip", "identity", "br"):
        fetch(buyer.base_url, **{"accept-encoding": encoding})
    assert snapshot_work(buyer.base_url) == work


def snapshot_work(base_url: str) -> dict[str, float]:
    lines = httpx.get(f"{base_url}/metrics").text.splitlines()
    prefix = "freshroots_snapshot_work{kind="
    work = {
        line.split('"')[1]: float(line.split()[-1]) for line in lines if line.startswith(prefix)
    }
    assert set(work) == {"built", "compressed"}
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

    assert prune_everything(backend.env["DATABASE_URL"]) > 0
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
        return own_snapshots(app, refresh_seconds=1.0, clock=lambda: now[0])

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
    previous = fetch(fresh, **{"accept-encoding": "br"})
    admin.on(fresh).create_listing(title=f"Letchi {secrets.token_hex(3)}")  # a new version
    before = snapshot_work(fresh)
    answers = at_once(*[partial(fetch, fresh, **{"accept-encoding": "br"}) for _ in range(40)])
    newest = fetch(fresh, **{"accept-encoding": "br"})
    after = snapshot_work(fresh)
    assert newest.headers["etag"] != previous.headers["etag"]
    assert {answer.status_code for answer in answers} == {200}
    # While the new version's brotli is being made, a request may get the previous one (a
    # valid start, at once) rather than wait: never anything else.
    assert {answer.content for answer in answers} <= {previous.content, newest.content}
    assert {answer.headers["etag"] for answer in answers} <= {
        previous.headers["etag"],
        newest.headers["etag"],
    }
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
    resumes is bounded by bytes as well as by the grace period."""
    document_bytes = len(fetch(fresh, **{"accept-encoding": "identity"}).content)
    now = [1000.0]  # a second between changes: no rebuild is held back for its cost

    async def make(app: Any) -> CatalogueSnapshots:
        # About three replaced versions.
        return own_snapshots(app, keep_bytes=4 * document_bytes, clock=lambda: now[0])

    snapshots = run_in_server(fresh, make)

    async def tag(app: Any) -> str:
        now[0] += 1.0
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
    # The current one always, the newest replaced ones within the bytes allowed, none older.
    dropped = kept.index(True)
    assert 1 <= dropped <= 10 and kept == [False] * dropped + [True] * (12 - dropped)


def test_range_requests_it_does_not_serve_get_the_current_document(buyer: Api) -> None:
    identity = fetch(buyer.base_url, **{"accept-encoding": "identity"})
    current_gzip = fetch(buyer.base_url, **{"accept-encoding": "gzip"})
    for ranges in ("bytes=0-1,5-9", "items=0-5", "bytes=abc"):
        # Several ranges, another unit, or nonsense: ignored, even with a matching If-Range
        # (of another encoding): the whole current document in the encoding asked for, never
        # the tagged representation compressed again under its tag.
        answer = fetch(
            buyer.base_url,
            **{"accept-encoding": "gzip", "range": ranges, "if-range": identity.headers["etag"]},
        )
        assert answer.status_code == 200, ranges
        assert answer.headers["content-encoding"] == "gzip"
        assert answer.headers["etag"] == current_gzip.headers["etag"]
        assert answer.content == current_gzip.content


def test_other_answers_are_still_compressed(admin: Api) -> None:
    """The snapshot's bytes are never re-encoded (no-transform, ranges), and everything else
    above a few hundred bytes still is, whatever its status."""
    response = admin.post(
        "/api/admin/listings",
        json={
            "title": "Miel de letchi",
            "description": "Pot de 500 g, miel de letchi du nord. " * 20,
            "price": 45000,
            "unit": "piece",
            "stock": 4,
            "category": "honey",
            "status": "published",
        },
        headers={"accept-encoding": "gzip"},
    )
    assert response.status_code == 201
    assert response.headers["content-encoding"] == "gzip"


def test_a_replaced_version_resumes_on_an_instance_that_never_built_it(
    services_backend: Backend, admin_email: str
) -> None:
    """With Redis, every encoding of a version — identity too — is shared: a download that
    started on one instance resumes on another that only ever built a newer version."""
    with server_processes(services_backend.env, 2) as (first, second):
        old = {
            encoding: fetch(first.base_url, **{"accept-encoding": encoding})
            for encoding in ("identity", "br")
        }
        login(first.base_url, admin_email, ADMIN_PASSWORD).create_listing(title="Cotomili")
        time.sleep(1.2)  # past the refresh interval, so the second builds the new version
        newer = fetch(second.base_url, **{"accept-encoding": "identity"})
        assert newer.headers["etag"] != old["identity"].headers["etag"]
        for encoding, whole in old.items():
            cut = len(whole.content) // 3
            rest = fetch(
                second.base_url,
                **{
                    "accept-encoding": encoding,
                    "range": f"bytes={cut}-",
                    "if-range": whole.headers["etag"],
                },
            )
            assert rest.status_code == 206, encoding
            assert whole.content[:cut] + rest.content == whole.content


def test_a_request_whose_first_asker_went_away_still_gets_its_answer(fresh: str) -> None:
    async def scenario(app: Any) -> list[str]:
        outcomes = []
        for pause in (0.0, 0.01, 0.03, 0.06):
            snapshots = own_snapshots(app)
            first = asyncio.create_task(snapshots.current("br"))
            await asyncio.sleep(pause)
            second = asyncio.create_task(snapshots.current("br"))
            await asyncio.sleep(pause)
            first.cancel()
            outcomes.append((await second).encoding)
        return outcomes

    assert run_in_server(fresh, scenario) == ["br"] * 4


def test_a_held_version_is_served_while_the_database_hangs(fresh: str) -> None:
    class Hanging:
        """A database that accepts a read and never answers (a network partition)."""

        dialect = "postgresql"

        @contextlib.asynccontextmanager
        async def read(self) -> AsyncIterator[None]:
            await asyncio.sleep(3600)
            yield

    async def scenario(app: Any) -> tuple[str, str, float]:
        snapshots = own_snapshots(app)
        held = await snapshots.current("gzip")
        snapshots.db = Hanging()  # type: ignore[assignment]
        started = time.monotonic()
        answers = [await asyncio.wait_for(snapshots.current("gzip"), 5) for _ in range(5)]
        return held.etag, answers[-1].etag, time.monotonic() - started

    held, served, took = run_in_server(fresh, scenario)
    assert served == held
    assert took < 4  # five requests, none waiting for the hung check beyond a moment
