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
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.drills.stack import StackFactory, record_figures, restored_usernames
from tests.support import (
    ClientThreads,
    Tmpfs,
    http_status,
    put_birthday,
    require_root_for_tmpfs,
    username,
    usernames,
    wait_until,
)

# Every loop is bounded in count and in time.
_MAX_REQUESTS = 60_000
_MAX_SECONDS = 120.0
_FULL_FOR_SECONDS = 10.0
_AFTER_GROWTH_SECONDS = 5.0


@dataclass
class _Load(ClientThreads):
    """PUTs of new users from a few threads, each answer recorded with its time."""

    base_url: str
    threads: int = 4
    answers: list[tuple[float, int, str]] = field(default_factory=list)

    def start(self) -> None:
        self._start_clients(self.threads, _MAX_SECONDS)

    def stop(self) -> None:
        self._stop_clients(timeout=15)

    def _client(self, index: int, deadline: float) -> None:
        number = 0
        while not self._stopping.is_set() and time.monotonic() < deadline:
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
        wait_until(lambda: load.first(507) is not None, 60, "the 3 MiB disk did not fill")
        full_at = load.first(507)
        assert full_at is not None
        time.sleep(_FULL_FOR_SECONDS)  # the point: clients go on for a while against the full disk
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            while_full = response.read().decode()
        with urllib.request.urlopen(stack.url("/readyz"), timeout=5) as response:
            ready_while_full = (response.status, response.read().decode())
        get_while_full = http_status(stack.url(f"/hello/{next(iter(load.acknowledged()))}"), timeout=5)
        disk.grow("256m")
        grown_at, grown_wall = time.monotonic(), datetime.now(UTC)
        least_free = disk.free_bytes()
        recovered_at = None
        while time.monotonic() - grown_at < 60 and recovered_at is None:
            least_free = min(least_free, disk.free_bytes())
            recovered_at = load.first(204, after=grown_at)
            time.sleep(0.05)  # sampling the free space while waiting for the first 204
        assert recovered_at is not None, "no write was acknowledged within 60 s of the disk growing"
        end = time.monotonic() + _AFTER_GROWTH_SECONDS
        while time.monotonic() < end:
            least_free = min(least_free, disk.free_bytes())
            time.sleep(0.05)  # sampling: the WAL must not take the space back meanwhile
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
    restored = restored_usernames(f"file://{replica}", tmp_path / "restored.db")

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
