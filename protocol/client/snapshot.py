"""The catalogue snapshot (protocol v1.1): what a first sync downloads before its first pull.

`GET /api/sync/snapshot` is one public document per catalogue version, the published listings
column by column. It is read as raw (still encoded) bytes, so that after a dropped connection
`Range: bytes=<have>-` with `If-Range: <etag>` appends exactly the missing bytes of the same
representation; it is decoded only once complete. This module holds the pure parts: the
shapes, decoding, and reading `Content-Range`; the client does the I/O.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from typing import Any

import brotli
import orjson

SNAPSHOT_PATH = "/api/sync/snapshot"
ACCEPT_ENCODING = "br, gzip"

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class BadSnapshot(Exception):
    """The bytes received do not decode to a snapshot document."""


@dataclass(frozen=True)
class Snapshot:
    """A decoded snapshot: its position in the change log and the listings, by column."""

    position: str
    columns: dict[str, list[Any]]

    def rows(self) -> list[dict[str, Any]]:
        """Row i is the i-th value of every column."""
        names = list(self.columns)
        return [
            dict(zip(names, values, strict=True))
            for values in zip(*self.columns.values(), strict=True)
        ]


@dataclass(frozen=True)
class PartialSnapshot:
    """Raw bytes of one representation (its strong `etag` and `encoding`) received so far."""

    etag: str | None
    encoding: str
    data: bytes

    @property
    def resumable(self) -> bool:
        """Only a strong validator may go in `If-Range` (RFC 9110, 13.1.5)."""
        return bool(self.data) and self.etag is not None and not self.etag.startswith("W/")


def content_encoding(header: str | None) -> str:
    return (header or "identity").strip().lower() or "identity"


def content_range(header: str | None) -> tuple[int, int, int | None] | None:
    """`bytes first-last/total` as (first, last, total); None when absent or not understood."""
    match = _CONTENT_RANGE.match(header or "")
    if match is None:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def decode(raw: bytes, encoding: str) -> Snapshot:
    """The complete raw body, decoded and checked: every column one length, ids present."""
    try:
        if encoding == "br":
            body = bytes(brotli.decompress(raw))
        elif encoding in ("gzip", "x-gzip"):
            body = gzip.decompress(raw)
        elif encoding == "identity":
            body = raw
        else:
            raise BadSnapshot(f"unexpected Content-Encoding {encoding!r}")
        document = orjson.loads(body)
    except (brotli.error, OSError, EOFError, zlib.error, orjson.JSONDecodeError) as exc:
        raise BadSnapshot(f"{encoding} body does not decode: {exc}") from exc
    if not isinstance(document, dict):
        raise BadSnapshot("the document is not an object")
    position, columns = document.get("position"), document.get("listings")
    if not isinstance(position, str) or not position:
        raise BadSnapshot("no position")
    if not isinstance(columns, dict) or not isinstance(columns.get("id"), list):
        raise BadSnapshot("no listings.id column")
    if not all(isinstance(column, list) for column in columns.values()):
        raise BadSnapshot("a listings column is not an array")
    if len({len(column) for column in columns.values()}) != 1:
        raise BadSnapshot("listings columns of different lengths")
    return Snapshot(position, columns)
