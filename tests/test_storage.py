"""What only the SQLite backend does, checked on real files with a second, raw connection.

The contract both backends keep is in test_store_contract.py."""

import asyncio
import sqlite3
from datetime import date
from pathlib import Path

import pysqlite3.dbapi2 as bundled_sqlite
import pytest

from service.store.migrations import load_migrations, migrations_dir
from service.store.sqlite import SQLITE_VERSION, SqliteStore, migrate


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def test_the_sqlite_library_in_use_has_the_wal_reset_fix() -> None:
    # 3.51.3 fixed the WAL-reset race that two writers (the service and Litestream) can hit.
    assert tuple(int(part) for part in SQLITE_VERSION.split(".")) >= (3, 51, 3)
    assert bundled_sqlite.sqlite_version == SQLITE_VERSION


async def test_the_database_is_in_wal_mode_with_the_expected_settings(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    store = await SqliteStore.open(path)
    await store.close()
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_migrating_a_fresh_database(tmp_path: Path) -> None:
    path = tmp_path / "new" / "hello.db"
    latest = len(load_migrations(migrations_dir()))
    assert migrate(path) == latest
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (latest,)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert "users" in tables


def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for _, source in load_migrations(migrations_dir()):
        (folder / source.name).write_text(source.read_text())
    number = len(load_migrations(folder)) + 1
    (folder / f"{number:04d}_broken.sql").write_text(
        "CREATE TABLE half_done (id INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    path = tmp_path / "hello.db"
    with pytest.raises(bundled_sqlite.OperationalError, match="no_such_table"):
        migrate(path, folder)
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (number - 1,)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert "half_done" not in tables and "users" in tables


def test_migrations_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="out of sequence"):
        load_migrations(tmp_path)


async def test_a_bad_row_in_a_group_commit_fails_only_its_own_caller(tmp_path: Path) -> None:
    # Concurrent upserts share one transaction; a row the schema refuses (a name over 64
    # characters, which the API would never send) must not take the others down with it.
    path = tmp_path / "hello.db"
    store = await SqliteStore.open(path)
    good = [f"user{chr(ord('a') + i)}" for i in range(20)]
    try:
        results = await asyncio.gather(
            *(store.upsert_birthday(name, date(1990, 1, 2)) for name in good[:10]),
            store.upsert_birthday("x" * 65, date(1990, 1, 2)),
            *(store.upsert_birthday(name, date(1990, 1, 2)) for name in good[10:]),
            return_exceptions=True,
        )
    finally:
        await store.close()
    assert [type(result) for result in results].count(bundled_sqlite.IntegrityError) == 1
    assert isinstance(results[10], bundled_sqlite.IntegrityError)
    with raw(path) as conn:
        stored = [row[0] for row in conn.execute("SELECT username FROM users ORDER BY username")]
    assert stored == sorted(good)
