"""Drill 2: the power goes out under write load (kill -9 of every process); the disk survives."""

import pytest

from tests.drills.stack import Machine, killed_under_write_load, record_figures
from tests.support import usernames


@pytest.mark.slow
def test_kill_under_load_keeps_every_acknowledged_write(machine: Machine) -> None:
    load = killed_under_write_load(machine.start())
    acknowledged = set(load.acknowledged)
    assert len(acknowledged) > 100, f"too little load to mean anything: {len(acknowledged)} writes"

    # Same disk: the -wal file is still there and SQLite recovers from it; no restore runs.
    again = machine.start()
    assert "restoring" not in again.logs()
    assert again.terminate() == 0, again.logs()
    lost = acknowledged - usernames(again.database_path)
    record_figures("crash", acknowledged=len(acknowledged), lost=len(lost))
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {sorted(lost)[:5]}"
