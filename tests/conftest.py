"""Shared fixtures: the application on a real database, spoken to over real HTTP.

``backend`` runs a test once on a real SQLite file and once on a real PostgreSQL server (started once
per session by ``postgres_server``, with a fresh database for each test): the contract both profiles
keep. The ``config`` and ``client`` fixtures here are SQLite's; contract tests override ``config``.
"""

from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from service.http.app import create_app
from service.settings import Config
from tests.backends import Backend, PostgresBackend, SqliteBackend
from tests.pg_server import PostgresServer
from tests.pg_server import postgres_server as start_postgres_server

# A fixed "today" for the API tests, so that answers can be checked by hand: 2026-11-22.
TODAY = date(2026, 11, 22)

ClientFactory = Callable[..., "TestClient[web.Request, web.Application]"]


@pytest.fixture
def database_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "hello.db"


@pytest.fixture
def config(database_path: Path) -> Config:
    return Config(host="127.0.0.1", port=0, database_path=database_path, metrics_port=0)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, config: Config) -> "TestClient[web.Request, web.Application]":
    return await aiohttp_client(create_app(config, clock=lambda: TODAY))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (skips, or fails in CI, where none is installed)."""
    with start_postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, database_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(database_path)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return PostgresBackend(server, server.create_database())
