"""The store and its migrations, checked on real files with a second, raw connection."""

import asyncio
import sqlite3
from datetime import date
from pathlib import Path

import pysqlite3.dbapi2 as bundled_sqlite
import pytest

from service.db import SQLITE_VERSION, SchemaTooNew, UserStore, load_migrations, migrate, migrations_dir


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def test_the_sqlite_library_in_use_has_the_wal_reset_fix() -> None:
    # 3.51.3 fixed the WAL-reset race that two writers (the service and Litestream) can hit.
    assert tuple(int(part) for part in SQLITE_VERSION.split(".")) >= (3, 51, 3)
    assert bundled_sqlite.sqlite_version == SQLITE_VERSION


async def test_an_acknowledged_upsert_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    store = await UserStore.open(path)
    try:
        await store.upsert_birthday("Alice", date(1990, 5, 17))
        # Another connection sees it at once: it was committed before the call returned.
        with raw(path) as conn:
            assert conn.execute("SELECT username, date_of_birth FROM users").fetchall() == [
                ("Alice", "1990-05-17")
            ]
        await store.upsert_birthday("Alice", date(1991, 6, 18))
        with raw(path) as conn:
            assert conn.execute("SELECT date_of_birth FROM users").fetchall() == [("1991-06-18",)]
    finally:
        await store.close()


async def test_the_database_is_in_wal_mode_with_the_expected_settings(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    store = await UserStore.open(path)
    await store.close()
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_find_and_count(tmp_path: Path) -> None:
    store = await UserStore.open(tmp_path / "hello.db")
    try:
        assert await store.find_birthday("Zed") is None
        assert await store.count_users() == 0
        await store.upsert_birthday("Zed", date(2000, 2, 29))
        await store.upsert_birthday("zed", date(2001, 3, 1))
        assert await store.find_birthday("Zed") == date(2000, 2, 29)
        assert await store.find_birthday("zed") == date(2001, 3, 1)
        assert await store.count_users() == 2
    finally:
        await store.close()


async def test_concurrent_writes_and_reads_all_land(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    store = await UserStore.open(path)
    names = ["user" + "".join(chr(ord("a") + int(d)) for d in f"{i:04d}") for i in range(300)]
    try:
        await asyncio.gather(
            *(store.upsert_birthday(name, date(1990, 1, 1 + i % 28)) for i, name in enumerate(names)),
            *(store.find_birthday(name) for name in names),
        )
    finally:
        await store.close()
    with raw(path) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (len(names),)


def test_migrating_a_fresh_database(tmp_path: Path) -> None:
    path = tmp_path / "new" / "hello.db"
    latest = len(load_migrations(migrations_dir()))
    assert migrate(path) == latest
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (latest,)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert "users" in tables


def test_migrating_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    migrate(path)
    with raw(path) as conn:
        conn.execute("INSERT INTO users VALUES ('Ann', '1990-01-01', '2026-01-01T00:00:00Z')")
        before = conn.execute("SELECT sql FROM sqlite_schema ORDER BY name").fetchall()
    migrate(path)
    with raw(path) as conn:
        assert conn.execute("SELECT sql FROM sqlite_schema ORDER BY name").fetchall() == before
        assert conn.execute("SELECT username FROM users").fetchall() == [("Ann",)]


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    migrate(path)
    with raw(path) as conn:
        conn.execute("PRAGMA user_version = 42")
    with pytest.raises(SchemaTooNew, match="schema version 42"):
        migrate(path)


def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for source in migrations_dir().iterdir():
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


async def test_the_store_refuses_to_open_a_newer_database(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    migrate(path)
    with raw(path) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(SchemaTooNew):
        await UserStore.open(path)


async def test_a_bad_row_in_a_group_commit_fails_only_its_own_caller(tmp_path: Path) -> None:
    # Concurrent upserts share one transaction; a row the schema refuses (a name over 64
    # characters, which the API would never send) must not take the others down with it.
    path = tmp_path / "hello.db"
    store = await UserStore.open(path)
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


async def test_closing_waits_for_queued_writes_and_then_refuses_more(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    store = await UserStore.open(path)
    writes = [
        asyncio.ensure_future(store.upsert_birthday(f"user{chr(ord('a') + i)}", date(1990, 1, 2)))
        for i in range(26)
    ]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*writes)
    with raw(path) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (26,)
    with pytest.raises(bundled_sqlite.ProgrammingError):
        await store.upsert_birthday("late", date(1990, 1, 2))
    await store.close()  # a second close does nothing
