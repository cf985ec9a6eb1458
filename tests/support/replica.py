"""Apply pull pages to a local dict, the way a phone's database would."""

from __future__ import annotations

from typing import Any

Replica = dict[str, dict[str, dict[str, Any]]]


def apply_page(replica: Replica, page: dict[str, Any]) -> None:
    if page.get("reset"):
        replica.clear()
    for table, changes in page["changes"].items():
        rows = replica.setdefault(table, {})
        for row in changes.get("put", []):
            rows[row["id"]] = dict(row)
        for patch in changes.get("patch", []):
            assert patch["id"] in rows, f"patch for a row the client does not hold: {patch}"
            rows[patch["id"]].update(patch)
        for row_id in changes.get("del", []):
            rows.pop(row_id, None)


def build(pages: list[dict[str, Any]], replica: Replica | None = None) -> Replica:
    replica = {} if replica is None else replica
    for page in pages:
        apply_page(replica, page)
    return replica


def without_empty(replica: Replica) -> Replica:
    return {table: rows for table, rows in replica.items() if rows}
