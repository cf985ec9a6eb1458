"""Sync loop: push the queue, then pull until current; retry what is transient, with jitter.

Transient means the request may not have been applied (network error, timeout, 429, 5xx):
the mutations stay queued and are sent again, which is safe because the server applies each
mutation id at most once. Waits grow exponentially with full jitter ("AWS backoff"), so a
neighbourhood of phones coming back online does not hammer the server in step.

A first sync (no cursor) starts from the public catalogue snapshot when the server has one
(protocol v1.1): `download_snapshot` fetches it as raw bytes and resumes a cut download with
`Range` + `If-Range`, `Replica.load_snapshot` stores its listings with its position, and
`pull_until_current` then pulls `?snapshot=<position>` and continues by cursor. A server
without the snapshot route (404) gets the plain first pull.
"""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from protocol.client.queue import OfflineQueue
from protocol.client.replica import Replica
from protocol.client.snapshot import (
    ACCEPT_ENCODING,
    SNAPSHOT_PATH,
    BadSnapshot,
    PartialSnapshot,
    Snapshot,
    content_encoding,
    content_range,
    decode,
)

GZIP_ABOVE_BYTES = 1024
# Raw snapshot bytes are written to the replica in pieces of about this size (and whatever was
# received when a connection drops), so an app killed mid-download loses at most this much.
SNAPSHOT_FLUSH_BYTES = 256 * 1024
# Answers of a server that has no snapshot route (older than v1.1): start with a plain pull.
NO_SNAPSHOT_STATUSES = frozenset({404, 405, 410, 501})
_ABSENT = object()  # _fetch_snapshot: the server has no snapshot route


class TransientError(Exception):
    """Nothing final happened; try again later."""


