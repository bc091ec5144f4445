"""Prometheus metrics, in a registry per app so that tests can build many apps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

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
        self.readmodel_lag = Gauge(
            "vigil_readmodel_lag_notifications",
            "Ledger notifications not yet applied to the query read model.",
            registry=self.registry,
        )

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

    def watch_lag(self, lag: Callable[[], int]) -> None:
        self.readmodel_lag.set_function(lambda: float(lag()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
