"""The offline queue: mutations made without a network, replayed later, exactly once.

Mutation ids are assigned here, strictly increasing and never reused (the counter is
persisted), so the server can recognise a replay of something it already applied.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, args TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, args TEXT NOT NULL, error TEXT NOT NULL);
"""


class OfflineQueue:
    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('client_id', ?)",
                ("py-" + secrets.token_hex(12),),
            )
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('last_id', '0')")

    @property
    def client_id(self) -> str:
        return str(self._db.execute("SELECT value FROM meta WHERE key = 'client_id'").fetchone()[0])

    def enqueue(self, name: str, args: dict[str, Any]) -> int:
        with self._db:  # one transaction: the id is taken and the mutation stored together
            self._db.execute("BEGIN IMMEDIATE")
            last = int(
                self._db.execute("SELECT value FROM meta WHERE key = 'last_id'").fetchone()[0]
            )
            mutation_id = last + 1
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_id'", (str(mutation_id),))
            self._db.execute(
                "INSERT INTO queue VALUES (?, ?, ?)",
                (mutation_id, name, orjson.dumps(args).decode()),
            )
        return mutation_id

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT id, name, args FROM queue ORDER BY id LIMIT ?", (limit,))
        return [{"id": row[0], "name": row[1], "args": orjson.loads(row[2])} for row in rows]

    def acknowledge(self, results: list[dict[str, Any]]) -> None:
        """Drop every mutation with a final outcome; keep business rejections for the app."""
        with self._db:
            for result in results:
                if not result.get("ok"):
                    row = self._db.execute(
                        "SELECT name, args FROM queue WHERE id = ?", (result["id"],)
                    ).fetchone()
                    if row is not None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?)",
                            (
                                result["id"],
                                row[0],
                                row[1],
                                orjson.dumps(result.get("error", {})).decode(),
                            ),
                        )
                self._db.execute("DELETE FROM queue WHERE id = ?", (result["id"],))

    def rejected(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT id, name, args, error FROM rejected ORDER BY id")
        return [
            {
                "id": row[0],
                "name": row[1],
                "args": orjson.loads(row[2]),
                "error": orjson.loads(row[3]),
            }
            for row in rows
        ]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM queue").fetchone()[0])

    def close(self) -> None:
        self._db.close()
