"""Drill 5: a fresh machine whose replica cannot be read must not start with an empty database.

Each case boots scripts/start.sh with no local database and a replica it cannot use; start-up must
stop with a message that says why, exit non-zero, leave no database behind and serve nothing.
"""

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.drills.stack import Machine, S3Server, Stack, StackFactory, record_figures, start_moto
from tests.support import free_port, http_status, stop_group


@pytest.fixture(scope="module")
def strict_s3_endpoint() -> Iterator[str]:
    """A moto_server that checks credentials: the drill's test/test keys do not exist in it."""
    process, port = start_moto(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(process, signal.SIGTERM)


def _failed_start(stack: Stack, timeout: float = 60.0) -> tuple[int, float]:
    try:
        code = stack.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"start.sh did not give up within {timeout} s:\n{stack.logs()}")
    return code, time.monotonic() - stack.started_at


def _assert_nothing_served(stack: Stack) -> None:
    assert http_status(stack.url("/healthz"), timeout=1.0) is None
    assert not stack.database_path.exists(), "an empty database was left behind"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "bucket", "refusal"),
    [
        ("wrong-credentials", "drills", "InvalidAccessKeyId"),
        ("missing-bucket", "no-such-bucket", "NoSuchBucket"),
    ],
    ids=["wrong-credentials", "missing-bucket"],
)
def test_a_store_that_refuses_stops_start_up(
    case: str,
    bucket: str,
    refusal: str,
    stack_factory: StackFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if case == "wrong-credentials":
        endpoint: str = request.getfixturevalue("strict_s3_endpoint")
    else:
        endpoint = request.getfixturevalue("s3_server").endpoint
    url = f"s3://{bucket}/app?endpoint={endpoint}&region=us-east-1"
    stack = stack_factory(tmp_path / "data", replica_url=url, wait=False)
    code, seconds = _failed_start(stack)
    logs = stack.logs()
    record_figures("bad-replica", case=case, exit=code, gave_up_after_ms=round(seconds * 1000))
    assert code != 0
    # The writer lease is the first thing start-up asks of the replica: the store's refusal is named.
    assert refusal in logs and "not starting" in logs, logs
    _assert_nothing_served(stack)


@pytest.mark.slow
def test_unreachable_store_stops_start_up_after_restore_timeout(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    url = f"s3://drills/app?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
    stack = stack_factory(tmp_path / "data", replica_url=url, wait=False, extra_env={"RESTORE_TIMEOUT": "3"})
    code, seconds = _failed_start(stack)
    logs = stack.logs()
    record_figures("bad-replica", case="unreachable", exit=code, gave_up_after_ms=round(seconds * 1000))
    assert code != 0
    assert "did not answer within 3 s (RESTORE_TIMEOUT)" in logs, logs
    assert seconds < 15
    _assert_nothing_served(stack)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("replica_url", "message"),
    [
        ("", "REPLICA_URL is not set"),
        ("https://example.invalid/bucket", "REPLICA_URL must be s3://bucket/path"),
        ("s3://", "REPLICA_URL must be s3://bucket/path"),
        ("file://relative/path", "REPLICA_URL must be s3://bucket/path"),
    ],
)
def test_invalid_replica_url_is_named(
    stack_factory: StackFactory, tmp_path: Path, replica_url: str, message: str
) -> None:
    stack = stack_factory(tmp_path / "data", replica_url=replica_url, wait=False)
    code, _ = _failed_start(stack, timeout=20)
    assert code != 0
    assert message in stack.logs()
    _assert_nothing_served(stack)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_missing_credentials_are_named(machine: Machine) -> None:
    stack = machine.start(wait=False, extra_env={"AWS_SECRET_ACCESS_KEY": ""})
    code, _ = _failed_start(stack, timeout=20)
    assert code != 0
    assert "AWS_SECRET_ACCESS_KEY is not set" in stack.logs()
    _assert_nothing_served(stack)


@pytest.mark.slow
def test_unreachable_store_with_a_local_database_is_not_served(s3_server: S3Server, machine: Machine) -> None:
    # Where the local database stands against the replica cannot be known while the store is
    # unreachable (and Litestream could not take it over either), so start-up gives up instead.
    first = machine.start()
    assert first.terminate() == 0, first.logs()
    s3_server.stop()
    try:
        stack = machine.start(wait=False, extra_env={"RESTORE_TIMEOUT": "3"})
        code, seconds = _failed_start(stack)
    finally:
        s3_server.start()
    logs = stack.logs()
    record_figures(
        "bad-replica", case="unreachable-with-local-db", exit=code, gave_up_after_ms=round(seconds * 1000)
    )
    assert code != 0
    assert "did not answer within 3 s (RESTORE_TIMEOUT)" in logs, logs
    assert "Traceback" not in logs, logs
    assert http_status(stack.url("/healthz"), timeout=1.0) is None
    assert stack.database_path.exists(), "the local database must be left as it was"
