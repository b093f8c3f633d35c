"""The writer lease's own rules, against a real S3 server (moto) and real file locks."""

import os
import time
from pathlib import Path

import pytest

from service.lease import FileLock, Holder, LeaseHeld, LeaseLost, S3Lease, volume_lock
from service.replica import S3Replica, parse_s3_url
from tests.drills.conftest import CREDENTIALS, S3Server


def _holder(machine: str, database: str = "/data/hello.db") -> Holder:
    return Holder(
        machine, database, os.getpid(), f"{machine}-{time.monotonic_ns()}", "2026-12-03T00:00:00+00:00"
    )


def _lease(s3_server: S3Server, prefix: str, holder: Holder, ttl: float = 30) -> S3Lease:
    url = s3_server.replica_url(prefix)
    return S3Lease(S3Replica(url, parse_s3_url(url), CREDENTIALS), holder, ttl)


def test_one_holder_at_a_time_and_a_release_hands_over_at_once(s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"lease-{tmp_path.name}"
    first = _lease(s3_server, prefix, _holder("machine-a"))
    second = _lease(s3_server, prefix, _holder("machine-b"))
    assert "no lease before" in first.acquire()
    with pytest.raises(LeaseHeld, match=r"machine machine-a \(database /data/hello.db, pid \d+\) since 2026"):
        second.acquire()
    first.renew()
    first.release()
    assert "which released it" in second.acquire()


def test_the_same_machine_and_database_take_it_over_at_once(s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"lease-{tmp_path.name}"
    _lease(s3_server, prefix, _holder("machine-a")).acquire()  # then crashes: never released
    restarted = _lease(s3_server, prefix, _holder("machine-a"))
    assert "previous run" in restarted.acquire()
    other_database = _lease(s3_server, prefix, _holder("machine-a", "/other/hello.db"))
    with pytest.raises(LeaseHeld):
        other_database.acquire()


def test_a_lease_that_is_not_renewed_lapses(s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"lease-{tmp_path.name}"
    stalled = _lease(s3_server, prefix, _holder("machine-a"), ttl=1)
    stalled.acquire()
    late = _lease(s3_server, prefix, _holder("machine-b"), ttl=1)
    with pytest.raises(LeaseHeld):
        late.acquire()
    time.sleep(2.5)  # Last-Modified has a resolution of one second
    assert "lapsed" in late.acquire()
    # The stalled writer learns at its next renewal that it is no longer the writer.
    with pytest.raises(LeaseLost, match="now held by machine machine-b"):
        stalled.renew()


def test_a_deleted_lease_is_taken_again_by_its_holder(s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"lease-{tmp_path.name}"
    lease = _lease(s3_server, prefix, _holder("machine-a"))
    lease.acquire()
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"{prefix}/writer-lease.json")
    lease.renew()
    with pytest.raises(LeaseHeld):
        _lease(s3_server, prefix, _holder("machine-b")).acquire()


def test_file_locks_refuse_a_second_holder_and_name_the_first(tmp_path: Path) -> None:
    database = tmp_path / "hello.db"
    first = volume_lock(database, _holder("machine-a", str(database)))
    first.acquire()
    second = volume_lock(database, _holder("machine-b", str(database)))
    with pytest.raises(LeaseHeld, match="another stack is running on the volume .* machine machine-a"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()
    replica = FileLock(tmp_path / "replica" / "writer.lock", _holder("machine-c"), "another writer holds x")
    replica.acquire()
    replica.renew()
    replica.release()
