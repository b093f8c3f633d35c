"""The store's contract, on a real SQLite file and on a real PostgreSQL server (``backend`` runs each
test on both), checked with a client of the test's own, never through the store under test."""

import asyncio
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from service.store import NotMigrated, SchemaTooNew, StoreClosed
from service.store.migrations import load_migrations, migrations_dir
from tests.backends import Backend, open_backend_store


async def test_an_acknowledged_upsert_is_committed_with_the_service_s_timestamp(
    backend: Backend, tmp_path: Path
) -> None:
    store = await open_backend_store(backend, tmp_path)
    try:
        before = datetime.now(UTC)
        await store.upsert_birthday("Alice", date(1990, 5, 17))
        after = datetime.now(UTC)
        # Another connection sees it at once: it was committed before the call returned.
        assert backend.rows() == [("Alice", "1990-05-17")]
        stamp = backend.updated_at("Alice")
        assert stamp.utcoffset() is not None and stamp.utcoffset() == UTC.utcoffset(None)
        assert stamp.microsecond % 1000 == 0  # UTC milliseconds
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= stamp <= after
        await store.upsert_birthday("Alice", date(1991, 6, 18))
        assert backend.rows() == [("Alice", "1991-06-18")]
        assert backend.updated_at("Alice") >= stamp
    finally:
        await store.close()


async def test_find_and_count_keep_case(backend: Backend, tmp_path: Path) -> None:
    store = await open_backend_store(backend, tmp_path)
    try:
        assert await store.find_birthday("Zed") is None
        assert await store.count_users() == 0
        await store.upsert_birthday("Zed", date(2000, 2, 29))
        await store.upsert_birthday("zed", date(2001, 3, 1))
        assert await store.find_birthday("Zed") == date(2000, 2, 29)
        assert await store.find_birthday("zed") == date(2001, 3, 1)
        assert await store.find_birthday("ZED") is None
        assert await store.count_users() == 2
        assert backend.rows() == [("Zed", "2000-02-29"), ("zed", "2001-03-01")]
    finally:
        await store.close()


async def test_concurrent_writes_and_reads_all_land(backend: Backend, tmp_path: Path) -> None:
    store = await open_backend_store(backend, tmp_path)
    names = ["user" + "".join(chr(ord("a") + int(d)) for d in f"{i:04d}") for i in range(300)]
    try:
        await asyncio.gather(
            *(store.upsert_birthday(name, date(1990, 1, 1 + i % 28)) for i, name in enumerate(names)),
            *(store.find_birthday(name) for name in names),
        )
        assert await store.count_users() == len(names)
    finally:
        await store.close()
    assert len(backend.rows()) == len(names)


async def test_a_bad_row_among_concurrent_writes_fails_only_its_own_caller(
    backend: Backend, tmp_path: Path
) -> None:
    # A row the schema refuses (a name over 64 characters, which the API would never send) must not
    # take the concurrent writes down with it, even where they share one transaction (SQLite's group
    # commit).
    store = await open_backend_store(backend, tmp_path)
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
    assert [index for index, result in enumerate(results) if isinstance(result, Exception)] == [10]
    assert isinstance(results[10], backend.integrity_error), results[10]
    assert [name for name, _ in backend.rows()] == sorted(good)


async def test_closing_waits_for_writes_under_way_and_then_refuses_more(
    backend: Backend, tmp_path: Path
) -> None:
    store = await open_backend_store(backend, tmp_path)
    writes = [
        asyncio.ensure_future(store.upsert_birthday(f"user{chr(ord('a') + i)}", date(1990, 1, 2)))
        for i in range(26)
    ]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*writes)
    assert len(backend.rows()) == 26
    with pytest.raises(StoreClosed):
        await store.upsert_birthday("late", date(1990, 1, 2))
    await store.close()  # a second close does nothing


async def test_migrating_a_fresh_database_then_again_changes_nothing(backend: Backend) -> None:
    folder = migrations_dir("sqlite" if backend.name == "sqlite" else "postgresql")
    latest = len(load_migrations(folder))
    assert latest >= 1
    assert await backend.migrate() == latest
    assert backend.schema_version() == latest
    assert backend.rows() == []
    assert await backend.migrate() == latest
    assert backend.schema_version() == latest


async def test_a_database_newer_than_the_code_is_refused(backend: Backend, tmp_path: Path) -> None:
    await backend.migrate()
    backend.set_schema_version(42)
    with pytest.raises(SchemaTooNew, match="schema version 42"):
        await backend.migrate()
    with pytest.raises(SchemaTooNew):
        await open_backend_store(backend, tmp_path)


async def test_readiness_checks_the_schema_version(backend: Backend, tmp_path: Path) -> None:
    store = await open_backend_store(backend, tmp_path)
    try:
        await store.check_ready()
        backend.set_schema_version(7)
        with pytest.raises(NotMigrated, match="schema version 7"):
            await store.check_ready()
    finally:
        await store.close()
