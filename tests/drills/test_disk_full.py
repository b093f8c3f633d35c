"""Drill: the database's disk fills up under write load, then grows (as `fly volumes extend` does).

The whole stack (scripts/start.sh: Litestream and gunicorn) runs with its database on a real 3 MiB
tmpfs and a `file://` replica on a normal folder. Clients PUT new users until the disk is full, go on
for a while against the full disk, then the tmpfs is grown to 256 MiB under the running stack.

Printed: the status codes seen, the log lines about the full disk (a handful, not one per request),
the time from the growth to the first 204, the least free space after the growth (the WAL must not
take it back), and, after a graceful stop and a restore of the replica, the acknowledged writes
missing from it (must be 0).
"""

import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.drills.conftest import (
    StackFactory,
    put_birthday,
    record_figures,
    restore_replica,
    username,
    usernames,
)
from tests.support import Tmpfs, require_root_for_tmpfs

# Every loop is bounded in count and in time.
_MAX_REQUESTS = 60_000
_MAX_SECONDS = 120.0
_FULL_FOR_SECONDS = 10.0
_AFTER_GROWTH_SECONDS = 5.0


@dataclass
class _Load:
    """PUTs of new users from a few threads, each answer recorded with its time."""

    base_url: str
    threads: int = 4
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        deadline = time.monotonic() + _MAX_SECONDS
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index, deadline), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=15)

    def _run(self, index: int, deadline: float) -> None:
        number = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            name = username(number * self.threads + index, prefix="d")
            number += 1
            if number * self.threads > _MAX_REQUESTS:
                return
            status = put_birthday(self.base_url, name, timeout=10.0)
            with self._lock:
                self.answers.append((time.monotonic(), status, name))
            if status != 204:
                time.sleep(0.01)  # a client that backs off a little on an error, as a real one would

    def first(self, status: int, after: float = 0.0) -> float | None:
        with self._lock:
            return next((t for t, s, _ in self.answers if s == status and t >= after), None)

    def statuses(self) -> Counter[int]:
        with self._lock:
            return Counter(status for _, status, _ in self.answers)

    def acknowledged(self) -> set[str]:
        with self._lock:
            return {name for _, status, name in self.answers if status == 204}


def _wait_for(check: Callable[[], float | None], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()) is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(what)


def _metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


@pytest.mark.slow
def test_disk_full_answers_507_logs_once_and_recovers_without_losing_a_write(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    require_root_for_tmpfs()
    disk = Tmpfs(tmp_path / "disk", "3m")
    try:
        _drill(stack_factory, tmp_path, disk)
    finally:
        disk.unmount()


def _drill(stack_factory: StackFactory, tmp_path: Path, disk: Tmpfs) -> None:
    replica = tmp_path / "replica"
    stack = stack_factory(
        disk.path,
        replica_url=f"file://{replica}",
        # INFO: the service's disk-full lines and Litestream's own ("sync recovered") are all in the log.
        extra_env={"LOG_LEVEL": "INFO", "DISK_FULL_RESUME_MB": "64"},
    )
    metrics_url = f"http://127.0.0.1:{stack.env['METRICS_PORT']}/metrics"
    load = _Load(stack.base_url)
    load.start()
    try:
        full_at = _wait_for(lambda: load.first(507), 60, "the 3 MiB disk did not fill within 60 s")
        time.sleep(_FULL_FOR_SECONDS)
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            while_full = response.read().decode()
        with urllib.request.urlopen(stack.url("/readyz"), timeout=5) as response:
            ready_while_full = (response.status, response.read().decode())
        get_while_full = _get_status(stack.url(f"/hello/{next(iter(load.acknowledged()))}"))
        disk.grow("256m")
        grown_at, grown_wall = time.monotonic(), datetime.now(UTC)
        least_free = disk.free_bytes()
        recovered_at = None
        while time.monotonic() - grown_at < 60 and recovered_at is None:
            least_free = min(least_free, disk.free_bytes())
            recovered_at = load.first(204, after=grown_at)
            time.sleep(0.05)
        assert recovered_at is not None, "no write was acknowledged within 60 s of the disk growing"
        end = time.monotonic() + _AFTER_GROWTH_SECONDS
        while time.monotonic() < end:
            least_free = min(least_free, disk.free_bytes())
            time.sleep(0.05)
    finally:
        load.stop()
    statuses = load.statuses()
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        after = response.read().decode()

    log = stack.logs()
    # The service's lines and Litestream's own about the full disk and its recovery.
    disk_lines = [
        line
        for line in log.splitlines()
        if re.search(r"disk full|no space left|disk errors|sync recovered", line, re.IGNORECASE)
    ]
    # Litestream's own JSON line: {"time":"...Z","level":"INFO","msg":"sync recovered",...}
    resumed = re.search(r'^\{"time":"([^"]+)","level":"INFO","msg":"sync recovered"', log, re.MULTILINE)
    assert stack.terminate() == 0, log[-4000:]
    acknowledged = load.acknowledged()
    on_disk = usernames(stack.database_path)
    restored_path = tmp_path / "restored.db"
    restore_replica(f"file://{replica}", restored_path)
    restored = usernames(restored_path)

    figures = {
        "statuses": dict(sorted(statuses.items())),
        "acknowledged": len(acknowledged),
        "first_507_after_s": round(full_at - stack.started_at, 1),
        "full_for_s": round(grown_at - full_at, 1),
        "disk_full_log_lines": len(disk_lines),
        "log_kib": len(log.encode()) // 1024,
        "litestream_resumed_after_growth_s": (
            round((datetime.fromisoformat(resumed.group(1)) - grown_wall).total_seconds(), 2)
            if resumed
            else None
        ),
        "first_204_after_growth_s": round(recovered_at - grown_at, 2),
        "least_free_after_growth_mib": round(least_free / 2**20, 1),
        "refused_metric": _metric(after, "hello_disk_full_refused_writes_total"),
        "missing_on_disk": len(acknowledged - on_disk),
        "missing_from_replica": len(acknowledged - restored),
    }
    record_figures("disk-full", **figures)
    print("\n".join(line[:300] for line in disk_lines))

    # A full disk is refused cleanly: 204 or 507, never a 500, never an acknowledged write lost.
    assert set(statuses) <= {204, 507}, statuses
    assert _metric(while_full, "hello_disk_full") == 1.0
    assert ready_while_full[0] == 200 and '"writes": "refused"' in ready_while_full[1]
    assert get_while_full == 200  # reads go on
    assert _metric(after, "hello_disk_full") == 0.0
    assert _metric(after, "litestream_disk_full") == 0.0  # Litestream's, through the service's port
    # A handful of lines per episode, not one per refused request.
    assert 2 <= len(disk_lines) <= 30, disk_lines
    assert "Traceback" not in log
    assert not acknowledged - on_disk
    assert not acknowledged - restored, f"{len(acknowledged - restored)} acknowledged writes missing"


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
