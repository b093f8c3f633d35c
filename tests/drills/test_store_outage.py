"""Drill 4: the object store goes away while the service runs, then comes back.

The store is made unreachable by closing the relay in front of moto (connections refused, open ones
cut), so moto keeps its data as a real store would through a network outage. The service must keep
answering from its local disk, and Litestream must catch up once the store is back.
"""

import subprocess
import time
from pathlib import Path

import pytest

from tests.drills.conftest import (
    S3Server,
    StackFactory,
    base_env,
    put_birthday,
    record_figures,
    restore_replica,
    tool,
    username,
    usernames,
)
from tests.support import http_status

OUTAGE_SECONDS = 5.0
CATCH_UP_TIMEOUT = 90.0


def _put_batch(base_url: str, prefix: str, count: int) -> set[str]:
    names = {username(number, prefix=prefix) for number in range(count)}
    statuses = {name: put_birthday(base_url, name) for name in sorted(names)}
    failed = {name: status for name, status in statuses.items() if status != 204}
    assert not failed, f"writes failed: {failed}"
    return names


@pytest.mark.slow
def test_service_rides_out_a_store_outage_and_replication_catches_up(
    s3_server: S3Server, stack_factory: StackFactory, replica_url: str, tmp_path: Path
) -> None:
    stack = stack_factory(tmp_path / "data", replica_url=replica_url)
    written = _put_batch(stack.base_url, "before", 50)
    time.sleep(1.5)  # one sync: the replica holds the first batch

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
            time.sleep(0.01)
        assert http_status(stack.url("/readyz")) == 200
    finally:
        s3_server.start()
    back_at = time.monotonic()
    written |= _put_batch(stack.base_url, "after", 50)

    # Restore until the replica holds every write (bounded), then stop and check once more.
    caught_up_after: float | None = None
    attempt = 0
    while time.monotonic() - back_at < CATCH_UP_TIMEOUT:
        attempt += 1
        copy = tmp_path / f"catch-up-{attempt}.db"
        restore_replica(replica_url, copy)
        if written <= usernames(copy):
            caught_up_after = time.monotonic() - back_at
            break
        time.sleep(1.0)
    assert caught_up_after is not None, f"no catch-up within {CATCH_UP_TIMEOUT} s:\n{stack.logs()}"

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
    s3_server: S3Server, stack_factory: StackFactory, replica_url: str, tmp_path: Path
) -> None:
    # A store that comes back empty (bucket recreated, objects deleted): Litestream does not notice
    # while it runs, and uploads only new changes, which cannot be restored without a snapshot. A
    # restart takes a snapshot at once. The runbook's answer to an emptied replica is that restart.
    prefix = replica_url.removeprefix(f"s3://{s3_server.bucket}/").split("?")[0]
    data = tmp_path / "data"
    stack = stack_factory(data, replica_url=replica_url)
    written = _put_batch(stack.base_url, "before", 30)
    time.sleep(1.5)
    client = s3_server.client()
    for key in s3_server.keys(prefix):
        client.delete_object(Bucket=s3_server.bucket, Key=key)
    written |= _put_batch(stack.base_url, "after", 30)
    time.sleep(2.0)

    probe = subprocess.run(
        [tool("litestream"), "restore", "-o", str(tmp_path / "probe.db"), replica_url],
        env={k: v for k, v in base_env().items() if k != "AWS_CA_BUNDLE"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    restorable_before_restart = probe.returncode == 0

    assert stack.terminate() == 0, stack.logs()
    again = stack_factory(data, replica_url=replica_url)
    time.sleep(2.0)
    copy = tmp_path / "after-restart.db"
    restore_replica(replica_url, copy, "-integrity-check", "full")
    assert again.terminate() == 0, again.logs()
    lost = written - usernames(copy)
    record_figures(
        "store-emptied",
        restorable_before_restart=restorable_before_restart,
        lost_after_restart=len(lost),
    )
    assert not lost
