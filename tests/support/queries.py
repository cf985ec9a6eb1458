"""Watch the SQL an in-process server (one started with `serve_in_thread`) sends, to prove
what a response did not do: a cached page must not reach the database at all."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from tests.support.live_server import RUNNING


@contextmanager
def statements(base_url: str, matching: Callable[[str, Any], bool]) -> Iterator[list[str]]:
    """Collect, while the block runs, every statement the server at `base_url` executes for
    which `matching(sql, parameters)` is true."""
    app, _ = RUNNING[base_url]
    engine = app.state.services.db.engine.sync_engine
    seen: list[str] = []

    def note(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if matching(statement, parameters):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)
