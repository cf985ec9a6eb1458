"""The local replica: synced rows and the cursor, changed together in one transaction, so a
crash never leaves rows from one position and a cursor from another."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    tbl TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (tbl, id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class ProtocolViolation(Exception):
    """The server sent a patch for a row this replica does not hold."""


class Replica:
    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    @property
    def cursor(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
        return None if row is None else str(row[0])

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

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        result = self._db.execute("SELECT id, body FROM rows WHERE tbl = ?", (table,))
        return {row[0]: orjson.loads(row[1]) for row in result}

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        names = [row[0] for row in self._db.execute("SELECT DISTINCT tbl FROM rows")]
        return {name: self.rows(name) for name in names}

    def close(self) -> None:
        self._db.close()
