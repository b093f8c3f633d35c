"""Prometheus metrics: one registry per application, served on a port of its own."""

import platform
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from service import __version__
from service.contract import BootReport
from service.store.sqlite import SQLITE_VERSION

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _Histograms:
    """Histograms by label set, kept in plain lists: the bucket counts, then the +Inf count, then the sum.

    Every observation happens in the event loop's thread (requests and database calls are timed
    there), so no lock is needed; the library's own histograms take a lock per bucket and per sum
    and walk the buckets in Python, several times the cost of this on every request.
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.series: dict[tuple[str, ...], list[float]] = {}
        # As the library writes "le" for these bounds ("0.0005", "1.0", ...).
        self._le = [repr(bound) for bound in _LATENCY_BUCKETS] + ["+Inf"]

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        # "le" buckets: a value equal to a bound counts in that bound's bucket.
        series[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, series in self.series.items():
            cumulative, buckets = 0.0, []
            for le, count in zip(self._le, series[:-1], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(labels), buckets, series[-1])
        return family


class _RequestCollector(Collector):
    """Exposes the request and database figures that ``Metrics`` counts, when scraped."""

    def __init__(self, metrics: "Metrics") -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        requests = CounterMetricFamily(
            "hello_http_requests",
            "HTTP requests answered, by route, method and status.",
            labels=("route", "method", "status"),
        )
        for (route, method, status), count in metrics.request_counts.items():
            requests.add_metric([route, method, str(status)], count)
        yield requests
        yield metrics.request_seconds.family()
        yield metrics.db_seconds.family()
        yield GaugeMetricFamily(
            "hello_disk_full",
            "1 while writes are refused because the database's disk is full (or Litestream has not "
            "resumed after it), else 0.",
            value=metrics.disk_full,
        )
        yield CounterMetricFamily(
            "hello_disk_full_refused_writes",
            "PUTs answered 507 because the disk was full; none of them was stored.",
            value=metrics.disk_full_refused_writes,
        )
        yield CounterMetricFamily(
            "hello_disk_full_episodes",
            "Times the disk was found full (each followed by refused writes until space returned).",
            value=metrics.disk_full_episodes,
        )
        if metrics.durability == "replicated":
            acks = CounterMetricFamily(
                "hello_replication_acks",
                "PUTs committed in DURABILITY=replicated, by outcome: confirmed (204: the replica holds "
                "the write), timeout (503: not confirmed within REPLICATION_ACK_TIMEOUT), failed (503: "
                "the sync came back with an error), unavailable (503: writes refused after the commit).",
                labels=("outcome",),
            )
            for outcome in ("confirmed", "timeout", "failed", "unavailable"):
                acks.add_metric([outcome], metrics.replication_acks.get(outcome, 0))
            yield acks
            yield metrics.replication_wait.family()
            yield CounterMetricFamily(
                "hello_replication_syncs",
                "Syncs sent to Litestream's control socket (one per group of PUTs waiting).",
                value=metrics.replication_syncs,
            )
            yield CounterMetricFamily(
                "hello_replication_sync_failures",
                "Syncs that did not come back 200 in time (each failed every PUT waiting on it).",
                value=metrics.replication_sync_failures,
            )
        yield GaugeMetricFamily(
            "hello_litestream_metrics_up",
            "1 if Litestream's own metrics answered the last time they were read, else 0.",
            value=metrics.litestream_up,
        )
        yield CounterMetricFamily(
            "hello_litestream_metrics_failures",
            "Reads of Litestream's metrics (over loopback) that got no answer in time.",
            value=metrics.litestream_scrape_failures,
        )


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # DURABILITY: the replication series exist only when it is "replicated".
    durability: str = "local"

    def __post_init__(self) -> None:
        self.request_counts: dict[tuple[str, str, int], int] = {}
        self.request_seconds = _Histograms(
            "hello_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and status.",
            ("route", "status"),
        )
        self.db_seconds = _Histograms(
            "hello_db_query_duration_seconds",
            "Time spent in one database call, by operation.",
            ("operation",),
        )
        self.replication_wait = _Histograms(
            "hello_replication_ack_wait_seconds",
            "Time a PUT waited, from its commit, for the replica to confirm it (DURABILITY=replicated).",
            ("outcome",),
        )
        self.replication_acks: dict[str, int] = {}
        self.replication_syncs = 0
        self.replication_sync_failures = 0
        self.registry.register(_RequestCollector(self))
        # hello_process_start_time_seconds, _resident_memory_bytes, _open_fds...: read from /proc at each
        # scrape. Prefixed, because Litestream's series that follow ours carry its own process_*.
        ProcessCollector(namespace="hello", registry=self.registry)
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
        durability_info = Gauge(
            "hello_durability_info",
            "Always 1; mode is what a PUT's 204 means: local (committed on this machine's volume) or "
            "replicated (also held by the replica).",
            ("mode",),
            registry=self.registry,
        )
        durability_info.labels(self.durability).set(1)
        self.boot_outcome = Gauge(
            "hello_boot_outcome",
            "1 for what this start found the local database to be: new, restored, kept, behind or "
            "diverged (behind and diverged: set aside, and the replica's latest restored).",
            ("outcome",),
            registry=self.registry,
        )
        self.boot_rows = Gauge(
            "hello_boot_rows",
            "Rows of the database set aside at this start (set_aside), and those re-applied because "
            "they were newer than the replica's for the same user (reapplied).",
            ("kind",),
            registry=self.registry,
        )
        self.generation = Gauge(
            "hello_replica_generation_info",
            "The replica generation this stack writes, named by the writer lease (root: the replica's "
            "own path; anything else: <path>/generations/<name>, after a takeover).",
            ("generation",),
            registry=self.registry,
        )
        self.merged = Gauge(
            "hello_set_aside_merged",
            "Since the stack started: copies delivered by machines that may not write (deliveries), their "
            "rows (rows_read), and those merged because they were newer (rows_written).",
            ("kind",),
            registry=self.registry,
        )
        self.lease_remaining = Gauge(
            "hello_writer_lease_remaining_seconds",
            "Seconds before the writer lease's deadline, past which writes are refused (negative once "
            "passed); absent without a lease (the PostgreSQL profile, the development server).",
            registry=self.registry,
        )
        self._status_text: dict[int, str] = {}
        # Set by the disk-full watch (service/http/diskfull.py) and the Litestream client
        # (service/http/litestream_metrics.py).
        self.disk_full = 0
        self.disk_full_refused_writes = 0
        self.disk_full_episodes = 0
        self.litestream_up = 0
        self.litestream_scrape_failures = 0

    def record_boot(self, report_json: str) -> None:
        """What the supervisor's boot did (its ``BootReport`` as JSON); nothing when not supervised."""
        if not report_json:
            return
        report = BootReport.from_json(report_json)
        self.boot_outcome.labels(report.outcome).set(1)
        self.boot_rows.labels("set_aside").set(report.rows_set_aside)
        self.boot_rows.labels("reapplied").set(report.rows_reapplied)
        self.generation.labels(report.generation or "root").set(1)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.request_counts[key] = self.request_counts.get(key, 0) + 1
        code = self._status_text.get(status)
        if code is None:
            code = self._status_text[status] = str(status)
        self.request_seconds.observe((route, code), seconds)

    def count_replication_ack(self, outcome: str, seconds: float) -> None:
        self.replication_acks[outcome] = self.replication_acks.get(outcome, 0) + 1
        self.replication_wait.observe((outcome,), seconds)

    def observe_db(self, operation: str, seconds: float) -> None:
        self.db_seconds.observe((operation,), seconds)

    def exposition(self, appended: str | None = None) -> web.Response:
        """The text exposition; ``appended`` (another process's, e.g. Litestream's) follows it as is."""
        body = generate_latest(self.registry)
        if appended:
            body += appended.encode()
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
