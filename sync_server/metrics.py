"""Prometheus metrics (prometheus-client), one registry per app so two apps in one process
(tests, several instances) never share or clash. Counters and histograms are updated on the
request path; gauges that describe state (outbox lag, pool use, sockets) are read at scrape."""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from storage.replicas import ReadRouter

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
        # Admission control (storage/admission.py and the edge in sync_server/middleware.py).
        self.shed = Counter(
            "freshroots_shed",
            "Requests answered 503 by admission control, by where they were turned away "
            "(edge: too many low-priority requests in flight; database: no connection "
            "within the wait) and priority.",
            ["where", "priority"],
            registry=self.registry,
        )
        self.admission_wait_seconds = Histogram(
            "freshroots_admission_wait_seconds",
            "Time queued for a database connection, by priority (only waits that happened).",
            ["priority"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.admission_waiting = Gauge(
            "freshroots_admission_waiting",
            "Transactions queued for a database connection, by priority.",
            ["priority"],
            registry=self.registry,
        )
        self.low_priority_in_flight = Gauge(
            "freshroots_low_priority_in_flight",
            "Low-priority HTTP requests (pulls, listing reads) being served.",
            registry=self.registry,
        )
        self.gc_pause = Histogram(
            "freshroots_gc_pause_seconds",
            "Cyclic garbage collections of generations 1 and 2: each stops the event loop.",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.event_loop_lag = Gauge(
            "freshroots_event_loop_lag_seconds",
            "How late the event loop runs a timer: how long work waits for it (edge shedding).",
            registry=self.registry,
        )
        self.snapshot_work = Gauge(
            "freshroots_snapshot_work",
            "Catalogue snapshot work since start: versions read from the database (built) and "
            "encodings compressed; each is done once per version, never per request.",
            ["kind"],
            registry=self.registry,
        )
        self.db_reads = Gauge(
            "freshroots_db_reads",
            "Read-only work routed since start, by where it ran: on a replica, or on the "
            "primary and why (no replica in rotation, the replica behind the position the read "
            "needed, the replica failed or busy, the caller needed the primary).",
            ["outcome"],
            registry=self.registry,
        )
        self.replica_in_rotation = Gauge(
            "freshroots_db_replica_in_rotation",
            "1 while a read replica takes reads, 0 while it is out (down or lagging).",
            ["replica"],
            registry=self.registry,
        )
        self.replica_lag = Gauge(
            "freshroots_db_replica_lag_seconds",
            "How long ago the primary first held a change the replica still lacked.",
            ["replica"],
            registry=self.registry,
        )
        # Children made once: shedding happens under overload, when every microsecond counts.
        self._shed_children = {
            (where, priority): self.shed.labels(where, priority)
            for where in ("edge", "database")
            for priority in ("low", "normal")
        }
        self._wait_children = {
            priority: self.admission_wait_seconds.labels(priority) for priority in ("low", "normal")
        }
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

    def count_shed(self, where: str, priority: str) -> None:
        self._shed_children[(where, priority)].inc()

    def observe_wait(self, priority: str, seconds: float) -> None:
        self._wait_children[priority].observe(seconds)

    def observe_reads(self, reads: ReadRouter) -> None:
        for outcome, count in reads.counts.items():
            self.db_reads.labels(outcome).set(count)
        for replica in reads.replicas:
            self.replica_in_rotation.labels(replica.name).set(1 if replica.in_rotation else 0)
            self.replica_lag.labels(replica.name).set(replica.lag_seconds)

    async def render(self) -> bytes:
        if self.refresh is not None:
            await self.refresh()
        return generate_latest(self.registry)


class GcPauses:
    """Times the interpreter's cyclic collections (`gc.callbacks`) into `Metrics.gc_pause`:
    a full collection over a large heap stops every request for its length."""

    def __init__(self, metrics: Metrics) -> None:
        self._children = [metrics.gc_pause.labels(str(generation)) for generation in range(3)]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        # The youngest generation is collected every few hundred allocations (about once a
        # request) in well under a millisecond: timing it would cost more than it tells.
        if info["generation"] == 0:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._children[info["generation"]].observe(time.perf_counter() - self._started)

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
