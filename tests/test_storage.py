"""What only the SQLite backend does, checked on real files with a second, raw connection.

The contract both backends keep is in test_store_contract.py."""

import sqlite3
from pathlib import Path

import pysqlite3.dbapi2 as bundled_sqlite
import pytest

from service.store.migrations import load_migrations, migrations_dir
from service.store.sqlite import SQLITE_VERSION, SqliteStore, migrate
from tests.backends import migrations_and_one_more


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
    broken = "CREATE TABLE half_done (id INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    number = migrations_and_one_more(folder, "sqlite", "broken", broken)
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