class SyncClient:
    def __init__(
        self,
        base_url: str,
        *,
        token_provider: Callable[[bool], str],
        queue: OfflineQueue,
        replica: Replica,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
    ) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=20)
        self.token_provider = token_provider
        self.queue = queue
        self.replica = replica
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request with backoff on transient failures and one token refresh on 401."""
        refreshed = False
        for attempt in range(self.attempts):
            headers = {
                "authorization": f"Bearer {self.token_provider(False)}",
                "accept-encoding": "gzip, br",
                **kwargs.pop("headers", {}),
            }
            kwargs["headers"] = headers
            retry_after: float | None = None
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                response = None
            if response is not None:
                if response.status_code == 401 and not refreshed:
                    self.token_provider(True)
                    refreshed = True
                    continue
                if response.status_code != 429 and response.status_code < 500:
                    return response
                header = response.headers.get("retry-after")
                retry_after = float(header) if header and header.isdigit() else None
            if attempt == self.attempts - 1:
                break
            self._back_off(attempt, retry_after)
        raise TransientError(f"{method} {path} did not get a final answer")

    def _back_off(self, attempt: int, retry_after: float | None = None) -> None:
        """Full jitter: a uniform wait up to an exponentially growing ceiling."""
        ceiling = min(self.max_delay, self.base_delay * 2**attempt)
        delay = self.rng.uniform(0, ceiling)
        self.sleep(max(delay, retry_after or 0.0))

    def push_pending(self, batch_size: int = 50) -> list[dict[str, Any]]:
        """Send queued mutations until the queue is empty; returns every outcome."""
        outcomes: list[dict[str, Any]] = []
        while True:
            batch = self.queue.pending(batch_size)
            if not batch:
                return outcomes
            body = orjson.dumps({"client_id": self.queue.client_id, "mutations": batch})
            headers = {"content-type": "application/json"}
            if len(body) > GZIP_ABOVE_BYTES:  # the uplink is the slow direction
                body = gzip.compress(body)
                headers["content-encoding"] = "gzip"
            response = self._send("POST", "/api/sync/push", content=body, headers=headers)
            if response.status_code != 200:
                raise TransientError(f"push answered {response.status_code}: {response.text}")
            results = response.json()["results"]
            self.queue.acknowledge(results)
            outcomes.extend(results)

    def pull_until_current(self, limit: int = 200) -> int:
        """Pull pages until `more` is false; returns how many pages changed the replica.

        Without a cursor, a replica that holds a snapshot pulls from its position
        (`?snapshot=`); one that holds nothing pulls its whole scope."""
        changed = 0
        while True:
            cursor = self.replica.cursor
            params: dict[str, Any] = {"limit": limit}
            headers: dict[str, str] = {}
            if cursor:
                params["cursor"] = cursor
                headers["if-none-match"] = f'"{cursor}"'
            elif position := self.replica.snapshot_position:
                params["snapshot"] = position
            response = self._send("GET", "/api/sync/pull", params=params, headers=headers)
            if response.status_code == 304:
                return changed
            if response.status_code == 400 and "snapshot" in params:
                self.replica.forget_snapshot()  # a position it cannot read: pull plainly
                continue
            if response.status_code != 200:
                raise TransientError(f"pull answered {response.status_code}")
            page = response.json()
            if page["changes"] or page["reset"] or page["cursor"] != cursor:
                self.replica.apply(page)
                changed += 1 if page["changes"] or page["reset"] else 0
            if not page["more"]:
                return changed

    def start_from_snapshot(self) -> bool:
        """First-sync step one: download the catalogue snapshot and load it into the replica
        (with its position); False when the server has none, so the first pull is a plain one.
        Step two is `pull_until_current`, which pulls from the snapshot's position."""
        snapshot = self.download_snapshot()
        if snapshot is None:
            return False
        self.replica.load_snapshot(snapshot)
        return True

    def download_snapshot(self) -> Snapshot | None:
        """`GET /api/sync/snapshot`, resumable; None when the server has no such route.

        The raw (encoded) bytes are kept in the replica as they arrive. After a dropped
        connection, and after an app restart, the download asks for the rest only:
        `Range: bytes=<have>-` with `If-Range: <etag>`. A 206 appends, once its Content-Range
        starts where the bytes kept end; a 200 (the catalogue changed since) starts over. The
        body is decoded once complete. Public and cacheable: no Authorization header is sent.
        Transient failures back off as `_send` does; an attempt that got further than any
        before restarts the count, so a link that drops often still finishes."""
        failures = 0
        furthest = 0  # the most resumable bytes ever kept during this call
        while True:
            try:
                outcome = self._fetch_snapshot()
            except httpx.TransportError:
                outcome = None
            if isinstance(outcome, Snapshot):
                return outcome
            if outcome is _ABSENT:
                return None
            retry_after = outcome if isinstance(outcome, float) else None
            kept = self.replica.partial_snapshot()
            if kept is not None and kept.resumable and len(kept.data) > furthest:
                furthest, failures = len(kept.data), 0
            else:
                failures += 1
                if failures >= self.attempts:
                    raise TransientError(f"GET {SNAPSHOT_PATH} did not complete")
            self._back_off(max(failures - 1, 0), retry_after)

    def _fetch_snapshot(self) -> Snapshot | object | float | None:
        """One request, resuming what the replica keeps. Returns the snapshot, `_ABSENT` (no
        such route), a Retry-After (429, 5xx), or None for any other incomplete outcome;
        raises httpx.TransportError when the connection fails. The raw bytes that arrived are
        in the replica afterwards, whatever happened."""
        partial = self.replica.partial_snapshot()
        resuming = partial is not None and partial.resumable
        headers = {"accept-encoding": ACCEPT_ENCODING}
        if partial is not None and resuming:
            headers["range"] = f"bytes={len(partial.data)}-"
            headers["if-range"] = str(partial.etag)
        with self.http.stream("GET", SNAPSHOT_PATH, headers=headers) as response:
            status = response.status_code
            if status in NO_SNAPSHOT_STATUSES:
                return _ABSENT
            if status == 429 or status >= 500:
                header = response.headers.get("retry-after")
                return float(header) if header and header.isdigit() else 0.0
            encoding = content_encoding(response.headers.get("content-encoding"))
            etag = response.headers.get("etag")
            if status == 200:  # the whole document: start over with it
                length = response.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
                self.replica.save_partial_snapshot(PartialSnapshot(etag, encoding, b""))
                body = bytearray()
            elif status == 206 and partial is not None and resuming:
                span = content_range(response.headers.get("content-range"))
                if (
                    span is None
                    or span[0] != len(partial.data)
                    or encoding != partial.encoding
                    or (etag is not None and etag != partial.etag)
                ):
                    self.replica.discard_partial_snapshot()  # not the rest of what we hold
                    return None
                total = span[2]
                body = bytearray(partial.data)
            elif status in (206, 416):  # a range we did not ask for, or one past the end
                self.replica.discard_partial_snapshot()
                return None
            else:
                raise TransientError(f"snapshot answered {status}")
            stored = len(body)
            try:
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) - stored >= SNAPSHOT_FLUSH_BYTES:
                        self.replica.append_partial_snapshot(bytes(body[stored:]))
                        stored = len(body)
            finally:  # a dropped connection keeps what did arrive
                self.replica.append_partial_snapshot(bytes(body[stored:]))
        if total is not None and len(body) != total:
            return None  # cut short without the transport noticing: resume
        try:
            return decode(bytes(body), encoding)
        except BadSnapshot:
            self.replica.discard_partial_snapshot()
            return None

    def sync(self) -> None:
        """What the app runs in the background: send what was queued, then catch up. A first
        sync starts from the catalogue snapshot when the server has one."""
        self.push_pending()
        if self.replica.cursor is None and self.replica.snapshot_position is None:
            self.start_from_snapshot()
        self.pull_until_current()
