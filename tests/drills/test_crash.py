"""Drill 2: the power goes out under write load (kill -9 of every process); the disk survives."""

import time
from pathlib import Path

import pytest

from tests.drills.conftest import StackFactory, WriteLoad, record_figures, usernames


@pytest.mark.slow
def test_kill_under_load_keeps_every_acknowledged_write(
    stack_factory: StackFactory, replica_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    stack = stack_factory(data, replica_url=replica_url)
    with WriteLoad(stack.base_url, threads=4, max_requests=20000, max_seconds=10) as load:
        time.sleep(2.0)
        stack.kill()
    acknowledged = set(load.acknowledged)
    assert len(acknowledged) > 100, f"too little load to mean anything: {len(acknowledged)} writes"

    # Same disk: the -wal file is still there and SQLite recovers from it; no restore runs.
    again = stack_factory(data, replica_url=replica_url)
    assert "restoring" not in again.logs()
    assert again.terminate() == 0, again.logs()
    lost = acknowledged - usernames(again.database_path)
    record_figures("crash", acknowledged=len(acknowledged), lost=len(lost))
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {sorted(lost)[:5]}"
