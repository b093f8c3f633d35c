"""The supervisor's boot steps (``service/stack/boot.py``), one at a time, on real files: a real SQLite
database, a ``file://`` replica, the real Litestream binary and the real gunicorn command.

The whole boot in order, with signals and faults, is what the drills in ``tests/drills/`` run.
"""

import contextlib
import dataclasses
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.contract import HANDED_OVER, BootReport
from service.settings import StackSettings
from service.stack import boot as steps
from service.stack.boot import Boot
from service.stack.lease import LeaseHeld
from service.stack.lineage import Placement, Standing, set_aside
from service.stack.replica import ReplicaUnavailable
from service.stack.restore import BootError
from service.stack.stranded import inbox_for
from service.store.sqlite import migrate
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


def settings_for(tmp_path: Path, **extra: str) -> StackSettings:
    environ = {
        "REPLICA_URL": f"file://{tmp_path / 'replica'}",
        "DATABASE_PATH": str(tmp_path / "data" / "hello.db"),
        "TMPDIR": str(tmp_path),
        "LITESTREAM_SOCKET": str(tmp_path / "ls.sock"),
        "LITESTREAM_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "RESTORE_TIMEOUT": "20",
        "LITESTREAM_READY_TIMEOUT": "20",
        **extra,
    }
    return StackSettings.from_env(environ, ROOT)


def begin(settings: StackSettings, pid: int = 1) -> Boot:
    return Boot.begin(settings, settings.child_environment({"PATH": os.environ["PATH"]}), pid)


@pytest.fixture
def boot(tmp_path: Path) -> Iterator[Boot]:
    booting = begin(settings_for(tmp_path))
    try:
        yield booting
    finally:
        booting.abandon()
        booting.close()


def add_row(database: Path, username: str, born: str, updated_at: str) -> None:
    # Closed at once: the last connection folds the -wal into the file, which is then whole on its own.
    with contextlib.closing(sqlite3.connect(database)) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO users VALUES (?, ?, ?)", (username, born, updated_at))


def rows(database: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return conn.execute("SELECT username, date_of_birth FROM users ORDER BY username").fetchall()


def test_lock_volume_refuses_a_second_stack_on_the_same_database(boot: Boot, tmp_path: Path) -> None:
    steps.lock_volume(boot)
    second = begin(boot.settings, pid=2)
    with pytest.raises(LeaseHeld, match="another stack is running on the volume"):
        steps.lock_volume(second)
    boot.close()
    steps.lock_volume(second)  # the lock goes with the first stack
    second.close()


def test_take_lease_starts_renewing_and_shares_the_deadline(boot: Boot) -> None:
    steps.lock_volume(boot)
    steps.take_lease(boot)
    assert boot.keeper is not None and boot.keeper.is_alive()
    assert boot.files.deadline.stat().st_size == 16
    assert boot.may_write()
    assert boot.read_url == boot.write_url == boot.settings.replica_url  # a file:// replica: the root


def test_take_lease_refused_hands_this_volumes_rows_to_the_holder(boot: Boot, tmp_path: Path) -> None:
    steps.lock_volume(boot)
    steps.take_lease(boot)
    other = begin(settings_for(tmp_path, DATABASE_PATH=str(tmp_path / "other" / "hello.db")), pid=2)
    database = other.settings.database
    database.parent.mkdir()
    migrate(database)
    add_row(database, "stranded", "1990-01-02", "2026-01-01T00:00:00.000Z")
    steps.lock_volume(other)
    with pytest.raises(LeaseHeld, match="another writer holds"):
        steps.take_lease(other)
    assert other.replica is not None
    assert len(inbox_for(other.replica).pending()) == 1
    other.abandon()
    other.close()


def test_check_lease_stops_the_boot_once_the_lease_is_lost(boot: Boot) -> None:
    steps.lock_volume(boot)
    steps.take_lease(boot)
    steps.check_lease(boot, "before serving")
    assert boot.keeper is not None
    boot.keeper.lost = "the lease on the replica is now held by another machine"
    with pytest.raises(BootError, match="before serving: the lease on the replica is now held"):
        steps.check_lease(boot, "before serving")
    assert not boot.may_write()


def test_within_restore_timeout_retries_what_may_pass_and_names_what_refused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, RESTORE_TIMEOUT="3")
    answers: list[Exception | str] = [ReplicaUnavailable("503", transient=True), "read"]

    def flaky() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert steps.within_restore_timeout(settings, "reading the replica", flaky) == "read"

    def refused() -> str:
        raise ReplicaUnavailable("403 AccessDenied", transient=False)

    with pytest.raises(BootError, match=r"reading the replica: REPLICA_URL \(.*\) refused: 403"):
        steps.within_restore_timeout(settings, "reading the replica", refused)

    def unreachable() -> str:
        raise ReplicaUnavailable("timed out", transient=True)

    with pytest.raises(BootError, match=r"did not answer within 3 s \(RESTORE_TIMEOUT\)"):
        steps.within_restore_timeout(settings, "reading the replica", unreachable)


