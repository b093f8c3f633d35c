"""A full disk: refuse writes at once with 507 until space returns and Litestream has resumed.

Without this, every PUT on a full disk went to SQLite, failed with SQLITE_FULL and was answered
500 with a traceback in the log. Now the first failure starts an *episode*:

- every PUT is answered 507 problem+json with Retry-After, without touching the database;
- the log says so once when it starts and once when it ends (with the count of refused writes);
- ``hello_disk_full`` is 1 and ``/readyz`` says that writes are refused (it stays 200: reads work);
- a task checks once a second whether the episode can end.

It ends in two steps. Writes are let through again only when the database's file system has
``DISK_FULL_RESUME_MB`` free *and* Litestream is no longer paused by the full disk: Litestream
backs off after a failed sync (up to 5 minutes) while holding its read lock, and meanwhile every
write the service accepts grows the WAL, which cannot restart behind that lock, back into the
freed space before Litestream can use it. Then the first write that commits ends the episode; one
that meets a full disk again goes back to refusing, within the same episode (no new log line).
"""

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from service.http.litestream_metrics import LitestreamMetrics
from service.http.metrics import Metrics
from service.http.problems import InsufficientStorage
from service.store.sqlite import is_disk_full

log = logging.getLogger(__name__)

# Space comes back by an operator's hand (`fly volumes extend`), in minutes rather than seconds.
RETRY_AFTER_SECONDS = 30
_CHECK_INTERVAL_SECONDS = 1.0
_MIB = 1024 * 1024


@dataclass
class _Episode:
    started: float
    refused: int = 0
    # "space", "litestream" or "trial" (writes let through; the first commit ends the episode).
    waiting_for: str = "space"


class DiskFullWatch:
    """Whether writes are refused for a full disk; hangs off the app as ``keys.DISK``."""

    def __init__(
        self,
        database_path: Path,
        resume_free_bytes: int,
        metrics: Metrics,
        litestream: LitestreamMetrics | None,
        check_interval: float = _CHECK_INTERVAL_SECONDS,
    ) -> None:
        self._folder = database_path.resolve().parent
        self._resume_free_bytes = resume_free_bytes
        self._metrics = metrics
        self._litestream = litestream
        self._check_interval = check_interval
        self._episode: _Episode | None = None
        self._refusing = False
        self._recovery: asyncio.Task[None] | None = None

    @property
    def refusing(self) -> bool:
        return self._refusing

    def reason(self) -> str | None:
        """What writes wait for, for /readyz; None while writes are taken."""
        if not self._refusing or self._episode is None:
            return None
        if self._episode.waiting_for == "litestream":
            return "the disk was full; space is back, waiting for Litestream to resume replication"
        return (
            f"the disk is full; writes resume when {self._resume_free_bytes // _MIB} MiB are free "
            f"and Litestream replicates again"
        )

    def check(self) -> None:
        """Raise 507 if writes are refused right now; called before a write reaches the store."""
        if self._refusing:
            self._count_refused()
            raise self._problem()

    def failed(self, exc: BaseException) -> InsufficientStorage | None:
        """A write failed with ``exc``: if the disk is full, refuse writes from now on and return the
        answer for this one; otherwise None (the error is not this module's)."""
        if not is_disk_full(exc):
            return None
        if self._episode is None:
            self._episode = _Episode(started=time.monotonic())
            self._metrics.disk_full_episodes += 1
            log.warning(
                "disk full: refusing writes (507) until space returns",
                extra={
                    "database_folder": str(self._folder),
                    "free_mib": round(self._free_bytes() / _MIB, 1),
                    "resume_free_mib": self._resume_free_bytes // _MIB,
                    "reason": str(exc),
                },
            )
        self._episode.waiting_for = "space"
        self._refusing = True
        self._metrics.disk_full = 1
        self._count_refused()
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover())
        return self._problem()

    def succeeded(self) -> None:
        """A write committed: a trial after a full disk worked, so the episode is over."""
        episode = self._episode
        if episode is None or self._refusing:
            return
        self._episode = None
        log.warning(
            "disk full is over: writes are taken again",
            extra={
                "refused_writes": episode.refused,
                "seconds": round(time.monotonic() - episode.started, 1),
            },
        )

    async def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
            self._recovery = None

    def _count_refused(self) -> None:
        self._metrics.disk_full_refused_writes += 1
        if self._episode is not None:
            self._episode.refused += 1

    def _problem(self) -> InsufficientStorage:
        return InsufficientStorage(
            "the server's disk is full: this write was not stored; retry later",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    def _free_bytes(self) -> int:
        stats = os.statvfs(self._folder)
        # f_bavail: what an unprivileged process can still use (root's reserve left out).
        return stats.f_bavail * stats.f_frsize

    async def _recover(self) -> None:
        while self._refusing and self._episode is not None:
            await asyncio.sleep(self._check_interval)
            episode = self._episode
            free = self._free_bytes()
            if free < self._resume_free_bytes:
                continue
            if self._litestream is not None and await self._litestream.disk_full() is not False:
                # Paused by the full disk (or not answering): a write now would go into the WAL
                # that Litestream cannot yet copy, and take back the space it needs.
                if episode.waiting_for != "litestream":
                    episode.waiting_for = "litestream"
                    log.info(
                        "disk full: space is back; waiting for Litestream to resume before taking writes",
                        extra={"free_mib": round(free / _MIB, 1)},
                    )
                continue
            episode.waiting_for = "trial"
            self._refusing = False
            self._metrics.disk_full = 0
