"""The writer lease's own rules, against a real S3 server (moto) and real file locks."""

import math
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.lease_deadline import lease_margin, now
from service.settings import machine_identity
from service.stack.lease import (
    FileLock,
    Holder,
    LeaseHeld,
    LeaseLost,
    S3Lease,
    current_replica_url,
    volume_lock,
)
from service.stack.replica import S3Replica, generation_at, generation_url, is_tigris, parse_s3_url
from tests.drills.stack import CREDENTIALS, S3Server, wait_lease_lapsed


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
    wait_lease_lapsed(s3_server, s3_server.replica_url(prefix))
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


def test_the_deadline_counts_from_when_the_last_write_was_sent(s3_server: S3Server, tmp_path: Path) -> None:
    lease = _lease(s3_server, f"lease-{tmp_path.name}", _holder("machine-a"), ttl=30)
    assert lease.deadline() == -math.inf, "no write yet: no deadline to keep"
    before = now()
    lease.acquire()
    after = now()
    assert before + 30 - lease_margin(30) <= lease.deadline() <= after + 30 - lease_margin(30)
    time.sleep(0.2)  # the point: the renewal's deadline counts from a later write
    lease.renew()
    assert lease.deadline() >= after + 0.2 + 30 - lease_margin(30)
    lease.release()
    assert lease.deadline() == -math.inf, "a released lease is not kept"


