"""Prometheus metrics (prometheus-client), one registry per app so two apps in one process
(tests, several instances) never share or clash. Counters and histograms are updated on the
request path; gauges that describe state (outbox lag, pool use, sockets) are read at scrape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "freshroots_request_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.responses = Counter(
            "freshroots_responses",
            "HTTP responses by route and status class.",
            ["route", "status"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "freshroots_deliveries",
            "Outbox deliveries by channel and outcome.",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.outbox_items = Gauge(
            "freshroots_outbox_items", "Outbox items by status.", ["status"], registry=self.registry
        )
        self.outbox_lag = Gauge(
            "freshroots_outbox_lag_seconds",
            "Age of the oldest undelivered outbox item.",
            registry=self.registry,
        )
        self.db_pool_in_use = Gauge(
            "freshroots_db_pool_in_use", "Database connections checked out.", registry=self.registry
        )
        self.live_sessions = Gauge(
            "freshroots_live_sessions", "WebSocket sessions.", registry=self.registry
        )
        self.live_overflows = Gauge(
            "freshroots_live_overflows",
            "Slow sockets that fell back to their cursor (total).",
            registry=self.registry,
        )
        self.changelog_head = Gauge(
            "freshroots_changelog_head",
            "Newest committed change-log position.",
            registry=self.registry,
        )
        self.refresh: Callable[[], Awaitable[None]] | None = None
        # `labels()` validates and looks up its arguments on every call; on the empty-pull
        # path that was a visible share of the request. Routes are templates, so this stays
        # small (routes x methods x status classes).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status // 100)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.request_seconds.labels(method, route),
                self.responses.labels(route, f"{status // 100}xx"),
            )
        children[0].observe(seconds)
        children[1].inc()

    async def render(self) -> bytes:
        if self.refresh is not None:
            await self.refresh()
        return generate_latest(self.registry)