def test_place_database_starts_new_on_an_empty_replica_and_drops_an_empty_file(boot: Boot) -> None:
    steps.lock_volume(boot)
    steps.take_lease(boot)
    database = boot.settings.database
    database.parent.mkdir(parents=True, exist_ok=True)
    database.touch()  # what an interrupted first start leaves
    steps.place_database(boot)
    assert boot.placement is not None and str(boot.placement.standing) == "new"
    assert not database.exists()  # the migrations create it


def test_place_database_refuses_an_empty_file_beside_a_full_wal(boot: Boot) -> None:
    steps.lock_volume(boot)
    steps.take_lease(boot)
    database = boot.settings.database
    database.parent.mkdir(parents=True, exist_ok=True)
    database.touch()
    database.with_name(database.name + "-wal").write_bytes(b"\0" * 4096)
    with pytest.raises(BootError, match="is empty but its -wal file is not"):
        steps.place_database(boot)
    assert database.exists()  # left as it was, for a look by hand


def test_migrate_database_creates_the_schema(boot: Boot) -> None:
    boot.settings.database.parent.mkdir(parents=True)
    steps.migrate_database(boot)
    assert rows(boot.settings.database) == []


def test_start_litestream_waits_for_its_first_sync(boot: Boot) -> None:
    steps.lock_volume(boot)
    steps.take_lease(boot)
    steps.place_database(boot)
    steps.migrate_database(boot)
    steps.start_litestream(boot)
    assert boot.litestream is not None and boot.litestream.exit_code() is None
    assert boot.litestream.synced()
    replica = Path(boot.settings.replica_url.removeprefix("file://"))
    assert any(replica.rglob("*.ltx"))  # the first sync reached the replica


def test_start_litestream_does_not_start_once_the_lease_is_lost(boot: Boot) -> None:
    steps.lock_volume(boot)
    steps.take_lease(boot)
    assert boot.keeper is not None
    boot.keeper.lost = "another writer took it"
    with pytest.raises(BootError, match="before starting Litestream: another writer took it"):
        steps.start_litestream(boot)
    assert boot.litestream is None


def test_reapply_set_aside_rows_keeps_the_newest_and_empties_the_list(boot: Boot) -> None:
    database = boot.settings.database
    database.parent.mkdir(parents=True)
    migrate(database)
    add_row(database, "ann", "1990-01-01", "2026-01-01T00:00:00.000Z")
    add_row(database, "bob", "1991-01-01", "2026-01-01T00:00:00.000Z")
    aside = set_aside(database)
    boot.pending.add(aside)
    migrate(database)  # what the restore would have brought back: ann older, bob newer
    add_row(database, "ann", "1980-01-01", "2025-01-01T00:00:00.000Z")
    add_row(database, "bob", "1981-01-01", "2027-01-01T00:00:00.000Z")
    boot.placement = Placement(Standing.DIVERGED, "test")
    steps.reapply_set_aside_rows(boot)
    assert boot.report == BootReport("diverged", str(aside), 2, 1)
    assert rows(database) == [("ann", "1990-01-01"), ("bob", "1981-01-01")]
    assert boot.pending.entries() == []


def test_merge_delivered_rows_merges_what_arrived_and_reports_it(boot: Boot, tmp_path: Path) -> None:
    steps.lock_volume(boot)
    steps.take_lease(boot)
    database = boot.settings.database
    migrate(database)
    refused = tmp_path / "refused.db"
    migrate(refused)
    add_row(refused, "carol", "1992-03-04", "2026-01-01T00:00:00.000Z")
    assert boot.replica is not None
    inbox_for(boot.replica).deliver("machine-b-1.db", refused)
    steps.merge_delivered_rows(boot)
    assert rows(database) == [("carol", "1992-03-04")]
    assert json.loads(boot.files.merged.read_text())["rows_written"] == 1


def test_start_gunicorn_hands_over_the_contract(tmp_path: Path) -> None:
    # gunicorn runs its config file as Python: this one writes down what it was handed, then exits.
    handed = tmp_path / "handed.json"
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(
        f"import json, os, sys\njson.dump(dict(os.environ), open({str(handed)!r}, 'w'))\nsys.exit(0)\n"
    )
    booting = begin(dataclasses.replace(settings_for(tmp_path), gunicorn_config=config))
    try:
        for step in steps.STEPS:
            step(booting)
        assert booting.gunicorn is not None and booting.litestream is not None
        assert booting.gunicorn.wait(timeout=30) == 0
        environ = json.loads(handed.read_text())
        assert set(HANDED_OVER) <= set(environ)
        assert environ["LITESTREAM_PID"] == str(booting.litestream.pid)
        assert BootReport.from_json(environ["BOOT_REPORT"]) == BootReport("new")
        assert environ["WRITER_LEASE_DEADLINE_FILE"] == str(booting.files.deadline)
        assert environ["DATABASE_PATH"] == str(booting.settings.database)
    finally:
        booting.abandon()
        booting.close()
