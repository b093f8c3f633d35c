"""Drill 6: a rolling deploy as Fly does it to a single machine with a volume.

Fly stops the machine (SIGTERM to the entrypoint, then waits), and starts the new image on the same
volume and address. With one SQLite writer there is no second machine to take the traffic, so the
window without service is measured, not wished away; acknowledged writes must all survive, both on
the volume and in the replica.
"""

import time
from pathlib import Path

import pytest

from tests.drills.stack import StackFactory, record_figures, restored_usernames, under_write_load
from tests.support import free_port, usernames


@pytest.mark.slow
def test_rolling_replacement_under_load_loses_no_write(
    stack_factory: StackFactory, replica_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    port = free_port()
    old = stack_factory(data, replica_url=replica_url, port=port)
    with under_write_load(old, threads=2, pause=0.02, max_requests=3000, max_seconds=25) as load:
        stop_began = time.monotonic()
        assert old.terminate() == 0, old.logs()
        stopped_in = time.monotonic() - stop_began
        start_began = time.monotonic()
        new = stack_factory(data, replica_url=replica_url, port=port)
        started_in = time.monotonic() - start_began
        time.sleep(2.0)  # pacing: the load goes on against the new stack for two seconds
    assert load.sent < load.max_requests, "the load ran out before the new stack had served"
    after_restart = [at for at in load.acknowledged.values() if at > start_began + started_in]
    assert after_restart, "the new stack acknowledged no write"

    assert new.terminate() == 0, new.logs()
    acknowledged = set(load.acknowledged)
    lost_on_disk = acknowledged - usernames(new.database_path)
    lost_in_replica = acknowledged - restored_usernames(replica_url, tmp_path / "replica.db")
    record_figures(
        "rolling",
        requests=load.sent,
        acknowledged=len(acknowledged),
        failed_requests=load.failures,
        longest_without_service_ms=round(load.longest_gap() * 1000),
        old_stop_ms=round(stopped_in * 1000),
        new_start_to_ready_ms=round(started_in * 1000),
        lost=len(lost_on_disk),
        lost_in_replica=len(lost_in_replica),
    )
    assert not lost_on_disk
    assert not lost_in_replica
