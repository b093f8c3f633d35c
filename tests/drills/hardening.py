"""Helpers for the boot, reload and slow-client drills: a real gunicorn process and a GET prober."""

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.drills.conftest import ROOT, base_env, tool
from tests.support import free_port


def start_gunicorn(
    database: Path, log_path: Path, port: int | None = None, **settings: str
) -> tuple["subprocess.Popen[bytes]", int]:
    """gunicorn -c gunicorn.conf.py in its own process group, its output into ``log_path``."""
    port = port or free_port()
    env = {
        **base_env(),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "DATABASE_PATH": str(database),
        "SHUTDOWN_TIMEOUT": "10",
        **settings,
    }
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [tool("gunicorn"), "-c", "gunicorn.conf.py"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, port


def stop(process: "subprocess.Popen[bytes]") -> int:
    """SIGTERM, then SIGKILL of the whole group if it does not exit within 30 s; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


@dataclass
class Prober:
    """GETs of ``urls`` in turn from one thread, every ``interval`` s, bounded in count and time;
    each answer's status (None: no answer) and latency."""

    urls: list[str]
    interval: float = 0.02
    max_requests: int = 2000
    max_seconds: float = 30.0
    results: list[tuple[str, int | None, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "Prober":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=self.max_seconds + 10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for number in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > deadline:
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
            time.sleep(self.interval)

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
