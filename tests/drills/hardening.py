"""For the boot, reload and slow-client drills: a GET prober that measures each answer."""

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from tests.support import ClientThreads


@dataclass
class Prober(ClientThreads):
    """GETs of ``urls`` in turn from one thread, every ``interval`` s, bounded in count and time;
    each answer's status (None: no answer) and latency."""

    urls: list[str]
    interval: float = 0.02
    max_requests: int = 2000
    max_seconds: float = 30.0
    results: list[tuple[str, int | None, float]] = field(default_factory=list)

    def __enter__(self) -> "Prober":
        self._start_clients(1, self.max_seconds)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_clients(timeout=self.max_seconds + 10)

    def _client(self, index: int, deadline: float) -> None:
        for number in range(self.max_requests):
            if self._stopping.is_set() or time.monotonic() > deadline:
                return
            url = self.urls[number % len(self.urls)]
            started = time.perf_counter()
            status: int | None
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    response.read()
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = None
            self.results.append((url, status, time.perf_counter() - started))
            time.sleep(self.interval)  # pacing: one probe every interval

    def statuses(self, url_part: str) -> list[int | None]:
        return [status for url, status, _ in self.results if url_part in url]

    def latency_ms(self) -> dict[str, float]:
        """p50, p99 and max of every probe's latency, in milliseconds."""
        times = sorted(seconds * 1000 for _, _, seconds in self.results)
        if not times:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}
        return {
            "p50": round(times[len(times) // 2], 1),
            "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
            "max": round(times[-1], 1),
        }
