"""What only the PostgreSQL backend does, on a real server: migrations under an advisory lock, the
``migrate`` command, and TLS as the URL's sslmode asks. (The contract both backends keep is in
test_store_contract.py and test_api.py; faults are drilled in tests/drills/test_postgres_outage.py.)"""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Config, PostgresSettings
from service.store import StoreUnavailable
from service.store import postgres as pg_store
from service.store.migrations import load_migrations, migrations_dir
from tests.backends import migrations_and_one_more
from tests.pg_server import PostgresServer
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


def settings(server: PostgresServer, database: str, query: str = "") -> PostgresSettings:
    url = server.url(database)
    if query:
        url = url.split("?")[0] + "?" + query
    return Config(database_url=url).postgres


async def test_many_processes_starting_at_once_migrate_once(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    # A migration that is not idempotent and slow enough for every migrator to arrive while it runs:
    # without the lock, two would apply it (two rows), or the second CREATE TABLE would fail.
    folder = tmp_path / "migrations"
    slow = "CREATE TABLE applied (at timestamptz NOT NULL DEFAULT now());\n"
    slow += "INSERT INTO applied DEFAULT VALUES;\nSELECT pg_sleep(0.5);\n"
    number = migrations_and_one_more(folder, "postgresql", "slow", slow)
    target = settings(postgres_server, database)
    results = await asyncio.gather(*(pg_store.migrate(target, folder) for _ in range(8)))
    assert results == [number] * 8
    assert postgres_server.sql("SELECT count(*) FROM applied", database) == [["1"]]
    assert postgres_server.sql("SELECT version FROM schema_version", database) == [[str(number)]]
    # And the lock is given back: nobody holds it now.
    held = postgres_server.sql(
        f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
        f"((classid::bigint << 32) | objid::bigint) = {pg_store.MIGRATION_LOCK_KEY}",
        database,
    )
    assert held == [["0"]]


async def test_a_failing_migration_leaves_no_trace(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    broken = "CREATE TABLE half_done (id integer);\nINSERT INTO no_such_table VALUES (1);\n"
    number = migrations_and_one_more(folder, "postgresql", "broken", broken)
    with pytest.raises(Exception, match="no_such_table"):
        await pg_store.migrate(settings(postgres_server, database), folder)
    assert postgres_server.sql("SELECT version FROM schema_version", database) == [[str(number - 1)]]
    tables = postgres_server.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database)
    assert ["half_done"] not in tables and ["users"] in tables


def test_the_migrate_command_migrates_postgresql_when_database_url_is_set(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": postgres_server.url(database),
        "DATABASE_PATH": str(tmp_path / "unused.db"),
    }
    for _ in range(2):  # the second run finds nothing to do
        result = subprocess.run(
            [sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    latest = len(load_migrations(migrations_dir("postgresql")))
    assert postgres_server.sql("SELECT version FROM schema_version", database) == [[str(latest)]]
    assert not (tmp_path / "unused.db").exists()
    assert f'"version": {latest}' in result.stderr + result.stdout


def test_the_migrate_command_refuses_a_newer_schema(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    asyncio.run(pg_store.migrate(settings(postgres_server, database)))
    postgres_server.sql("UPDATE schema_version SET version = 99", database)
    env = {**os.environ, "DATABASE_URL": postgres_server.url(database)}
    result = subprocess.run(
        [sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "schema version 99" in result.stderr


async def test_sslmode_in_the_url_is_honoured(postgres_server: PostgresServer, database: str) -> None:
    # The test server has no TLS: "require" must refuse to go on in clear text, "disable" connects.
    with pytest.raises(StoreUnavailable, match="SSL"):
        await pg_store.PostgresStore.open(settings(postgres_server, database, "sslmode=require"))
    store = await pg_store.PostgresStore.open(settings(postgres_server, database, "sslmode=disable"))
    await store.check_ready()
    await store.close()


async def test_a_server_that_is_not_there_is_unavailable_quickly() -> None:
    target = Config(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x").postgres
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailable, match="unavailable"):
        await pg_store.PostgresStore.open(target)
    assert loop.time() - started < target.connect_timeout + 1
