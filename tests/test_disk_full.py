"""A full disk, on a real small tmpfs under a real SQLite file: 507 at once, one log line per episode,
metrics and readiness say so, and writes come back when space does (tests/drills/test_disk_full.py
runs the same with the whole stack and Litestream)."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from service.http import keys
from service.http.app import create_app
from service.settings import Config
from tests.conftest import TODAY
from tests.support import Tmpfs, free_port, require_root_for_tmpfs

Client = TestClient[web.Request, web.Application]

# Far more than a 1 MiB disk holds (each commit adds at least one 4 KiB page to the WAL).
_MAX_PUTS = 4000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Tmpfs]:
    require_root_for_tmpfs()
    disk = Tmpfs(tmp_path / "disk", "1m")
    try:
        yield disk
    finally:
        disk.unmount()


def _config(disk: Tmpfs, resume_mb: int, litestream: str = "") -> Config:
    return Config(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        database_path=disk.path / "hello.db",
        disk_full_resume_mb=resume_mb,
        litestream_metrics_addr=litestream,
    )


async def _put(client: Client, name: str) -> int:
    response = await client.put(f"/hello/{name}", json={"dateOfBirth": "1990-05-17"})
    await response.read()
    return response.status


async def _fill(client: Client) -> tuple[dict[int, int], list[str]]:
    """PUT new names, 32 at a time (so that they share group commits), until one answers 507."""
    statuses: dict[int, int] = {}
    stored: list[str] = []
    for start in range(0, _MAX_PUTS, 32):
        names = [f"Fill{_letters(n)}" for n in range(start, start + 32)]
        answers = await asyncio.gather(*(_put(client, name) for name in names))
        for name, status in zip(names, answers, strict=True):
            statuses[status] = statuses.get(status, 0) + 1
            if status == 204:
                stored.append(name)
        if 507 in answers:
            return statuses, stored
    raise AssertionError(f"the 1 MiB disk never filled: {statuses}")


def _letters(number: int) -> str:
    letters = ""
    while True:
        number, digit = divmod(number, 26)
        letters = chr(ord("a") + digit) + letters
        if number == 0:
            return letters


async def _scrape(client: Client) -> str:
    port = client.app[keys.STATE].metrics_port
    async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        return await response.text()


async def _until_204(client: Client, timeout: float) -> tuple[float, int]:
    """PUT until one is stored; the seconds it took and the 507s met on the way."""
    began, refused = time.monotonic(), 0
    while time.monotonic() - began < timeout:
        status = await _put(client, f"Back{_letters(refused)}")
        if status == 204:
            return time.monotonic() - began, refused
        assert status == 507
        refused += 1
        await asyncio.sleep(0.1)  # polling: a client trying again
    raise AssertionError(f"no write was taken within {timeout} s of the disk growing")


def _disk_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if "disk full" in record.getMessage()]


async def test_a_full_disk_answers_507_once_logged_and_recovers_when_space_returns(
    aiohttp_client: AiohttpClient, small_disk: Tmpfs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await aiohttp_client(create_app(_config(small_disk, resume_mb=8), clock=lambda: TODAY))
    statuses, stored = await _fill(client)
    print(f"\nfilling a 1 MiB tmpfs: {statuses}")
    # Nothing between "stored" and "refused": no 500, no lost write answered 204.
    assert set(statuses) <= {204, 507}
    assert stored

    response = await client.put("/hello/Late", json={"dateOfBirth": "1990-05-17"})
    assert response.status == 507
    assert response.content_type == "application/problem+json"
    assert response.headers["Retry-After"].isdigit()
    problem: dict[str, Any] = await response.json(content_type=None)
    assert (problem["status"], problem["type"]) == (507, "/problems/disk-full")
    # Reads go on; readiness stays 200 and says that writes are refused.
    assert (await client.get(f"/hello/{stored[0]}")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["writes"] == "refused"
    text = await _scrape(client)
    assert "hello_disk_full 1.0" in text
    assert "hello_disk_full_episodes_total 1.0" in text

    # Grown, but to less than DISK_FULL_RESUME_MB free: still refused.
    small_disk.grow("4m")
    await asyncio.sleep(2.5)  # the point: the disk is looked at again meanwhile, and writes stay refused
    assert await _put(client, "StillFull") == 507

    small_disk.grow("64m")
    seconds, refused_meanwhile = await _until_204(client, timeout=15)
    print(f"first 204 {seconds:.2f} s after growing the disk past the resume threshold")
    assert (await client.get("/hello/Late")).status == 404  # refused writes were not stored
    text = await _scrape(client)
    assert "hello_disk_full 0.0" in text
    refused = statuses[507] + 2 + refused_meanwhile
    assert f"hello_disk_full_refused_writes_total {float(refused)}" in text
    assert 'status="500"' not in text

    # One line when it starts, one when it ends: not one per request.
    lines = _disk_lines(caplog)
    assert [record.levelno for record in lines] == [logging.WARNING, logging.WARNING], lines
    assert getattr(lines[-1], "refused_writes", None) == refused
    assert not [record for record in caplog.records if record.name == "service.errors"]
    assert not [record for record in caplog.records if "one by one" in record.getMessage()]


@pytest.fixture
async def litestream_stub() -> AsyncIterator[dict[str, float]]:
    """A stand-in for Litestream's /metrics serving ``litestream_disk_full`` as the test sets it.

    The real Litestream reports 1 only after failing a sync on a full disk, which takes the whole
    stack: tests/drills/test_disk_full.py does that. Here only the service's reaction is checked.
    """
    state = {"disk_full": 1.0}

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=f'litestream_disk_full{{db="/data/hello.db"}} {state["disk_full"]}\n')

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state["port"] = port
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_writes_wait_for_litestream_to_resume_after_space_returns(
    aiohttp_client: AiohttpClient,
    small_disk: Tmpfs,
    litestream_stub: dict[str, float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    config = _config(small_disk, resume_mb=1, litestream=f"127.0.0.1:{int(litestream_stub['port'])}")
    client = await aiohttp_client(create_app(config, clock=lambda: TODAY))
    await _fill(client)
    small_disk.grow("64m")
    # Space is back but Litestream is still paused: writes stay refused.
    await asyncio.sleep(2.5)  # the point: the disk is looked at again meanwhile, and writes stay refused
    assert await _put(client, "Early") == 507
    assert "Litestream" in (await (await client.get("/readyz")).json())["reason"]
    litestream_stub["disk_full"] = 0.0
    seconds, _ = await _until_204(client, timeout=15)
    print(f"\nfirst 204 {seconds:.2f} s after Litestream reported it had resumed")
    messages = [record.getMessage() for record in _disk_lines(caplog)]
    assert len(messages) == 3 and "waiting for Litestream" in messages[1], messages
