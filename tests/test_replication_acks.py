"""DURABILITY=replicated (``service/http/replication.py``): a 204 only once the replica holds the write.

A real Litestream (the project's litestream.yml, the binary from the virtualenv) replicates a real
SQLite file to a ``file://`` replica; the application is spoken to over real HTTP. What a 204 promises
is checked the hard way: right after the answers, with Litestream still running, the replica alone
is restored into another file, and every acknowledged user must be in it. The drill on a real
S3-compatible server, with the machine lost, is ``tests/drills/test_machine_lost.py``.
"""

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from service.http import keys
from service.http.app import create_app
from service.settings import Config, ConfigError
from service.store.sqlite import migrate
from tests.conftest import TODAY
from tests.support import Litestream

ROOT = Path(__file__).resolve().parent.parent
Client = TestClient[web.Request, web.Application]

pytestmark = pytest.mark.slow


@pytest.fixture
def litestream(tmp_path: Path, database_path: Path) -> Iterator[Litestream]:
    migrate(database_path)
    running = Litestream(tmp_path, database_path)
    try:
        running.wait_for_first_sync()
        yield running
    finally:
        running.stop()


def replicated_config(litestream: Litestream, timeout: float = 2.0) -> Config:
    return Config(
        database_path=litestream.database,
        port=0,
        metrics_port=0,
        litestream_pid=litestream.process.pid,
        litestream_socket=litestream.socket,
        durability="replicated",
        replication_ack_timeout=timeout,
    )


async def test_every_204_is_in_the_replica_at_once(
    aiohttp_client: AiohttpClient, litestream: Litestream, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(replicated_config(litestream), clock=lambda: TODAY))
    names = [f"user{chr(ord('a') + i // 26)}{chr(ord('a') + i % 26)}" for i in range(60)]

    async def put(name: str) -> int:
        answer = await client.put(f"/hello/{name}", json={"dateOfBirth": "1990-05-17"})
        return answer.status

    statuses = await asyncio.gather(*(put(name) for name in names))
    acknowledged = {name for name, status in zip(names, statuses, strict=True) if status == 204}
    assert acknowledged == set(names), statuses
    # No wait of any kind: a 204 means the replica already holds the write.
    assert acknowledged <= litestream.restored_users(tmp_path / "restored.db")

    metrics = client.app[keys.METRICS]
    assert metrics.replication_acks == {"confirmed": 60}
    # Grouped: PUTs that commit while a sync is in flight share the next one.
    assert 1 <= metrics.replication_syncs < 60


async def test_unconfirmed_within_the_timeout_is_a_503_that_says_so(
    aiohttp_client: AiohttpClient, litestream: Litestream
) -> None:
    client = await aiohttp_client(create_app(replicated_config(litestream, timeout=0.5), clock=lambda: TODAY))
    assert (await client.put("/hello/before", json={"dateOfBirth": "1990-05-17"})).status == 204
    litestream.signal(signal.SIGSTOP)  # frozen: its socket takes the request and never answers
    try:
        began = time.monotonic()
        answer = await client.put("/hello/frozen", json={"dateOfBirth": "1991-06-18"})
        waited = time.monotonic() - began
    finally:
        litestream.signal(signal.SIGCONT)
    assert answer.status == 503
    assert answer.headers["Retry-After"] == "5"
    detail = (await answer.json())["detail"]
    assert "stored on this machine but not yet confirmed in the replica" in detail
    assert "Repeating the PUT is safe" in detail
    assert 0.5 <= waited < 5
    assert (await client.get("/hello/frozen")).status == 200  # stored locally, as the answer says
    assert client.app[keys.METRICS].replication_acks == {"confirmed": 1, "timeout": 1}
    # Once Litestream answers again, writes are confirmed again.
    assert (await client.put("/hello/after", json={"dateOfBirth": "1992-07-19"})).status == 204


async def test_a_failed_sync_fails_its_puts_at_once(
    aiohttp_client: AiohttpClient, litestream: Litestream, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(replicated_config(litestream, timeout=5), clock=lambda: TODAY))
    litestream.socket.rename(tmp_path / "moved.sock")  # the socket is gone: the sync cannot be asked
    began = time.monotonic()
    answer = await client.put("/hello/nosocket", json={"dateOfBirth": "1990-05-17"})
    assert answer.status == 503
    assert time.monotonic() - began < 4, "a round that failed must not wait for the timeout"
    assert "control socket could not be reached" in (await answer.json())["detail"]
    assert client.app[keys.METRICS].replication_acks == {"failed": 1}


async def test_the_series_are_served_in_replicated_mode_only(
    aiohttp_client: AiohttpClient, litestream: Litestream
) -> None:
    client = await aiohttp_client(create_app(replicated_config(litestream), clock=lambda: TODAY))
    assert (await client.put("/hello/series", json={"dateOfBirth": "1990-05-17"})).status == 204
    text = client.app[keys.METRICS].exposition().text or ""
    assert 'hello_replication_acks_total{outcome="confirmed"} 1.0' in text
    assert 'hello_durability_info{mode="replicated"} 1.0' in text
    assert "hello_replication_ack_wait_seconds_bucket" in text

    local = Config(database_path=litestream.database, port=0, metrics_port=0)
    local_client = await aiohttp_client(create_app(local, clock=lambda: TODAY))
    local_text = local_client.app[keys.METRICS].exposition().text or ""
    assert 'hello_durability_info{mode="local"} 1.0' in local_text
    assert "hello_replication_acks" not in local_text


async def test_replicated_needs_litestream_beside_the_service(tmp_path: Path) -> None:
    config = Config(database_path=tmp_path / "hello.db", port=0, metrics_port=0, durability="replicated")
    runner = web.AppRunner(create_app(config, clock=lambda: TODAY))
    try:
        with pytest.raises(ConfigError, match="DURABILITY=replicated needs Litestream"):
            await runner.setup()
    finally:
        await runner.cleanup()


def test_the_settings() -> None:
    config = Config.from_env({"DURABILITY": "Replicated", "REPLICATION_ACK_TIMEOUT": "0.75"})
    assert (config.durability, config.replication_ack_timeout) == ("replicated", 0.75)
    assert Config.from_env({}).durability == "local"
    with pytest.raises(ConfigError, match="DURABILITY must be one of local, replicated"):
        Config.from_env({"DURABILITY": "sync"})
    with pytest.raises(ConfigError, match="REPLICATION_ACK_TIMEOUT"):
        Config.from_env({"REPLICATION_ACK_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="for the SQLite profile"):
        Config.from_env({"DURABILITY": "replicated", "DATABASE_URL": "postgresql://u:p@127.0.0.1/db"})
