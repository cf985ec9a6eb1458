"""The catalogue snapshot (v1.1): one immutable document per catalogue version, encoded once.

Every phone's first sync starts with the same public catalogue, so it is one document,
built once per version and served to every device (as Electric serves a shape's initial
data through a CDN). Each encoding of a version — identity, brotli at its highest quality,
gzip -9 — is a fixed byte string with a strong ETag made from its bytes, compressed the
first time a client asks for it (in a worker thread: quality 11 takes tens of
milliseconds) and never again.

A version is kept for `SNAPSHOT_GRACE_SECONDS` after a newer one replaced it, so a phone
that lost its connection halfway resumes the version it started (a Range request with
If-Range) and then pulls the difference from its position. With Redis, the encoded bytes
are shared under the version's position: another instance serves the same bytes and tags,
including a version it never built itself (a resume that lands elsewhere). Without Redis,
the same document is rebuilt byte for byte from the database (`storage.catalogue`).

How fresh: the catalogue is checked (one indexed read) when this process has heard of a
public commit past what the current version covers, and at least every
`SNAPSHOT_REFRESH_SECONDS`. A new version costs a read and a compression, so rebuilds are
rate-limited (a small burst, then one per refresh interval): when every purchase moves a
listing's stock, a phone may get a version a second old — as valid a start as any, since
the pull from its position brings what changed since.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import brotli
import orjson

from protocol.cursor import CursorCodec
from storage.cache import Cache
from storage.catalogue import Catalogue, catalogue_position, read_catalogue
from storage.db import Database
from storage.feed import ChangeFeed
from storage.scopes import PUBLIC

log = logging.getLogger("freshroots.catalogue")

IDENTITY, GZIP, BROTLI = "identity", "gzip", "br"
ENCODINGS = (BROTLI, GZIP, IDENTITY)
_CODES = {BROTLI: "b", GZIP: "g", IDENTITY: "i"}
_NAMES = {code: name for name, code in _CODES.items()}
# Rebuilds allowed back to back before the rate limit applies (a quiet catalogue edited a
# few times in a row gets each version at once).
REBUILD_BURST = 4
# Replaced versions kept in this process for resumes (within SNAPSHOT_GRACE_SECONDS), up to
# this many bytes in all.
MAX_SUPERSEDED_BYTES = 32 * 1024 * 1024
# How long a request waits for a check of the catalogue or a compression of its newest version
# when an older version can answer it at once: twice what the last one took, at least a
# quarter of a second, at most two (a catalogue of thousands of listings takes over a second
# at brotli 11; a database that hangs takes forever).
WAIT_FOR_NEW_SECONDS = (0.25, 2.0)
# A new version no sooner after the last than this many times what compressing one took.
COMPRESSION_SHARE = 10


def negotiate(accept_encoding: str) -> str:
    """The encoding for an Accept-Encoding value, as the rest of the server picks it."""
    accepted = accept_encoding.lower()
    return BROTLI if "br" in accepted else GZIP if "gzip" in accepted else IDENTITY


def encode(body: bytes, encoding: str) -> bytes:
    if encoding == BROTLI:
        return bytes(brotli.compress(body, quality=11))
    if encoding == GZIP:
        return gzip.compress(body, compresslevel=9, mtime=0)
    return body


def document(catalogue: Catalogue, position_token: str) -> bytes:
    return orjson.dumps({"position": position_token, "listings": catalogue.columns})


@dataclass(frozen=True, slots=True)
class Representation:
    """One encoding of one version: the bytes every client gets, and their tag."""

    position: int
    encoding: str
    body: bytes
    etag: str  # quoted, strong

    @classmethod
    def of(cls, position: int, encoding: str, body: bytes) -> Representation:
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()[:9]).decode()
        return cls(position, encoding, body, f'"{position:x}{_CODES[encoding]}{digest}"')


DIGEST_CHARS = 12  # 9 bytes of SHA-256, base64url


def position_of_tag(etag: str) -> tuple[int, str] | None:
    """(position, encoding) named by one of our tags, or None for anything else."""
    quoted = etag.strip()
    if not (len(quoted) >= DIGEST_CHARS + 4 and quoted[0] == quoted[-1] == '"'):
        return None
    inner = quoted[1:-1]
    hex_position, code = inner[: -DIGEST_CHARS - 1], inner[-DIGEST_CHARS - 1]
    if code not in _NAMES:
        return None
    try:
        return int(hex_position, 16), _NAMES[code]
    except ValueError:
        return None


@dataclass
class Version:
    position: int
    identity: bytes
    built_at: float
    superseded_at: float | None = None
    encoded: dict[str, Representation] = field(default_factory=dict)
    compressing: dict[str, asyncio.Task[Representation]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.identity) + sum(
            len(each.body) for name, each in self.encoded.items() if name != IDENTITY
        )


def _patience(taken: float) -> float:
    shortest, longest = WAIT_FOR_NEW_SECONDS
    return min(longest, max(shortest, 2 * taken))


class CatalogueSnapshots:
    def __init__(
        self,
        db: Database,
        feed: ChangeFeed,
        cursors: CursorCodec,
        *,
        shared: Cache | None,
        refresh_seconds: float,
        grace_seconds: float,
        keep_bytes: int = MAX_SUPERSEDED_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.feed = feed
        self.cursors = cursors
        self.shared = shared  # Redis: every instance's versions; None: this process only
        self.refresh_seconds = refresh_seconds
        self.grace_seconds = grace_seconds
        self.keep_bytes = keep_bytes
        self.clock = clock
        self._current: Version | None = None
        self._superseded: list[Version] = []
        self._checked_at = float("-inf")
        self._verified_through = -1  # the log head when the catalogue was last checked
        self._refreshing: asyncio.Task[None] | None = None
        self._rebuild_tokens = float(REBUILD_BURST)
        self._tokens_at = clock()
        self._compression_seconds = 0.0  # what compressing the newest version took
        self._refresh_seconds_taken = 0.0  # what the last check (and build) of it took
        self.builds = 0  # versions read from the database (metrics)
        self.compressions = 0

    # -- the current version -------------------------------------------------------------

    async def current(self, encoding: str) -> Representation:
        """The newest version in `encoding`, or, while that encoding of a just-built version
        is still being compressed (seconds, for a catalogue of thousands of listings at
        brotli 11), the newest one that has it ready: a version a few seconds old is as
        valid a start as any, and no request waits for a compression another could skip."""
        if self._current is None or self._may_have_moved():
            await self._refresh_once()
        version = self._current
        assert version is not None
        ready = version.encoded.get(encoding)
        if ready is not None:
            return ready
        compressing = self._compress(version, encoding)
        fallback = next(
            (
                older.encoded[encoding]
                for older in reversed(self._superseded)
                if encoding in older.encoded
            ),
            None,
        )
        if fallback is None:
            return await asyncio.shield(compressing)
        try:
            return await asyncio.wait_for(
                asyncio.shield(compressing), _patience(self._compression_seconds)
            )
        except TimeoutError:
            return fallback

    async def _refresh_once(self) -> None:
        """One check at a time, whatever the number of first syncs asking: a herd shares it
        (a check per request would queue the herd for database connections). With a version
        held, a request waits for the check only briefly, and a failed check is not tried
        again before the refresh interval: while the database is slow or away, the version
        held is served (it is still a valid start)."""
        task = self._refreshing
        if task is None:
            task = self._refreshing = asyncio.create_task(self._refresh())
            task.add_done_callback(self._refreshed)
        if self._current is None:
            await asyncio.shield(task)
            return
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(task), _patience(self._refresh_seconds_taken))

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
        if task.cancelled() or task.exception() is None:
            return
        log.warning("could not check the catalogue", exc_info=task.exception())
        if self._current is not None:
            # Look again after the interval, not on every request: what was heard of stays
            # "heard" until then.
            self._checked_at = self.clock()
            self._verified_through = max(self._verified_through, self.feed.local.get(PUBLIC) or -1)

    def _may_have_moved(self) -> bool:
        if self.clock() - self._checked_at >= self.refresh_seconds:
            return True
        heard = self.feed.local.get(PUBLIC)
        return heard is not None and heard > self._verified_through

    def _checked(self, now: float, head: int) -> None:
        self._checked_at = max(self._checked_at, now)
        self._verified_through = max(self._verified_through, head)

    async def _refresh(self) -> None:
        """Check where the catalogue stands; build a new version when it moved. Runs once at
        a time (`_refresh_once`)."""
        now = self.clock()
        started = time.perf_counter()
        try:
            await self._check_and_build(now)
        finally:
            self._refresh_seconds_taken = time.perf_counter() - started

    async def _check_and_build(self, now: float) -> None:
        async with self.db.read() as conn:
            seen = await catalogue_position(conn)
        current = self._current
        if current is not None and seen.position <= current.position:
            self._checked(now, seen.head)
            return
        if current is not None and not self._may_rebuild(now):
            # The current version stays a valid start; look again after the interval.
            self._checked(now, seen.head)
            return
        async with self.db.read() as conn:
            catalogue = await read_catalogue(conn)
        version = self._install(catalogue, now)
        self._checked(now, seen.head)
        await self._share(version, IDENTITY, version.identity)

    def _install(self, catalogue: Catalogue, now: float) -> Version:
        self.builds += 1
        identity = document(catalogue, self.cursors.encode_position(catalogue.position))
        version = Version(catalogue.position, identity, built_at=now)
        version.encoded[IDENTITY] = Representation.of(version.position, IDENTITY, identity)
        current = self._current
        if current is not None:
            current.superseded_at = now
            self._superseded.append(current)
        self._current = version
        self._forget_expired(now)
        log.info(
            "catalogue snapshot at position %d: %d listings, %d bytes",
            catalogue.position,
            catalogue.size,
            len(identity),
        )
        return version

    def _may_rebuild(self, now: float) -> bool:
        """A token bucket: REBUILD_BURST at once (a few edits in a row each get their version),
        then one per refresh interval, or per COMPRESSION_SHARE times what compressing a
        version took if that is longer: a catalogue that takes a second to compress at
        brotli 11 gets a new version at most every ten seconds while every purchase moves a
        stock."""
        interval = max(self.refresh_seconds, COMPRESSION_SHARE * self._compression_seconds)
        rate = 1.0 / interval if interval > 0 else float("inf")
        self._rebuild_tokens = min(
            REBUILD_BURST, self._rebuild_tokens + (now - self._tokens_at) * rate
        )
        self._tokens_at = now
        if self._rebuild_tokens < 1:
            return False
        self._rebuild_tokens -= 1
        return True

    def _forget_expired(self, now: float) -> None:
        kept = [
            version
            for version in self._superseded
            if version.superseded_at is not None
            and now - version.superseded_at < self.grace_seconds
        ]
        # While every purchase moves a stock, a version a second may be replaced: memory is
        # bounded by bytes as well as by time (a resume of an older one gets the whole current
        # version, as after the grace period).
        total = 0
        for index in range(len(kept) - 1, -1, -1):
            total += kept[index].size
            if total > self.keep_bytes:
                kept = kept[index + 1 :]
                break
        self._superseded = kept

    # -- encodings -----------------------------------------------------------------------

    def _compress(self, version: Version, encoding: str) -> asyncio.Task[Representation]:
        """The task making `encoding` of `version`, started once; it belongs to no request,
        so a client that goes away cancels nobody else's wait."""
        task = version.compressing.get(encoding)
        if task is None:
            task = version.compressing[encoding] = asyncio.create_task(
                self._fetch_or_compress(version, encoding)
            )

            def done(finished: asyncio.Task[Representation]) -> None:
                del version.compressing[encoding]
                if not finished.cancelled() and finished.exception() is None:
                    version.encoded[encoding] = finished.result()

            task.add_done_callback(done)
        return task

    async def _encoded(self, version: Version, encoding: str) -> Representation:
        ready = version.encoded.get(encoding)
        if ready is not None:
            return ready
        return await asyncio.shield(self._compress(version, encoding))

    async def _fetch_or_compress(self, version: Version, encoding: str) -> Representation:
        key = f"snapshot:{version.position:x}:{encoding}"
        if self.shared is not None:
            try:
                body = await self.shared.get(key)
            except Exception:
                body = None  # Redis away: build it here; the bytes are the same
            if body is not None:
                return Representation.of(version.position, encoding, body)
        started = time.perf_counter()
        body = await asyncio.to_thread(encode, version.identity, encoding)
        if version is self._current:
            self._compression_seconds = time.perf_counter() - started
        self.compressions += 1
        await self._share(version, encoding, body)
        return Representation.of(version.position, encoding, body)

    async def _share(self, version: Version, encoding: str, body: bytes) -> None:
        if self.shared is None:
            return
        try:
            await self.shared.set(
                f"snapshot:{version.position:x}:{encoding}", body, self._shared_ttl
            )
        except Exception:
            log.warning("could not share the catalogue snapshot's %s bytes", encoding)

    @property
    def _shared_ttl(self) -> int:
        # Kept in Redis about as long as a replaced version is servable. A version current for
        # longer is compressed again by an instance that finds the key gone: the same bytes
        # (same position, same encoder), so tags still match.
        return int(max(self.grace_seconds, 60))

    # -- a version named by a tag (If-Range) ------------------------------------------------

    async def by_tag(self, etag: str) -> Representation | None:
        """The representation an If-Range tag names while its version is still servable: the
        current one, one superseded less than the grace period ago, or (with Redis) one that
        another instance built. None: not ours, or no longer kept."""
        named = position_of_tag(etag)
        if named is None:
            return None
        position, encoding = named
        if self._current is not None and self._may_have_moved():
            # Whether the tag's version is still the current one (the check, not a build's
            # compression: a resume never waits for that).
            await self._refresh_once()
        now = self.clock()
        self._forget_expired(now)
        for version in (self._current, *self._superseded):
            if version is not None and version.position == position:
                representation = await self._encoded(version, encoding)
                return representation if representation.etag == etag.strip() else None
        if self.shared is None or self.grace_seconds <= 0:
            return None
        try:
            body = await self.shared.get(f"snapshot:{position:x}:{encoding}")
        except Exception:
            return None
        if body is None:
            return None
        representation = Representation.of(position, encoding, body)
        return representation if representation.etag == etag.strip() else None
