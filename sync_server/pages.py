"""Encode once: pull pages shared by every phone at the same place in the same catalogue.

Buyers whose own scope has nothing new ask for the public changes after their cursor; all
of them at one position, at one tail head, get byte-identical changes. Those are encoded and
compressed once, here, and only the part that differs per phone — its cursor, which is bound
to its user by an HMAC — is added per request, without compressing anything again:

    {"changes":{…},"more":false,"reset":false,"cursor":"   ← shared, compressed once
    <this phone's cursor>"}                                ← per request, stored as is

The shared part ends with a flush to a byte boundary (deflate's sync flush, brotli's flush),
and the suffix follows as a stored block (gzip) or an uncompressed meta-block (brotli), both
plain parts of those formats that any decoder reads: the phone receives one ordinary gzip or
brotli stream. The suffix is a few dozen incompressible bytes, so nothing is lost by not
compressing it; the saving is the whole compression of the page, per phone.

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

import brotli
import orjson

from protocol.cursor import CursorState
from storage.pull import PullPage

# Below this the bytes saved do not pay for the decoder's work (as the compression middleware).
MIN_COMPRESS_BYTES = 512
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # deflate, no name, mtime 0, unix
BROTLI_LAST_EMPTY = b"\x03"  # ISLAST=1, ISLASTEMPTY=1


class EncodedPage:
    """One shared page, with its JSON and each encoding built the first time asked for."""

    __slots__ = ("_brotli", "_frame", "_gzip", "_prefix", "charge", "page")

    def __init__(self, page: PullPage) -> None:
        self.page = page  # shared: never mutated (a reset answer is a copy)
        self._prefix: bytes | None = None
        self._frame: str | None = None
        self._gzip: tuple[bytes, int] | None = None
        self._brotli: bytes | None = None
        # What it may come to hold: the page, its JSON and two compressed forms, each smaller
        # than the JSON; estimated from the row count so nothing is encoded before it is used.
        self.charge = 1024 + 3000 * max(page.rows, 1)

    @property
    def more(self) -> bool:
        return self.page.more

    @property
    def next_state(self) -> CursorState:
        return self.page.next_state

    @property
    def prefix(self) -> bytes:
        if self._prefix is None:
            self._prefix = (
                b'{"changes":'
                + orjson.dumps(self.page.changes)
                + (b',"more":true' if self.page.more else b',"more":false')
                + b',"reset":false,"cursor":"'
            )
        return self._prefix

    def frame(self, cursor: str) -> str:
        """The same page as a live `changes` frame (WebSocket catch-up)."""
        if self._frame is None:
            self._frame = '{"type":"changes",' + self.prefix[1:].decode()
        return self._frame + cursor + '"}'

    def body(self, cursor: str, accept_encoding: str) -> tuple[bytes, str | None]:
        """The response body for one phone, and its Content-Encoding (None: identity)."""
        suffix = cursor.encode("ascii") + b'"}'
        if len(self.prefix) < MIN_COMPRESS_BYTES or len(suffix) > 0xFFFF:
            return self.prefix + suffix, None
        if "br" in accept_encoding:
            return self._brotli_body(suffix), "br"
        if "gzip" in accept_encoding:
            return self._gzip_body(suffix), "gzip"
        return self.prefix + suffix, None

    def _gzip_body(self, suffix: bytes) -> bytes:
        if self._gzip is None:
            deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            head = GZIP_HEADER + deflate.compress(self.prefix) + deflate.flush(zlib.Z_SYNC_FLUSH)
            self._gzip = (head, zlib.crc32(self.prefix))
        head, prefix_crc = self._gzip
        length = len(suffix)
        # A final stored block (BFINAL=1, BTYPE=00) holding the suffix, then the trailer.
        stored = b"\x01" + struct.pack("<HH", length, length ^ 0xFFFF) + suffix
        total = (len(self.prefix) + length) & 0xFFFFFFFF
        return head + stored + struct.pack("<II", zlib.crc32(suffix, prefix_crc), total)

    def _brotli_body(self, suffix: bytes) -> bytes:
        if self._brotli is None:
            compressor = brotli.Compressor(quality=5)
            self._brotli = compressor.process(self.prefix) + compressor.flush()
        # An uncompressed meta-block: ISLAST=0, MNIBBLES=4 (code 0), MLEN-1 in 16 bits,
        # ISUNCOMPRESSED=1, padded to the byte; then the last, empty meta-block.
        header = ((len(suffix) - 1) << 3) | (1 << 19)
        return self._brotli + header.to_bytes(3, "little") + suffix + BROTLI_LAST_EMPTY


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
