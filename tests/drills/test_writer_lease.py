"""Drill 9: one writer per replica path.

- A second stack on another volume with the same REPLICA_URL (``fly scale count 2``, ``fly machine
  clone``) is refused with a message that names the writer, and the first keeps serving.
- A second stack on the same volume is refused too (the volume lock).
- While serving, the object store says that another writer took the lease: writes and readiness
  answer 503 within a bound, and nothing more is uploaded over the other writer's history.
- After a crash, the same machine on the same volume is not locked out.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.drills.stack import (
    Machine,
    S3Server,
    StackFactory,
    record_figures,
    restored_usernames,
    under_write_load,
    wait_replicated,
)
from tests.support import http_status, put_birthday, username, usernames


def _exit_code(process: "subprocess.Popen[bytes]", timeout: float = 60.0) -> int:
    return process.wait(timeout=timeout)


@pytest.mark.slow
def test_a_second_writer_is_refused_and_the_first_keeps_serving(
    s3_or_file_replica: str, stack_factory: StackFactory, tmp_path: Path
) -> None:
    replica_url = s3_or_file_replica
    first = stack_factory(tmp_path / "first", replica_url=replica_url)
    with under_write_load(first, 1.0, threads=2, pause=0.01, max_requests=3000, max_seconds=20) as load:
        began = time.monotonic()
        second = stack_factory(tmp_path / "second", replica_url=replica_url, wait=False)
        code = _exit_code(second.process)
        refused_after = time.monotonic() - began
        same_volume = stack_factory(tmp_path / "first", replica_url=replica_url, wait=False)
        same_volume_code = _exit_code(same_volume.process)
        time.sleep(1.0)  # the point: the first stack still serves a while after both were refused
        still_serving = put_birthday(first.base_url, "Stillserving") == 204
    assert first.terminate() == 0, first.logs()
    in_replica = restored_usernames(replica_url, tmp_path / "restored.db")
    lost = set(load.acknowledged) - in_replica
    record_figures(
        "second-writer",
        replica=replica_url.split(":")[0],
        refused_after_ms=round(refused_after * 1000),
        exit=code,
        first_acknowledged=len(load.acknowledged),
        first_failed=load.failures,
        lost=len(lost),
    )
    assert code != 0 and same_volume_code != 0
    logs = second.logs()
    assert "another writer holds" in logs and str(tmp_path / "first") in logs and " since " in logs, logs
    assert "another stack is running on the volume" in same_volume.logs(), same_volume.logs()
    assert http_status(second.url("/healthz"), timeout=1.0) is None
    assert still_serving and load.failures == 0
    assert not lost, f"{len(lost)} writes of the first stack missing from the replica"
    assert "Stillserving" in in_replica
    assert not (tmp_path / "second" / "hello.db").exists(), "the refused stack restored or created a database"


@pytest.mark.slow
def test_a_writer_that_lost_the_lease_refuses_writes_and_uploads_nothing_more(
    s3_server: S3Server, stack_factory: StackFactory, tmp_path: Path
) -> None:
    prefix = f"fenced-{tmp_path.name}"
    replica_url = s3_server.replica_url(prefix)
    ttl = 3  # renewed every second
    stack = stack_factory(
        tmp_path / "data", replica_url=replica_url, extra_env={"WRITER_LEASE_TTL": str(ttl)}
    )
    assert put_birthday(stack.base_url, "Beforetakeover") == 204
    wait_replicated(replica_url, ["Beforetakeover"], tmp_path / "checks")

    # Another writer takes the lease, as one would after this one's lapsed behind a network split.
    client = s3_server.client()
    key = f"{prefix}/writer-lease.json"
    lease = json.loads(client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())
    lease["holder"] |= {"machine": "other-machine", "instance": "other", "pid": 1}
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=json.dumps(lease).encode())
    taken_at = time.monotonic()

    statuses: list[int] = []
    deadline = taken_at + 4 * ttl
    while time.monotonic() < deadline:
        status = put_birthday(stack.base_url, username(len(statuses), prefix="during"))
        statuses.append(status)
        if status == 503:
            break
        time.sleep(0.05)  # polling: writes until the first 503
    refused_after = time.monotonic() - taken_at
    objects_at_refusal = set(s3_server.keys(prefix))
    ready = http_status(stack.url("/readyz"))
    later = [put_birthday(stack.base_url, f"Later{chr(97 + i)}") for i in range(5)]
    time.sleep(2.0)  # the point: what a live Litestream would upload in this time, never uploaded
    uploaded_since = set(s3_server.keys(prefix)) - objects_at_refusal
    alive = stack.process.poll() is None
    code = stack.terminate()
    record_figures(
        "lease-taken",
        lease_ttl_s=ttl,
        writes_refused_after_ms=round(refused_after * 1000),
        acknowledged_before_refusal=statuses.count(204),
        readiness=ready,
        objects_uploaded_after_refusal=len(uploaded_since),
    )
    assert statuses[-1] == 503, statuses
    assert refused_after < ttl + 2, refused_after
    assert ready == 503 and set(later) == {503}
    assert alive, "the fenced stack keeps answering (503) until it is stopped"
    assert code != 0
    assert "now held by machine other-machine" in stack.logs(), stack.logs()
    # Litestream is gone before the first 503: nothing more is written over the other's history.
    assert not uploaded_since, uploaded_since
    assert json.loads(client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()) == lease


@pytest.mark.slow
def test_the_same_machine_is_not_locked_out_after_a_crash(machine: Machine) -> None:
    stack = machine.start()
    assert put_birthday(stack.base_url, "Beforecrash") == 204
    stack.kill()
    began = time.monotonic()
    again = machine.start()
    ready_after = time.monotonic() - began
    logs = again.logs()
    assert again.terminate() == 0, logs
    record_figures("crash-lease", ready_after_crash_ms=round(ready_after * 1000))
    assert "previous run" in logs, logs
    assert ready_after < 60
    assert "Beforecrash" in usernames(again.database_path)
