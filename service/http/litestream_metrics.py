"""Litestream's metrics, read over loopback: served again on the service's metrics port, and asked
whether Litestream is paused by a full disk.

Litestream's listener also serves Go's /debug/pprof/ and /debug/vars, so it listens on loopback
only (LITESTREAM_METRICS_ADDR); Fly's Prometheus gets Litestream's series through the service's
/metrics instead.
"""

import logging

import aiohttp

from service.http.metrics import Metrics

log = logging.getLogger(__name__)

# Fly's Prometheus waits for the whole scrape; Litestream answers its own in milliseconds, so a
# second means it is stuck, and the service's own series must not wait longer than that for it.
_TIMEOUT_SECONDS = 1.0
_DISK_FULL = "litestream_disk_full"


class LitestreamMetrics:
    """A client for Litestream's /metrics; its HTTP session opens on first use, in the event loop."""

    def __init__(self, address: str, metrics: Metrics) -> None:
        host, _, port = address.rpartition(":")
        self.url = f"http://{host or '127.0.0.1'}:{port}/metrics"
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._logged_failure = False

    async def text(self) -> str | None:
        """Litestream's exposition (Prometheus text format), or None when it does not answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_SECONDS),
                # The text format, never protobuf or OpenMetrics, so that it can follow ours as is.
                headers={"Accept": "text/plain;version=0.0.4"},
            )
        try:
            async with self._session.get(self.url) as response:
                response.raise_for_status()
                body = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._metrics.litestream_scrape_failures += 1
            self._metrics.litestream_up = 0
            # Once until it answers again: a scrape every few seconds must not log every time.
            if not self._logged_failure:
                self._logged_failure = True
                log.warning(
                    "Litestream's metrics do not answer",
                    extra={"url": self.url, "reason": str(exc) or type(exc).__name__},
                )
            return None
        self._metrics.litestream_up = 1
        self._logged_failure = False
        return body if body.endswith("\n") or not body else body + "\n"

    async def disk_full(self) -> bool | None:
        """Whether Litestream is paused by a full disk; None when it does not answer.

        Litestream sets ``litestream_disk_full`` to 1 when a sync fails for lack of space and back to
        0 only when a later sync gets past that; between the two it backs off (up to 5 minutes), so
        0 after a 1 means its own sync loop has run again. A Litestream without the series is taken
        as not paused: nothing better can be known.
        """
        text = await self.text()
        if text is None:
            return None
        for line in text.splitlines():
            if line.startswith(_DISK_FULL) and line[len(_DISK_FULL) : len(_DISK_FULL) + 1] in ("{", " "):
                if float(line.rsplit(" ", 1)[1]) != 0:
                    return True
        return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
