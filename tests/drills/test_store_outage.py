"""Drill 4: the object store goes away while the service runs, then comes back.

The store is made unreachable by closing the relay in front of moto (connections refused, open ones
cut), so moto keeps its data as a real store would through a network outage. The service must keep
answering from its local disk, and Litestream must catch up once the store is back.
"""

import subprocess
import time
from pathlib import Path

import pytest

from tests.drills.stack import (
    Machine,
    S3Server,
    base_env,
    record_figures,
    restore_replica,
    restored_usernames,
    tool,
    wait_replicated,
)
from tests.support import http_status, put_birthday, put_users, username, usernames, wait_until

OUTAGE_SECONDS = 5.0
CATCH_UP_TIMEOUT = 90.0


@pytest.mark.slow
def test_service_rides_out_a_store_outage_and_replication_catches_up(
    s3_server: S3Server, machine: Machine, replica_url: str, tmp_path: Path
) -> None:
    stack = machine.start()
    written = put_users(stack.base_url, "before", 50)
    wait_replicated(replica_url, written, tmp_path / "checks")

    s3_server.stop()
    try:
        outage_began = time.monotonic()
        during = 0
        while time.monotonic() - outage_began < OUTAGE_SECONDS and during < 2000:
            name = username(during, prefix="during")
            assert put_birthday(stack.base_url, name) == 204, stack.logs()
            assert http_status(stack.url(f"/hello/{name}")) == 200
            written.add(name)
            during += 1
            time.sleep(0.01)  # pacing: steady writes through the outage
        assert http_status(stack.url("/readyz")) == 200
    finally:
        s3_server.start()
    back_at = time.monotonic()
    written |= put_users(stack.base_url, "after", 50)

    # Restore until the replica holds every write (bounded), then stop and check once more.
    try:
        wait_replicated(replica_url, written, tmp_path / "catch-up", timeout=CATCH_UP_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"no catch-up within {CATCH_UP_TIMEOUT} s:\n{stack.logs()}")
    caught_up_after = time.monotonic() - back_at

    assert stack.terminate() == 0, stack.logs()
    final = tmp_path / "final.db"
    restore_seconds = restore_replica(replica_url, final, "-integrity-check", "full")
    lost = written - usernames(final)
    record_figures(
        "store-outage",
        outage_s=OUTAGE_SECONDS,
        writes_during_outage=during,
        failed_requests=0,
        catch_up_after_store_back_ms=round(caught_up_after * 1000),
        lost=len(lost),
        restore_ms=round(restore_seconds * 1000),
    )
    assert not lost


@pytest.mark.slow
def test_store_that_lost_its_data_is_refilled_by_a_restart(
    s3_server: S3Server, machine: Machine, replica_url: str, tmp_path: Path
) -> None:
    # A store that comes back empty (bucket recreated, objects deleted): Litestream does not notice
    # while it runs, and uploads only new changes, which cannot be restored without a snapshot. A
    # restart takes a snapshot at once. The runbook's answer to an emptied replica is that restart.
    prefix = replica_url.removeprefix(f"s3://{s3_server.bucket}/").split("?")[0]
    stack = machine.start()
    written = put_users(stack.base_url, "before", 30)
    wait_replicated(replica_url, written, tmp_path / "checks")
    client = s3_server.client()
    for key in s3_server.keys(prefix):
        client.delete_object(Bucket=s3_server.bucket, Key=key)
    written |= put_users(stack.base_url, "after", 30)
    wait_until(
        lambda: any(key.endswith(".ltx") for key in s3_server.keys(prefix)),
        timeout=30,
        what="Litestream uploaded nothing after the replica was emptied",
    )

    probe = subprocess.run(
        [tool("litestream"), "restore", "-o", str(tmp_path / "probe.db"), replica_url],
        env={k: v for k, v in base_env().items() if k != "AWS_CA_BUNDLE"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    restorable_before_restart = probe.returncode == 0

    assert stack.terminate() == 0, stack.logs()
    again = machine.start()
    wait_replicated(replica_url, written, tmp_path / "checks")
    in_replica = restored_usernames(replica_url, tmp_path / "after-restart.db", "-integrity-check", "full")
    assert again.terminate() == 0, again.logs()
    lost = written - in_replica
    record_figures(
        "store-emptied",
        restorable_before_restart=restorable_before_restart,
        lost_after_restart=len(lost),
    )
    assert not lost
