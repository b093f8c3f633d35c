"""Sustained load: one long run per scenario, with the whole latency tail, the WAL's largest size and
the worker's resident set after the warm-up and at the end."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path

from scripts.benchmark.report import say
from scripts.benchmark.results import SustainedRow
from scripts.benchmark.runner import Bench
from scripts.benchmark.scenarios import Scenario
from scripts.benchmark.servers import rss_mb
from scripts.benchmark.wrk import run_wrk


class FileWatcher:
    """Samples a file's size every ``interval`` seconds in a thread; ``largest`` is the biggest seen."""

    def __init__(self, path: Path, interval: float = 0.05) -> None:
        self.path = path
        self.interval = interval
        self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="file-watcher", daemon=True)

    def __enter__(self) -> FileWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.largest = max(self.largest, self.path.stat().st_size)
            if self._stop.wait(self.interval):
                return


def sustained(bench: Bench, scenario: Scenario, seconds: float) -> SustainedRow:
    """One long load on a fresh server: the whole latency tail, the WAL's size, the worker's RSS."""
    name = bench.name("sustained", scenario.server, scenario.kind)
    script = bench.script(scenario.kind, scenario.users)
    with bench.server(scenario, name) as server:
        run_wrk(server.port, script, max(bench.warmup, 2.0))
        rss_start = rss_mb(server.worker)
        with FileWatcher(bench.database(name).with_name("hello.db-wal")) as wal:
            load = run_wrk(server.port, script, seconds)
        return SustainedRow(
            scenario=scenario.title,
            server=scenario.server,
            rps=load.rps,
            p50_ms=load.p50_ms,
            p99_ms=load.p99_ms,
            p999_ms=load.p999_ms,
            max_ms=load.max_ms,
            errors=load.errors,
            wal_max_mb=wal.largest / 1e6,
            rss_start_mb=rss_start,
            rss_end_mb=rss_mb(server.worker),
        )


def run_sustained(bench: Bench, plan: Sequence[Scenario], seconds: float) -> list[SustainedRow]:
    rows: list[SustainedRow] = []
    for scenario in plan:
        row = sustained(bench, scenario, seconds)
        say(
            f"sustained {scenario.title:<30} {scenario.server:<9} {row.rps:8.0f} req/s "
            f"p99 {row.p99_ms:7.2f} ms p99.9 {row.p999_ms:7.2f} ms max {row.max_ms:7.2f} ms "
            f"errors {row.errors} wal {row.wal_max_mb:5.1f} MB rss {row.rss_start_mb:5.1f} -> "
            f"{row.rss_end_mb:5.1f} MB"
        )
        rows.append(row)
    return rows
