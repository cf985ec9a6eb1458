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

Bounded by bytes, least recently used first out. The work is synchronous (no await between
the lookup and the fill), so concurrent misses for one key in a process cannot happen: the
first request builds, the others find it.
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import brotli
import orjson

# Below this the bytes saved do not pay for the decoder's work (as the compression middleware).
MIN_COMPRESS_BYTES = 512
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # deflate, no name, mtime 0, unix
BROTLI_LAST_EMPTY = b"\x03"  # ISLAST=1, ISLASTEMPTY=1


class EncodedPage:
    """One page's shared bytes, with each encoding built the first time it is asked for."""

    __slots__ = ("_brotli", "_gzip", "charge", "more", "next_position", "prefix")

    def __init__(self, changes: dict[str, Any], more: bool, next_position: int) -> None:
        self.prefix = (
            b'{"changes":'
            + orjson.dumps(changes)
            + (b',"more":true' if more else b',"more":false')
            + b',"reset":false,"cursor":"'
        )
        self.more = more
        self.next_position = next_position
        self._gzip: tuple[bytes, int] | None = None
        self._brotli: bytes | None = None
        # What it may come to hold: the prefix and two compressed forms, each smaller.
        self.charge = 3 * len(self.prefix)

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

    def __len__(self) -> int:
        return len(self._pages)
