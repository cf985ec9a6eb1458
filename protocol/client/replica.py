"""The local replica: synced rows and the cursor, changed together in one transaction, so a
crash never leaves rows from one position and a cursor from another.

A first sync from the catalogue snapshot stores the snapshot's listings together with its
position (`snapshot_position`, not a cursor: the next pull sends it as `snapshot=`); the first
pull page applied replaces that marker with a cursor. The raw bytes of a snapshot download in
progress are kept here too (`partial_snapshot`), so a download cut off, even by an app restart,
resumes where it stopped."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

from protocol.client.snapshot import PartialSnapshot, Snapshot

SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    tbl TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (tbl, id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS snapshot_chunks (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""

_PARTIAL_KEYS = ("snapshot_etag", "snapshot_encoding")


class ProtocolViolation(Exception):
    """The server sent a patch for a row this replica does not hold."""


class Replica:
    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    @property
    def cursor(self) -> str | None:
        return self._meta("cursor")

    @property
    def snapshot_position(self) -> str | None:
        """Where the loaded snapshot stands, until the first pull page replaces it by a cursor."""
        return self._meta("snapshot_position")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def load_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the local copy with the snapshot's listings and mark its position, in one
        transaction; the download's bytes are no longer needed."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM rows")
            self._db.executemany(
                "INSERT OR REPLACE INTO rows VALUES ('listings', ?, ?)",
                ((str(row["id"]), orjson.dumps(row).decode()) for row in snapshot.rows()),
            )
            self._db.execute("DELETE FROM meta WHERE key = 'cursor'")
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('snapshot_position', ?)", (snapshot.position,)
            )
            self._clear_partial()

    def forget_snapshot(self) -> None:
        """Drop a loaded snapshot (rows and position): the next pull is a plain first pull."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM rows")
            self._db.execute("DELETE FROM meta WHERE key = 'snapshot_position'")

    def partial_snapshot(self) -> PartialSnapshot | None:
        """The raw bytes of a snapshot download kept so far, or None."""
        encoding = self._meta("snapshot_encoding")
        if encoding is None:
            return None
        chunks = self._db.execute("SELECT data FROM snapshot_chunks ORDER BY seq")
        data = b"".join(bytes(row[0]) for row in chunks)
        return PartialSnapshot(self._meta("snapshot_etag"), encoding, data)

    def save_partial_snapshot(self, partial: PartialSnapshot) -> None:
        """Keep these bytes, and only these, as the download in progress."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._clear_partial()
            self._db.execute(
                "INSERT INTO meta VALUES ('snapshot_encoding', ?)", (partial.encoding,)
            )
            self._db.execute("INSERT INTO meta VALUES ('snapshot_etag', ?)", (partial.etag,))
            if partial.data:
                self._db.execute("INSERT INTO snapshot_chunks (data) VALUES (?)", (partial.data,))

    def append_partial_snapshot(self, data: bytes) -> None:
        """Add bytes received to the download in progress (started by save_partial_snapshot)."""
        if data:
            with self._db:
                self._db.execute("INSERT INTO snapshot_chunks (data) VALUES (?)", (data,))

    def discard_partial_snapshot(self) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._clear_partial()

    def _clear_partial(self) -> None:
        self._db.execute("DELETE FROM snapshot_chunks")
        self._db.execute("DELETE FROM meta WHERE key IN (?, ?)", _PARTIAL_KEYS)

    def apply(self, page: dict[str, Any]) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if page.get("reset"):
                self._db.execute("DELETE FROM rows")
            for table, changes in page.get("changes", {}).items():
                for row in changes.get("put", []):
                    self._db.execute(
                        "INSERT OR REPLACE INTO rows VALUES (?, ?, ?)",
                        (table, row["id"], orjson.dumps(row).decode()),
                    )
                for patch in changes.get("patch", []):
                    held = self._db.execute(
                        "SELECT body FROM rows WHERE tbl = ? AND id = ?", (table, patch["id"])
                    ).fetchone()
                    if held is None:
                        raise ProtocolViolation(f"patch for {table}/{patch['id']} not held")
                    merged = {**orjson.loads(held[0]), **patch}
                    self._db.execute(
                        "UPDATE rows SET body = ? WHERE tbl = ? AND id = ?",
                        (orjson.dumps(merged).decode(), table, patch["id"]),
                    )
                for row_id in changes.get("del", []):
                    self._db.execute("DELETE FROM rows WHERE tbl = ? AND id = ?", (table, row_id))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('cursor', ?)", (page["cursor"],))
            self._db.execute("DELETE FROM meta WHERE key = 'snapshot_position'")

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        result = self._db.execute("SELECT id, body FROM rows WHERE tbl = ?", (table,))
        return {row[0]: orjson.loads(row[1]) for row in result}

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        names = [row[0] for row in self._db.execute("SELECT DISTINCT tbl FROM rows")]
        return {name: self.rows(name) for name in names}

    def close(self) -> None:
        self._db.close()