def test_a_renewal_whose_answer_was_lost_writes_again_and_never_adopts_the_etag(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """Our own write went through but its answer never came: the store holds an ETag we never saw."""
    prefix = f"lease-{tmp_path.name}"
    lease = _lease(s3_server, prefix, _holder("machine-a"))
    lease.acquire()
    client = s3_server.client()
    key = f"{prefix}/writer-lease.json"
    body = client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    time.sleep(1.1)  # the point: a new Last-Modified (it has a resolution of one second)
    lost_answer = client.put_object(Bucket=s3_server.bucket, Key=key, Body=body)["ETag"]
    sent = now()
    lease.renew()
    current = client.head_object(Bucket=s3_server.bucket, Key=key)
    assert current["ETag"] != lost_answer, "the renewal adopted the ETag instead of writing"
    assert lease.deadline() >= sent + 30 - lease_margin(30)
    with pytest.raises(LeaseHeld):
        _lease(s3_server, prefix, _holder("machine-b")).acquire()


def test_a_store_that_sends_no_date_never_makes_a_lease_look_fresh_forever(
    s3_server: S3Server, tmp_path: Path
) -> None:
    prefix = f"lease-{tmp_path.name}"
    stalled = _lease(s3_server, prefix, _holder("machine-a"), ttl=1)
    stalled.acquire()
    late = _lease(s3_server, prefix, _holder("machine-b"), ttl=1)

    def drop_date(parsed: dict[str, Any], **_: Any) -> None:
        parsed.get("ResponseMetadata", {}).get("HTTPHeaders", {}).pop("date", None)

    late.replica.client.meta.events.register("after-call.s3.GetObject", drop_date)
    wait_lease_lapsed(s3_server, s3_server.replica_url(prefix))
    assert "lapsed" in late.acquire()


def test_tigris_endpoints_are_asked_for_consistent_reads_and_writes() -> None:
    assert is_tigris("https://fly.storage.tigris.dev")
    assert is_tigris("https://t3.storage.dev")
    assert not is_tigris("http://127.0.0.1:9000")
    assert not is_tigris("https://s3.amazonaws.com")
    assert not is_tigris(None)
    url = "s3://bucket/path?endpoint=https://fly.storage.tigris.dev"
    replica = S3Replica(url, parse_s3_url(url), CREDENTIALS)
    sent: list[dict[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        sent.append(dict(request.headers))
        raise _Captured  # nothing leaves this machine

    replica.client.meta.events.register_last("before-sign.s3", capture)
    with pytest.raises(_Captured):
        replica.client.get_object(Bucket="bucket", Key="path/writer-lease.json")
    assert sent and sent[0].get("X-Tigris-Consistent") == "true"


class _Captured(Exception):
    pass


def test_two_first_acquisitions_that_race_leave_one_holder(s3_server: S3Server, tmp_path: Path) -> None:
    """Both read "no lease"; the other writes first; this one's create must fail (If-None-Match)."""
    prefix = f"lease-{tmp_path.name}"
    first = _lease(s3_server, prefix, _holder("machine-a"))
    second = _lease(s3_server, prefix, _holder("machine-b"))
    raced: list[str] = []

    def the_other_writes_first(**_: Any) -> None:
        if not raced:
            raced.append(second.acquire())

    first.replica.client.meta.events.register("before-call.s3.PutObject", the_other_writes_first)
    with pytest.raises(LeaseHeld, match="machine machine-b"):
        first.acquire()
    assert raced and "no lease before" in raced[0]
    second.renew()  # still the holder


def test_the_machine_is_what_a_copied_volume_cannot_carry(tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef\n")
    assert machine_identity({"FLY_MACHINE_ID": "e784079b449483"}, machine_id) == "e784079b449483"
    assert machine_identity({"POD_UID": "5b9c0f4e-1d2a"}, machine_id) == "5b9c0f4e-1d2a"
    elsewhere = machine_identity({}, machine_id)
    assert elsewhere.endswith("/0123456789abcdef") and elsewhere.startswith(socket.gethostname())
    assert machine_identity({}, tmp_path / "missing") == socket.gethostname()


def test_a_recreated_pod_with_the_same_host_name_waits_for_the_lease(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """A StatefulSet's new pod keeps its host name and database path, but not its UID."""
    prefix = f"lease-{tmp_path.name}"
    old_pod = Holder.me(Path("/data/hello.db"), {"POD_UID": "old-uid"})
    new_pod = Holder.me(Path("/data/hello.db"), {"POD_UID": "new-uid"})
    _lease(s3_server, prefix, old_pod).acquire()
    with pytest.raises(LeaseHeld, match="machine old-uid"):
        _lease(s3_server, prefix, new_pod).acquire()
    # The same pod restarting after a crash (same UID) takes it over at once, as before.
    again = Holder.me(Path("/data/hello.db"), {"POD_UID": "old-uid"})
    assert "previous run" in _lease(s3_server, prefix, again).acquire()


def test_a_takeover_from_a_lapsed_holder_starts_a_generation_and_a_release_keeps_it(
    s3_server: S3Server, tmp_path: Path
) -> None:
    prefix = f"lease-{tmp_path.name}"
    url = s3_server.replica_url(prefix)
    first = _lease(s3_server, prefix, _holder("machine-a"), ttl=1)
    first.acquire()
    assert first.generation == first.previous_generation == "", "a new lease writes the root"
    # The first lapses (it may still be running: a partition, a freeze).
    wait_lease_lapsed(s3_server, s3_server.replica_url(prefix))
    second = _lease(s3_server, prefix, _holder("machine-b"), ttl=1)
    assert "writing generation" in second.acquire()
    assert second.previous_generation == "" and second.generation
    assert (
        current_replica_url(url, CREDENTIALS)
        == f"{url.split('?')[0]}/generations/{second.generation}?" + (url.split("?")[1])
    )
    second.release()  # a graceful stop: its Litestream has made its final sync and exited
    third = _lease(s3_server, prefix, _holder("machine-c"), ttl=1)
    assert "released it" in third.acquire()
    assert third.generation == third.previous_generation == second.generation
    restarted = _lease(s3_server, prefix, _holder("machine-c"), ttl=1)  # a crash, then a restart
    assert "previous run" in restarted.acquire()
    assert restarted.generation == second.generation, "this machine's own restart keeps its generation"


def test_generations_for_point_in_time_restores() -> None:
    url = "s3://bucket/hello.db?endpoint=http://127.0.0.1:9000&region=us-east-1"
    assert generation_url(url, "") == url
    assert (
        generation_url(url, "g2")
        == "s3://bucket/hello.db/generations/g2?endpoint=http://127.0.0.1:9000&region=us-east-1"
    )
    history = [
        {"generation": "", "since": "2026-12-01T00:00:00+00:00"},
        {"generation": "g2", "since": "2026-12-03T00:00:00+00:00"},
        {"generation": "g3", "since": "2026-12-05T00:00:00+00:00"},
    ]
    assert generation_at(history, None) == "g3"
    assert generation_at(history, datetime(2026, 12, 4, tzinfo=UTC)) == "g2"
    assert generation_at(history, datetime(2026, 12, 6, tzinfo=UTC)) == "g3"
    assert generation_at(history, datetime(2026, 11, 1, tzinfo=UTC)) == "", "before the lease: the root"
    assert generation_at([], None) == ""
