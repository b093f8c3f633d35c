"""Drill 1: a graceful stop replicates every acknowledged write; a fresh restore holds them all."""

from pathlib import Path

import pytest

from tests.drills.stack import Machine, record_figures, restore_replica
from tests.support import put_birthday, put_users, username, usernames

USERS = 300


@pytest.mark.slow
def test_graceful_stop_replicates_every_write(machine: Machine, tmp_path: Path) -> None:
    stack = machine.start()
    names = [username(number) for number in range(USERS)]
    acknowledged = [name for name in names if put_birthday(stack.base_url, name) == 204]
    assert len(acknowledged) == USERS, stack.logs()

    assert stack.terminate() == 0, stack.logs()
    assert "ignoring AWS_CA_BUNDLE" in stack.logs()

    restored = tmp_path / "restored.db"
    seconds = restore_replica(machine.replica_url, restored, "-integrity-check", "full")
    lost = set(acknowledged) - usernames(restored)
    record_figures("replication", acknowledged=USERS, lost=len(lost), restore_ms=round(seconds * 1000))
    assert not lost


@pytest.mark.slow
def test_empty_database_file_is_restored_not_started_empty(machine: Machine) -> None:
    stack = machine.start()
    names = put_users(stack.base_url, "kept", 20)
    assert stack.terminate() == 0, stack.logs()

    # What an interrupted first start can leave behind: a zero-byte file and nothing else.
    for leftover in machine.data.glob("hello.db*"):
        leftover.unlink()
    (machine.data / "hello.db").write_bytes(b"")

    again = machine.start()
    assert "is empty: treating it as missing" in again.logs()
    assert again.terminate() == 0, again.logs()
    assert usernames(again.database_path) == names
