"""Prometheus metrics, in a registry per app so that tests can build many apps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from audit_core.followers import FollowerStatus

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "vigil_http_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vigil_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ingested = Counter(
            "vigil_events_ingested_total",
            "Events recorded through the API (idempotent repeats included).",
            ["mode"],
            registry=self.registry,
        )
        self.ingest_errors = Counter(
            "vigil_ingest_errors_total",
            "Refused or failed ingest requests by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.group_size = Histogram(
            "vigil_group_commit_requests",
            "Write requests (single events and batches) combined per ledger transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "vigil_auth_failures_total",
            "Requests refused with 401 or 403.",
            ["status"],
            registry=self.registry,
        )
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a request and observe its latency (the labelled series kept, not
        looked up through ``labels()`` on every request)."""
        series = self._request_series.get((method, route, status))
        if series is None:
            series = self._request_series[(method, route, status)] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        count, latency = series
        count.inc()
        latency.observe(seconds)

    def watch_followers(self, statuses: Callable[[], Sequence[FollowerStatus]]) -> None:
        """Report every follower's lag, errors and stop, read from the database at each
        scrape (the followers may run in another process)."""
        self.registry.register(_FollowerCollector(statuses))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FollowerCollector(Collector):
    def __init__(self, statuses: Callable[[], Sequence[FollowerStatus]]):
        self._statuses = statuses

    def collect(self) -> Iterator[Any]:
        lag_events = GaugeMetricFamily(
            "vigil_follower_lag_events",
            "Ledger notifications the follower has not processed yet.",
            labels=["follower"],
        )
        lag_seconds = GaugeMetricFamily(
            "vigil_follower_lag_seconds",
            "Age of the oldest record the follower has not processed yet.",
            labels=["follower"],
        )
        errors = CounterMetricFamily(
            "vigil_follower_errors",
            "Failed attempts of the follower (retried, or stopped at a record).",
            labels=["follower"],
        )
        stopped = GaugeMetricFamily(
            "vigil_follower_stopped",
            "1 while the follower is stopped at a record it cannot process.",
            labels=["follower"],
        )
        try:
            statuses = self._statuses()
        except Exception:  # the database is down: /readyz says so; metrics still answer
            statuses = []
        for status in statuses:
            lag_events.add_metric([status.name], status.lag_events)
            if status.lag_seconds is not None:
                lag_seconds.add_metric([status.name], status.lag_seconds)
            errors.add_metric([status.name], status.errors_total)
            stopped.add_metric([status.name], 1.0 if status.stopped else 0.0)
        yield from (lag_events, lag_seconds, errors, stopped)

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only: the database may be down at start
