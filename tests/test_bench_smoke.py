"""The benchmark's machinery without wrk: seeding, the reference app, the PostgreSQL server the bench
starts, the report. No timings asserted.

The PostgreSQL test skips and says why without Debian's ``postgresql`` package, and fails instead when
``REQUIRE_POSTGRES=1`` or ``CI=true`` (``tests/pg_server.py``).
"""

import os
import re
import sqlite3
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from scripts.bench import (
    SERVER_CPU,
    PostgresDatabases,
    Results,
    Row,
    birthday_for,
    lua_script,
    peak_rss_mb,
    plot,
    postgres_databases,
    scenarios,
    seed_database,
    table,
    username_for,
)
from scripts.bench_reference import create_reference_app
from service.app import create_app
from service.db import load_migrations, migrations_dir
from service.settings import Config
from tests.conftest import TODAY
from tests.pg_server import server_binaries, skip_or_fail


def test_seeding_writes_every_user_named_as_the_load_scripts_name_them(tmp_path: Path) -> None:
    path = tmp_path / "seed" / "hello.db"
    seed_database(path, 700)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(load_migrations(migrations_dir())),)
        rows = dict(conn.execute("SELECT username, date_of_birth FROM users").fetchall())
    assert len(rows) == 700
    assert username_for(0) == "uaaaaa" and username_for(27) == "uaaabb"
    for index in (0, 1, 25, 26, 699):
        assert rows[username_for(index)] == birthday_for(index).isoformat()
    assert all(re.fullmatch(r"[A-Za-z]{1,64}", name) for name in rows)
    assert all(date.fromisoformat(born) < TODAY for born in rows.values())
    # The database is whole without its WAL: the benchmark copies the file alone.
    assert not (path.parent / "hello.db-wal").exists() or (path.parent / "hello.db-wal").stat().st_size == 0


async def test_the_service_answers_for_seeded_users(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    seed_database(path, 50)
    config = Config(host="127.0.0.1", port=0, database_path=path, metrics_port=0)
    client = await aiohttp_client(create_app(config, clock=lambda: TODAY))
    name = username_for(42)
    response = await client.get(f"/hello/{name}")
    assert response.status == 200
    assert (await response.json())["message"].startswith(f"Hello, {name}!")


async def test_the_reference_app_has_the_same_routes(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_reference_app())
    response = await client.get("/hello/anyone")
    assert response.status == 200
    assert "message" in await response.json()
    response = await client.put("/hello/anyone", json={"dateOfBirth": "1990-01-01"})
    assert response.status == 204
    assert (await client.get("/readyz")).status == 200


def test_the_load_scripts_draw_from_the_seeded_users() -> None:
    for kind in ("get", "put", "mix"):
        script = lua_script(kind, 1234)
        assert "local users = 1234" in script
        assert "function done(" in script and "non2xx" in script
        assert "request = " in script


def test_the_report_and_plot_are_made(tmp_path: Path) -> None:
    rows = [
        Row("GET, 10 users", "reference", 100.0, 1.0, 2.0, 0, 30.0, 0.2, 40.0, 1),
        Row("GET, 10 users", "service", 80.0, 1.2, 2.5, 0, 35.0, 0.3, 50.0, 1, ratio=0.8),
        Row("PUT (new and existing users)", "stack", 50.0, 2.0, 4.0, 1, 36.0, 1.0, 70.0, 1, ratio=0.5),
        Row("GET, 10 users", "postgres", 40.0, 2.0, 5.0, 0, 38.0, 0.4, 90.0, 1, ratio=0.4, db_cpu_us=61.0),
    ]
    results = Results("2 cores, test CPU", "python scripts/bench.py --quick", 2.0, 1, rows, restore_s=0.5)
    text = table(results)
    assert "| GET, 10 users | service |" in text and "80%" in text
    assert "| GET, 10 users | service on PostgreSQL | 40 |" in text and "| 90 | 61 |" in text
    assert "restore" in text
    target = tmp_path / "plot.png"
    plot(results, target)
    assert target.read_bytes().startswith(b"\x89PNG")


def test_peak_rss_is_read_from_proc() -> None:
    assert peak_rss_mb(os.getpid()) > 0


def test_the_plan_runs_each_profile_beside_the_bare_app() -> None:
    plan = scenarios(100, 1_000, 10_000, with_stack=True, sqlite=False, postgres=True)
    assert [(s.server, s.kind) for s in plan] == [
        ("reference", "get"), ("postgres", "get"), ("reference", "put"), ("postgres", "put"),
        ("reference", "mix"), ("postgres", "mix"),
    ]  # fmt: skip
    assert all(s.baseline == s.title for s in plan if s.server == "postgres")
    both = scenarios(100, 1_000, 10_000, with_stack=False, sqlite=True, postgres=True)
    assert {s.server for s in both} == {"reference", "service", "postgres"}
    assert sum(s.server == "postgres" for s in both) == 3


@pytest.fixture
def bench_postgres(tmp_path: Path) -> Iterator[tuple[PostgresDatabases, str]]:
    """The bench's own PostgreSQL server (pinned as in a run), seeded, with one fresh sample database."""
    if server_binaries() is None:
        skip_or_fail(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql"
        )
    seeded = tmp_path / "seed.db"
    seed_database(seeded, 50)
    with postgres_databases(str(SERVER_CPU)) as databases:
        databases.seed(50, seeded)
        yield databases, databases.fresh(50)
    assert not databases.server.running()


async def test_the_bench_starts_postgresql_and_the_service_answers_on_it(
    aiohttp_client: AiohttpClient, bench_postgres: tuple[PostgresDatabases, str], tmp_path: Path
) -> None:
    databases, url = bench_postgres
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert databases.version and databases.cpu_seconds() > 0
    config = Config(
        host="127.0.0.1", port=0, database_path=tmp_path / "unused.db", metrics_port=0, database_url=url
    )
    client = await aiohttp_client(create_app(config, clock=lambda: TODAY))
    name = username_for(42)
    response = await client.get(f"/hello/{name}")
    assert response.status == 200
    assert (await response.json())["message"].startswith(f"Hello, {name}!")
    assert (await client.put("/hello/newcomer", json={"dateOfBirth": "1990-01-01"})).status == 204
    rows = databases.server.sql("SELECT count(*) FROM users", url.rsplit("/", 1)[1].split("?")[0])
    assert rows == [["51"]]
