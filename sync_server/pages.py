"""Encode once: pull pages shared by every phone at the same place in the same catalogue.

Buyers at one position of the public log, at one end, get byte-identical public changes;
`ChangeTail.chunk_end` cuts the log so that phones with different cursors pass through the
same pages. Those changes are encoded and compressed once, here, and only the part that
differs per phone — its own rows (orders, notifications), `more`, and its cursor, which is
bound to its user by an HMAC — is added per request, without compressing anything again:

    {"changes":{"listings":{…}                              ← shared, compressed once
    ,"orders":{…}},"more":false,"reset":false,"cursor":"…"}  ← this phone's, per request

The shared part ends with a flush to a byte boundary (deflate's sync flush, brotli's flush),
and the phone's part follows as a stored block or as deflate blocks of a stream of its own
(gzip), or as uncompressed meta-blocks (brotli): plain parts of those formats that any
decoder reads, so the phone receives one ordinary gzip or brotli stream. The saving is the
whole compression of the page, per phone.

Snapshot pages (a first sync) are shared the same way while they hold only listings: every
phone starting a snapshot from the same position reads the same catalogue pages.

Bounded by bytes, least recently used first out. Concurrent misses for one key share one
build (`shared`): the first request builds, the others wait for it.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import brotli
import orjson

from protocol.cursor import CursorState
from storage.pull import PullPage, TableChanges

# Below this the bytes saved do not pay for the decoder's work (as the compression middleware).
MIN_COMPRESS_BYTES = 512
# A phone's own part up to this size follows the shared bytes uncompressed (a cursor and a
# few rows); past it, compressing it on its own saves more than it costs.
STORE_AS_IS_BYTES = 256
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # deflate, no name, mtime 0, unix
BROTLI_LAST_EMPTY = b"\x03"  # ISLAST=1, ISLASTEMPTY=1


class EncodedPage:
    """The shared part of a page: its changes, encoded and compressed the first time asked
    for. It stops inside the `changes` object, so a phone's own rows can follow it."""

    __slots__ = ("_brotli", "_frame", "_gzip", "_prefix", "best", "charge", "page")

    def __init__(self, page: PullPage, *, best: bool = False) -> None:
        self.page = page  # shared: never mutated (a reset answer is a copy)
        # Near-best compression (brotli 10, gzip 9) for pages every phone's first sync reads:
        # tens of milliseconds, once, in a worker thread (`compress_ahead`), for a fifth fewer
        # bytes on every phone's largest download. Not 11: four times the CPU for 2 % fewer
        # bytes, paid again for every new snapshot origin while phones install (the
        # catalogue snapshot, built once per version, is the one compressed at 11).
        self.best = best
        self._prefix: bytes | None = None
        self._frame: str | None = None
        self._gzip: tuple[bytes, int] | None = None
        self._brotli: bytes | None = None
        # What it may come to hold: the page, its JSON and two compressed forms, each smaller
        # than the JSON; estimated from the row count so nothing is encoded before it is used.
        self.charge = 1024 + 3000 * max(page.rows, 1)

    @property
    def prefix(self) -> bytes:
        if self._prefix is None:
            self._prefix = b'{"changes":' + orjson.dumps(self.page.changes)[:-1]
        return self._prefix

    @property
    def json_bytes(self) -> int:
        return len(self.prefix)

    def compress_ahead(self) -> None:
        """Compress the shared bytes now (both encodings), so no request waits for it. Pure
        CPU on bytes of its own: safe in a worker thread (brotli and zlib release the GIL)."""
        if len(self.prefix) >= MIN_COMPRESS_BYTES:
            self._gzip_head()
            self._brotli_head()

    def frame(self, rest: bytes) -> str:
        """The page as a live `changes` frame (WebSocket catch-up), `rest` following it."""
        if self._frame is None:
            self._frame = '{"type":"changes",' + self.prefix[1:].decode()
        return self._frame + rest.decode()

    def body(self, rest: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
        """The response body, `rest` (this phone's part) following the shared bytes, and its
        Content-Encoding (None: identity)."""
        if len(self.prefix) < MIN_COMPRESS_BYTES:
            return self.prefix + rest, None
        if "br" in accept_encoding:
            return self._brotli_body(rest), "br"
        if "gzip" in accept_encoding:
            return self._gzip_body(rest), "gzip"
        return self.prefix + rest, None

    def _gzip_head(self) -> tuple[bytes, int]:
        if self._gzip is None:
            deflate = zlib.compressobj(9 if self.best else 6, zlib.DEFLATED, -15)
            head = GZIP_HEADER + deflate.compress(self.prefix) + deflate.flush(zlib.Z_SYNC_FLUSH)
            self._gzip = (head, zlib.crc32(self.prefix))
        return self._gzip

    def _brotli_head(self) -> bytes:
        if self._brotli is None:
            compressor = brotli.Compressor(quality=10 if self.best else 5)
            self._brotli = compressor.process(self.prefix) + compressor.flush()
        return self._brotli

    def _gzip_body(self, rest: bytes) -> bytes:
        head, prefix_crc = self._gzip_head()
        if len(rest) <= STORE_AS_IS_BYTES:
            # A final stored block (BFINAL=1, BTYPE=00) holding the rest.
            length = len(rest)
            blocks = b"\x01" + struct.pack("<HH", length, length ^ 0xFFFF) + rest
        else:
            # Deflate blocks of a stream of their own: they refer only to their own bytes,
            # so they may follow the shared blocks (which end on a byte boundary) as they are.
            deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            blocks = deflate.compress(rest) + deflate.flush(zlib.Z_FINISH)
        total = (len(self.prefix) + len(rest)) & 0xFFFFFFFF
        return head + blocks + struct.pack("<II", zlib.crc32(rest, prefix_crc), total)

    def _brotli_body(self, rest: bytes) -> bytes:
        # Uncompressed meta-blocks (a brotli stream carries its state from block to block, so
        # another stream's compressed blocks cannot follow): ISLAST=0, MNIBBLES=4 (code 0),
        # MLEN-1 in 16 bits, ISUNCOMPRESSED=1, padded to the byte; then the last, empty one.
        blocks = [self._brotli_head()]
        for start in range(0, len(rest), 0x10000):
            piece = rest[start : start + 0x10000]
            header = ((len(piece) - 1) << 3) | (1 << 19)
            blocks += [header.to_bytes(3, "little"), piece]
        blocks.append(BROTLI_LAST_EMPTY)
        return b"".join(blocks)


@dataclass(frozen=True, slots=True)
class SharedAnswer:
    """A page made of a shared part (the same bytes for every phone there) and what is this
    phone's own: its rows, whether more follows, and its cursor, bound to its user."""

    shared: EncodedPage
    own: dict[str, TableChanges]
    more: bool
    next_state: CursorState

    @property
    def page(self) -> PullPage:
        """The whole page as data (for callers that do not send the shared bytes)."""
        shared = self.shared.page
        return PullPage(
            {**shared.changes, **self.own},
            self.next_state,
            more=self.more,
            rows=shared.rows + sum(len(items) for t in self.own.values() for items in t.values()),
        )

    def rest(self, cursor: str) -> bytes:
        own = orjson.dumps(self.own)[1:-1] if self.own else b""
        separator = b"," if own and self.shared.page.changes else b""
        return (
            separator
            + own
            + (b'},"more":true' if self.more else b'},"more":false')
            + b',"reset":false,"cursor":"'
            + cursor.encode("ascii")
            + b'"}'
        )

    def body(self, cursor: str, accept_encoding: str) -> tuple[bytes, str | None]:
        return self.shared.body(self.rest(cursor), accept_encoding)

    def frame(self, cursor: str) -> str:
        return self.shared.frame(self.rest(cursor))


class SharedPages:
    """A bounded LRU of encoded pages, by the caller's key (scope, from, to, limit)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pages: OrderedDict[Hashable, EncodedPage] = OrderedDict()
        self._building: dict[Hashable, asyncio.Future[EncodedPage | None]] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> EncodedPage | None:
        page = self._pages.get(key)
        if page is None:
            self.misses += 1
            return None
        self.hits += 1
        self._pages.move_to_end(key)
        return page

    def put(self, key: Hashable, page: EncodedPage) -> None:
        if self.max_bytes <= 0:
            return
        previous = self._pages.pop(key, None)
        if previous is not None:
            self._bytes -= previous.charge
        self._pages[key] = page
        self._bytes += page.charge
        while self._bytes > self.max_bytes and self._pages:
            _key, oldest = self._pages.popitem(last=False)
            self._bytes -= oldest.charge

    async def shared(
        self, key: Hashable, build: Callable[[], Awaitable[tuple[EncodedPage, bool]]]
    ) -> EncodedPage:
        """The page under `key`, built once however many ask for it at the same time (a
        storm of first syncs must not read the same catalogue page a thousand times).

        `build` returns the page and whether it may be shared: a page that also holds the
        builder's own rows is returned to the builder only, and each waiter builds its own."""
        page = self.get(key)
        if page is not None:
            return page
        pending = self._building.get(key)
        if pending is not None:
            shared = await asyncio.shield(pending)
            if shared is not None:
                return shared
            page, _shareable = await build()
            return page
        future: asyncio.Future[EncodedPage | None] = asyncio.get_running_loop().create_future()
        self._building[key] = future
        try:
            page, shareable = await build()
        except BaseException:
            future.set_result(None)  # waiters try for themselves
            raise
        finally:
            del self._building[key]
        if shareable:
            self.put(key, page)
        future.set_result(page if shareable else None)
        return page

    def __len__(self) -> int:
        return len(self._pages)
