"""The benchmark's machinery without wrk: seeding, the reference app, the report. No timings asserted."""

import os
import re
import sqlite3
from datetime import date
from pathlib import Path

from pytest_aiohttp import AiohttpClient

from scripts.bench import (
    Results,
    Row,
    birthday_for,
    lua_script,
    peak_rss_mb,
    plot,
    seed_database,
    table,
    username_for,
)
from scripts.bench_reference import create_reference_app
from service.app import create_app
from service.db import load_migrations, migrations_dir
from service.settings import Config
from tests.conftest import TODAY


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
    ]
    results = Results("2 cores, test CPU", "python scripts/bench.py --quick", 2.0, 1, rows, restore_s=0.5)
    text = table(results)
    assert "| GET, 10 users | service |" in text and "80%" in text
    assert "restore" in text
    target = tmp_path / "plot.png"
    plot(results, target)
    assert target.read_bytes().startswith(b"\x89PNG")


def test_peak_rss_is_read_from_proc() -> None:
    assert peak_rss_mb(os.getpid()) > 0
