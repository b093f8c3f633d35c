"""scripts/restore.sh against a real replica in moto: the latest copy and a point-in-time copy."""

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.drills.stack import RESTORE_SH, Machine, base_env, record_figures, wait_replicated
from tests.support import put_users, usernames


def _restore(replica_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = base_env()
    env["REPLICA_URL"] = replica_url
    return subprocess.run(
        [str(RESTORE_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )


@pytest.mark.slow
def test_restore_latest_and_point_in_time(machine: Machine, replica_url: str, tmp_path: Path) -> None:
    stack = machine.start()
    first = put_users(stack.base_url, "first", 20)
    wait_replicated(replica_url, first, tmp_path / "checks")
    # The point in time is to the second: a second later, it is after the first batch's upload.
    time.sleep(1.0)
    point_in_time = datetime.now(UTC).replace(microsecond=0)
    time.sleep(1.5)  # the point: the second batch comes clearly after the point in time
    second = put_users(stack.base_url, "second", 15)
    assert stack.terminate() == 0, stack.logs()

    latest = tmp_path / "latest.db"
    began = time.monotonic()
    result = _restore(replica_url, str(latest))
    latest_ms = round((time.monotonic() - began) * 1000)
    assert result.returncode == 0, result.stderr
    assert "integrity: ok" in result.stdout
    assert f"rows: {len(first | second)}" in result.stdout
    assert "newest write: 20" in result.stdout
    assert usernames(latest) == first | second

    stamp = point_in_time.isoformat().replace("+00:00", "Z")
    earlier = tmp_path / "earlier.db"
    result = _restore(replica_url, "-timestamp", stamp, str(earlier))
    assert result.returncode == 0, result.stderr
    assert f"rows: {len(first)}" in result.stdout, result.stdout
    assert usernames(earlier) == first
    record_figures("restore-script", rows=len(first | second), latest_restore_ms=latest_ms)


@pytest.mark.slow
def test_restore_script_refuses_bad_arguments(replica_url: str, tmp_path: Path) -> None:
    result = _restore(replica_url)
    assert result.returncode == 2 and "usage:" in result.stderr

    result = _restore(replica_url, "-timestamp", "yesterday", str(tmp_path / "copy.db"))
    assert result.returncode == 1 and "RFC 3339" in result.stderr

    existing = tmp_path / "existing.db"
    existing.write_bytes(b"")
    result = _restore(replica_url, str(existing))
    assert result.returncode == 1 and "already exists" in result.stderr

    result = _restore("", str(tmp_path / "copy.db"))
    assert result.returncode == 1 and "REPLICA_URL is not set" in result.stderr

    # No backup at this replica path: a restore that has nothing to restore is an error here.
    result = _restore(replica_url, str(tmp_path / "copy.db"))
    assert result.returncode == 1 and "could not restore" in result.stderr
    assert not (tmp_path / "copy.db").exists()
