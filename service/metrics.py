"""Prometheus metrics: one registry per application, served on a port of its own."""

import platform
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service import __version__
from service.db import SQLITE_VERSION

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "hello_http_requests",
            "HTTP requests answered, by route, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "hello_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and status.",
            ("route", "status"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.db_seconds = Histogram(
            "hello_db_query_duration_seconds",
            "Time spent in one database call, by operation.",
            ("operation",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.users = Gauge(
            "hello_users_stored",
            "Users in the database, counted when scraped.",
            registry=self.registry,
        )
        build_info = Gauge(
            "hello_build_info",
            "Always 1; the labels name the service version and the libraries in use.",
            ("version", "sqlite_version", "python_version"),
            registry=self.registry,
        )
        build_info.labels(__version__, SQLITE_VERSION, platform.python_version()).set(1)
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._db_children: dict[str, Histogram] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # labels() builds and looks up a key under a lock on every call; the children are kept
        # instead, one per label set (as few as the label sets themselves).
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            code = str(status)
            children = (self.requests.labels(route, method, code), self.request_seconds.labels(route, code))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_db(self, operation: str, seconds: float) -> None:
        child = self._db_children.get(operation)
        if child is None:
            child = self._db_children[operation] = self.db_seconds.labels(operation)
        child.observe(seconds)

    def exposition(self) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
