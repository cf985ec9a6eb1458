"""The reference client's first sync from the catalogue snapshot (protocol v1.1): a download
cut mid-body resumes with Range + If-Range and fetches only the rest; the replica then pulls
from the snapshot's position and ends exactly where a plain first pull ends; later syncs pull
by cursor; an older server without the route gets a plain first pull."""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import brotli
import httpx
import orjson
import pytest

from protocol.client import OfflineQueue, Replica, SyncClient
from protocol.client.snapshot import (
    SNAPSHOT_PATH,
    BadSnapshot,
    PartialSnapshot,
    Snapshot,
    content_range,
    decode,
)
from tests.support.api import Api, client_id, purchase
from tests.support.cutting_proxy import cutting_proxy
from tests.support.replica import build, without_empty

PULL_PATH = "/api/sync/pull"


def client_for(
    base_url: str,
    api: Api,
    tmp_path: Path,
    *,
    name: str = "phone",
    sleeps: list[float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> SyncClient:
    recorded = sleeps if sleeps is not None else []
    return SyncClient(
        base_url,
        token_provider=lambda refresh: api.token or "",
        queue=OfflineQueue(tmp_path / f"{name}-queue.db"),
        replica=Replica(tmp_path / f"{name}-replica.db"),
        sleep=sleep or recorded.append,
        rng=random.Random(7),
        attempts=4,
    )


class Killed(Exception):
    """The app was killed while it waited to retry."""


def killed_while_waiting(seconds: float) -> None:
    raise Killed


def fresh_first_sync(api: Api) -> dict[str, dict[str, dict[str, Any]]]:
    """What a plain first pull builds for this person now."""
    _, pages = api.pull_all()
    return without_empty(build(pages))


def wait_for_snapshot(server: str, ids: set[str], timeout: float = 15) -> None:
    """Until the public document holds these listings (a server may coalesce versions)."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(server + SNAPSHOT_PATH, timeout=30)
        assert response.status_code == 200, response.text
        if ids <= set(response.json()["listings"]["id"]):
            return
        assert time.monotonic() < deadline, f"the snapshot never held {ids}"
        time.sleep(0.2)


def seed_catalogue(admin: Api, count: int = 6) -> None:
    """Enough listings that the document is more than a few hundred bytes."""
    for n in range(count):
        admin.create_listing(title=f"Snapshot lalo {n}", description=f"Récolte du matin {n}")


def test_a_download_cut_mid_body_resumes_with_only_the_rest(
    admin: Api, buyer: Api, server: str, tmp_path: Path
) -> None:
    seed_catalogue(admin)
    sleeps: list[float] = []
    with cutting_proxy(server) as proxy:
        client = client_for(proxy.base_url, buyer, tmp_path, sleeps=sleeps)
        client.sync()
        assert client.pull_until_current() == 0  # current: 304

    # The replica is what a plain first pull builds, and it now stands on a cursor.
    assert without_empty(client.replica.tables()) == fresh_first_sync(buyer)
    assert client.replica.cursor is not None and client.replica.snapshot_position is None
    assert client.replica.partial_snapshot() is None  # the raw bytes were let go

    # First request: the whole document, cut after K bytes. Second: the rest, from byte K.
    first, second = proxy.to(SNAPSHOT_PATH)
    assert first.status == 200 and first.cut and "range" not in first.request_headers
    total = first.content_length
    cut_at = first.body_sent
    assert total is not None and 0 < cut_at < total
    etag = first.response_headers["etag"]
    assert not etag.startswith("W/")
    assert second.request_headers["range"] == f"bytes={cut_at}-"
    assert second.request_headers["if-range"] == etag
    assert second.status == 206 and not second.cut
    assert second.response_headers["content-range"] == f"bytes {cut_at}-{total - 1}/{total}"
    encoding = first.response_headers.get("content-encoding")
    assert encoding in ("br", "gzip")  # asked for "br, gzip"; the bytes resumed are encoded
    assert second.response_headers.get("content-encoding") == encoding
    assert first.body_sent + second.body_sent == total  # only the rest was sent again
    for exchange in (first, second):  # public and cacheable: no credentials sent
        assert "authorization" not in exchange.request_headers
        assert exchange.request_headers["accept-encoding"] == "br, gzip"
    assert len(sleeps) == 1  # one short back-off after the drop

    # Then one pull from the snapshot's position, authenticated; afterwards, by cursor.
    # (More than one page when the catalogue moved after the document the server held.)
    first_pull, *later = proxy.to(PULL_PATH)
    assert "snapshot=" in first_pull.target and "cursor=" not in first_pull.target
    assert first_pull.request_headers["authorization"].startswith("Bearer ")
    assert later and all("cursor=" in pull.target for pull in later)
    assert later[-1].status == 304


def test_changes_after_the_snapshot_reach_the_replica_through_its_first_pull(
    admin: Api, buyer: Api, server: str, tmp_path: Path
) -> None:
    changed = admin.create_listing(title="Giraumon", price=4000, stock=5)
    hidden = admin.create_listing(title="Chouchou")
    gone = admin.create_listing(title="Calebasse")
    bought = admin.create_listing(title="Margoze", stock=7)
    ids = {changed["id"], hidden["id"], gone["id"], bought["id"]}
    wait_for_snapshot(server, ids)

    client = client_for(server, buyer, tmp_path)
    assert client.start_from_snapshot()
    assert client.replica.cursor is None and client.replica.snapshot_position
    assert ids <= set(client.replica.rows("listings"))
    assert client.replica.tables().keys() == {"listings"}

    # Between the download and its first pull: edits, an unpublish, a delete, a new listing,
    # and an order of this buyer's (which also changes a listing's stock).
    assert admin.patch(f"/api/admin/listings/{changed['id']}", json={"price": 4500}).is_success
    assert admin.patch(f"/api/admin/listings/{hidden['id']}", json={"status": "draft"}).is_success
    assert admin.delete(f"/api/admin/listings/{gone['id']}").status_code == 204
    added = admin.create_listing(title="Pipengaille")
    [result] = buyer.push(client_id(), [purchase(1, bought["id"], quantity=2)]).json()["results"]
    assert result["ok"], result

    assert client.pull_until_current(limit=3) >= 1  # small pages: `more` is followed
    assert without_empty(client.replica.tables()) == fresh_first_sync(buyer)
    listings = client.replica.rows("listings")
    assert hidden["id"] not in listings and gone["id"] not in listings
    assert added["id"] in listings
    assert listings[changed["id"]]["price"] == 4500
    assert listings[bought["id"]]["stock"] == 5
    assert len(client.replica.rows("orders")) == 1
    assert client.replica.cursor is not None and client.replica.snapshot_position is None
    assert client.pull_until_current() == 0


def test_later_syncs_pull_by_cursor_without_the_snapshot(
    admin: Api, buyer: Api, server: str, tmp_path: Path
) -> None:
    with cutting_proxy(server, cuts=0) as proxy:
        client = client_for(proxy.base_url, buyer, tmp_path)
        client.sync()
        assert len(proxy.to(SNAPSHOT_PATH)) == 1
        added = admin.create_listing(title="After the first sync")
        seen = len(proxy.exchanges)
        client.replica.close()
        again = client_for(proxy.base_url, buyer, tmp_path)  # an app restart, too
        again.sync()
        again.sync()
        later = proxy.exchanges[seen:]
    assert not any(exchange.path == SNAPSHOT_PATH for exchange in later)
    pulls = [exchange for exchange in later if exchange.path == PULL_PATH]
    assert len(pulls) >= 2
    assert all("cursor=" in pull.target and "snapshot=" not in pull.target for pull in pulls)
    assert pulls[-1].status == 304
    assert added["id"] in again.replica.rows("listings")
    assert without_empty(again.replica.tables()) == fresh_first_sync(buyer)


def test_an_app_restarted_mid_download_resumes_from_the_bytes_it_kept(
    admin: Api, buyer: Api, server: str, tmp_path: Path
) -> None:
    seed_catalogue(admin, 2)
    with cutting_proxy(server) as proxy:
        first = client_for(proxy.base_url, buyer, tmp_path, sleep=killed_while_waiting)
        with pytest.raises(Killed):
            first.sync()  # the connection dropped, and the app died before it retried
        kept = first.replica.partial_snapshot()
        [cut] = proxy.to(SNAPSHOT_PATH)
        assert kept is not None and kept.resumable and len(kept.data) == cut.body_sent
        assert first.replica.cursor is None and first.replica.snapshot_position is None
        first.replica.close()
        first.queue.close()

        again = client_for(proxy.base_url, buyer, tmp_path)  # the same files
        again.sync()
    _, resumed = proxy.to(SNAPSHOT_PATH)
    assert resumed.request_headers["range"] == f"bytes={cut.body_sent}-"
    assert resumed.request_headers["if-range"] == cut.response_headers["etag"]
    assert resumed.status == 206
    assert cut.content_length == cut.body_sent + resumed.body_sent
    assert without_empty(again.replica.tables()) == fresh_first_sync(buyer)


def test_a_stale_if_range_tag_gets_the_whole_current_document(
    admin: Api, buyer: Api, server: str, tmp_path: Path
) -> None:
    with cutting_proxy(server) as proxy:
        first = client_for(proxy.base_url, buyer, tmp_path, sleep=killed_while_waiting)
        with pytest.raises(Killed):
            first.sync()
        kept = first.replica.partial_snapshot()
        assert kept is not None
        # Bytes of a version the server no longer serves: garbage if they were appended to.
        stale = PartialSnapshot('"no-longer-current"', kept.encoding, b"\0" * len(kept.data))
        first.replica.save_partial_snapshot(stale)
        first.replica.close()
        again = client_for(proxy.base_url, buyer, tmp_path)
        again.sync()
    _, restarted = proxy.to(SNAPSHOT_PATH)
    assert restarted.request_headers["if-range"] == '"no-longer-current"'
    assert restarted.status == 200 and restarted.body_sent == restarted.content_length
    assert without_empty(again.replica.tables()) == fresh_first_sync(buyer)


def test_an_older_server_without_the_snapshot_gets_a_plain_first_pull(
    admin: Api, buyer: Api, server: str, tmp_path: Path
) -> None:
    admin.create_listing(title="Plain first pull")
    with cutting_proxy(server, not_found=(SNAPSHOT_PATH,)) as proxy:
        client = client_for(proxy.base_url, buyer, tmp_path)
        client.sync()
    [refused] = proxy.to(SNAPSHOT_PATH)
    assert refused.status == 404
    first_pull = proxy.to(PULL_PATH)[0]
    assert "snapshot=" not in first_pull.target and "cursor=" not in first_pull.target
    assert without_empty(client.replica.tables()) == fresh_first_sync(buyer)


def test_an_admin_starting_from_the_snapshot_also_receives_drafts(
    admin: Api, server: str, tmp_path: Path
) -> None:
    draft = admin.create_listing(title="Draft not in the public document", status="draft")
    client = client_for(server, admin, tmp_path, name="dashboard")
    assert client.start_from_snapshot()
    assert draft["id"] not in client.replica.rows("listings")
    client.pull_until_current()
    assert draft["id"] in client.replica.rows("listings")
    assert without_empty(client.replica.tables()) == fresh_first_sync(admin)


def test_a_position_the_server_does_not_recognise_resets_the_replica(
    admin: Api, buyer: Api, server: str, tmp_path: Path
) -> None:
    admin.create_listing(title="Reset from a bad position")
    client = client_for(server, buyer, tmp_path)
    snapshot = client.download_snapshot()
    assert snapshot is not None
    # A tampered position, and a row the server never had: both must be gone after the pull.
    ghost = {name: [*values, None] for name, values in snapshot.columns.items()}
    ghost["id"][-1] = "ghost-listing"
    middle = len(snapshot.position) // 2
    flipped = "A" if snapshot.position[middle] != "A" else "B"
    tampered = snapshot.position[:middle] + flipped + snapshot.position[middle + 1 :]
    client.replica.load_snapshot(Snapshot(tampered, ghost))
    assert "ghost-listing" in client.replica.rows("listings")
    client.pull_until_current()
    assert "ghost-listing" not in client.replica.rows("listings")
    assert without_empty(client.replica.tables()) == fresh_first_sync(buyer)


def test_the_position_is_replaced_by_the_cursor_in_the_same_transaction(
    tmp_path: Path,
) -> None:
    """Offline: rows and marker move together; a loaded snapshot drops the kept bytes."""
    replica = Replica(tmp_path / "replica.db")
    replica.save_partial_snapshot(PartialSnapshot('"v1"', "br", b"abc"))
    replica.append_partial_snapshot(b"def")
    kept = replica.partial_snapshot()
    assert kept == PartialSnapshot('"v1"', "br", b"abcdef") and kept.resumable
    assert not replace(kept, etag='W/"v1"').resumable
    snapshot = Snapshot("pos-1", {"id": ["a", "b"], "title": ["A", "B"], "stock": [1, 2]})
    replica.load_snapshot(snapshot)
    assert replica.partial_snapshot() is None
    assert replica.snapshot_position == "pos-1" and replica.cursor is None
    assert replica.rows("listings") == {
        "a": {"id": "a", "title": "A", "stock": 1},
        "b": {"id": "b", "title": "B", "stock": 2},
    }
    page = {"cursor": "c1", "more": False, "reset": False, "changes": {}}
    replica.apply({**page, "changes": {"listings": {"patch": [{"id": "a", "stock": 0}]}}})
    assert replica.cursor == "c1" and replica.snapshot_position is None
    assert replica.rows("listings")["a"]["stock"] == 0


# -- offline: the download logic against a stand-in speaking Range / If-Range ----------------


class Dropping(httpx.SyncByteStream):
    """A body whose connection drops after `cut` bytes (None: the whole body)."""

    def __init__(self, body: bytes, cut: int | None) -> None:
        self.body, self.cut = body, cut

    def __iter__(self) -> Iterator[bytes]:
        sent = self.body if self.cut is None else self.body[: self.cut]
        for start in range(0, len(sent), 7):
            yield sent[start : start + 7]
        if self.cut is not None:
            raise httpx.RemoteProtocolError("peer closed connection mid-body")


class StandIn:
    """GET /api/sync/snapshot as PROTOCOL.md describes it (br only), dropping connections."""

    def __init__(
        self, document: dict[str, Any], drops: list[int | None], wrong_start: bool = False
    ) -> None:
        self.raw = brotli.compress(orjson.dumps(document))
        self.etag = '"v1-br"'
        self.drops = drops
        self.wrong_start = wrong_start
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.url.path == SNAPSHOT_PATH and "authorization" not in request.headers
        headers = {"content-encoding": "br", "etag": self.etag, "accept-ranges": "bytes"}
        start, status = 0, 200
        asked = request.headers.get("range")
        if asked and request.headers.get("if-range") == self.etag:
            start, status = int(asked.removeprefix("bytes=").removesuffix("-")), 206
            shown = start + 1 if self.wrong_start else start
            headers["content-range"] = f"bytes {shown}-{len(self.raw) - 1}/{len(self.raw)}"
            self.wrong_start = False
        body = self.raw[start:]
        headers["content-length"] = str(len(body))
        cut = self.drops.pop(0) if self.drops else None
        return httpx.Response(status, headers=headers, stream=Dropping(body, cut))


LISTINGS: dict[str, list[Any]] = {
    "id": [f"l{n}" for n in range(40)],
    "title": [f"Lalo {n}" for n in range(40)],
    "price": [100 * n for n in range(40)],
    "images": [[f"img/{n}"] for n in range(40)],
}
DOCUMENT = {"position": "p-42", "listings": LISTINGS}


def offline_client(stand_in: StandIn, tmp_path: Path, sleeps: list[float]) -> SyncClient:
    http = httpx.Client(base_url="http://snapshot.test", transport=httpx.MockTransport(stand_in))
    return SyncClient(
        "http://snapshot.test",
        token_provider=lambda refresh: "unused",
        queue=OfflineQueue(tmp_path / "queue.db"),
        replica=Replica(tmp_path / "replica.db"),
        http=http,
        sleep=sleeps.append,
        rng=random.Random(7),
        attempts=2,
    )


def test_offline_each_drop_resumes_where_the_bytes_kept_end(tmp_path: Path) -> None:
    first_cut, second_cut = 30, 25
    stand_in = StandIn(DOCUMENT, [first_cut, second_cut, first_cut, second_cut])
    sleeps: list[float] = []
    # Four drops in a row with attempts=2: each one got further, so none is a lost attempt.
    snapshot = offline_client(stand_in, tmp_path, sleeps).download_snapshot()
    assert snapshot == Snapshot("p-42", LISTINGS)
    asked = [request.headers.get("range") for request in stand_in.requests]
    have = [0, first_cut, first_cut + second_cut, 2 * first_cut + second_cut]
    have.append(have[-1] + second_cut)
    assert asked == [None, *(f"bytes={n}-" for n in have[1:])]
    assert all(request.headers["if-range"] == '"v1-br"' for request in stand_in.requests[1:])
    assert len(sleeps) == 4
    assert snapshot.rows()[3] == {"id": "l3", "title": "Lalo 3", "price": 300, "images": ["img/3"]}


def test_offline_a_206_that_does_not_continue_the_bytes_kept_starts_over(tmp_path: Path) -> None:
    stand_in = StandIn(DOCUMENT, [30], wrong_start=True)
    snapshot = offline_client(stand_in, tmp_path, []).download_snapshot()
    assert snapshot == Snapshot("p-42", LISTINGS)
    asked = [request.headers.get("range") for request in stand_in.requests]
    assert asked == [None, "bytes=30-", None]  # the misplaced 206 was dropped, not appended


def test_offline_a_server_without_the_route_means_no_snapshot(tmp_path: Path) -> None:
    def older(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "…"}})

    http = httpx.Client(base_url="http://old.test", transport=httpx.MockTransport(older))
    client = SyncClient(
        "http://old.test",
        token_provider=lambda refresh: "unused",
        queue=OfflineQueue(tmp_path / "queue.db"),
        replica=Replica(tmp_path / "replica.db"),
        http=http,
    )
    assert client.download_snapshot() is None
    assert not client.start_from_snapshot() and client.replica.snapshot_position is None


def test_offline_decoding_and_content_range() -> None:
    body = orjson.dumps(DOCUMENT)
    for raw, encoding in ((brotli.compress(body), "br"), (gzip.compress(body), "gzip")):
        assert decode(raw, encoding).position == "p-42"
    assert decode(body, "identity").columns == LISTINGS
    with pytest.raises(BadSnapshot):
        decode(brotli.compress(body)[:-5], "br")  # incomplete
    uneven = {"position": "p", "listings": {"id": ["a", "b"], "title": ["A"]}}
    with pytest.raises(BadSnapshot):
        decode(orjson.dumps(uneven), "identity")
    assert content_range("bytes 40-99/100") == (40, 99, 100)
    assert content_range("bytes 40-99/*") == (40, 99, None)
    assert content_range(None) is None and content_range("items 1-2/3") is None
