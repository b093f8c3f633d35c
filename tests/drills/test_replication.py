"""Drill 1: a graceful stop replicates every acknowledged write; a fresh restore holds them all."""

from pathlib import Path

import pytest

from tests.drills.conftest import (
    StackFactory,
    put_birthday,
    record_figures,
    restore_replica,
    username,
    usernames,
)

USERS = 300


@pytest.mark.slow
def test_graceful_stop_replicates_every_write(
    stack_factory: StackFactory, replica_url: str, tmp_path: Path
) -> None:
    stack = stack_factory(tmp_path / "data", replica_url=replica_url)
    names = [username(number) for number in range(USERS)]
    acknowledged = [name for name in names if put_birthday(stack.base_url, name) == 204]
    assert len(acknowledged) == USERS, stack.logs()

    assert stack.terminate() == 0, stack.logs()
    assert "ignoring AWS_CA_BUNDLE" in stack.logs()

    restored = tmp_path / "restored.db"
    seconds = restore_replica(replica_url, restored, "-integrity-check", "full")
    lost = set(acknowledged) - usernames(restored)
    record_figures("replication", acknowledged=USERS, lost=len(lost), restore_ms=round(seconds * 1000))
    assert not lost


@pytest.mark.slow
def test_empty_database_file_is_restored_not_started_empty(
    stack_factory: StackFactory, replica_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    stack = stack_factory(data, replica_url=replica_url)
    names = {username(number, prefix="kept") for number in range(20)}
    assert all(put_birthday(stack.base_url, name) == 204 for name in sorted(names))
    assert stack.terminate() == 0, stack.logs()

    # What an interrupted first start can leave behind: a zero-byte file and nothing else.
    for leftover in data.glob("hello.db*"):
        leftover.unlink()
    (data / "hello.db").write_bytes(b"")

    again = stack_factory(data, replica_url=replica_url)
    assert "is empty: treating it as missing" in again.logs()
    assert again.terminate() == 0, again.logs()
    assert usernames(again.database_path) == names
