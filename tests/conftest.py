"""Shared fixtures: the application on a real SQLite file, spoken to over real HTTP."""

from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from service.app import create_app
from service.settings import Config

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
