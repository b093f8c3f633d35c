"""The writer lease's deadline, shared through a mapped file: what the supervisor sets, the worker reads.

The worker side is checked through the real API: a write refused before the commit once the deadline
has passed, a write whose commit outlasts the deadline answered 503 (never 204), readiness that stays
200 and says writes are refused, and writes that resume by themselves once the deadline moves on.
"""

import math
import multiprocessing
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from service.http import keys
from service.http.app import create_app
from service.http.write_gate import WriteGate
from service.lease_deadline import SharedDeadline, deadline_after, lease_margin, now
from service.settings import Config
from tests.conftest import TODAY

BODY = {"dateOfBirth": "1990-05-17"}


def test_the_margin_leaves_room_for_one_missed_renewal_at_every_allowed_ttl() -> None:
    for ttl in (3, 6, 30, 600):
        margin = lease_margin(ttl)
        assert margin >= 1.0 + ttl / 5  # a whole second of the store's clock, drift, a commit
        assert deadline_after(100.0, ttl) == 100.0 + ttl - margin
        # Renewals every ttl / 3: the deadline lies beyond the next renewal, so a single slow or
        # failed renewal fails no write.
        assert ttl - margin > ttl / 3


def test_another_process_reads_what_the_writer_set(tmp_path: Path) -> None:
    path = tmp_path / "deadline"
    writer = SharedDeadline.create(path, 1234.5)
    reader = SharedDeadline.open(path)
    try:
        assert reader.get() == pytest.approx(1234.5)
        writer.set(now() + 60)
        assert 59 < reader.remaining() <= 60
        writer.set(math.inf)
        assert reader.get() == math.inf
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            seen = pool.apply(_read_in_another_process, (str(path),))
        assert seen == math.inf
        writer.set(now() - 1)
        assert reader.remaining() < 0
    finally:
        reader.close()
        writer.remove()
    assert not path.exists()


def _read_in_another_process(path: str) -> float:
    shared = SharedDeadline.open(Path(path))
    try:
        return shared.get()
    finally:
        shared.close()


def test_the_gate_refuses_past_the_deadline_and_takes_writes_again_once_renewed(tmp_path: Path) -> None:
    shared = SharedDeadline.create(tmp_path / "deadline", now() + 60)
    gate = WriteGate(None, None, shared.path)
    gate.open()
    try:
        assert gate.refusal() is None
        shared.set(now() - 0.001)
        reason = gate.refusal() or ""
        assert "could not renew its writer lease" in reason
        assert not gate.final, "a lapsed lease is not a final refusal"
        shared.set(now() + 60)
        assert gate.refusal() is None
    finally:
        gate.close()
        shared.remove()


def _config(tmp_path: Path, deadline: Path) -> Config:
    return Config(database_path=tmp_path / "hello.db", port=0, metrics_port=0, lease_deadline_file=deadline)


async def test_the_api_refuses_writes_past_the_deadline_reads_on_and_recovers(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    shared = SharedDeadline.create(tmp_path / "deadline", now() + 60)
    client = await aiohttp_client(create_app(_config(tmp_path, shared.path), clock=lambda: TODAY))
    try:
        assert (await client.put("/hello/Alice", json=BODY)).status == 204

        shared.set(now() - 0.001)
        refused = await client.put("/hello/Bob", json=BODY)
        assert refused.status == 503 and refused.headers["Retry-After"] == "5"
        problem = await refused.json()
        assert "could not renew its writer lease" in problem["detail"]
        assert "nothing was written" in problem["detail"]
        assert (await client.get("/hello/Bob")).status == 404, "a refused write must not be stored"
        assert (await client.get("/hello/Alice")).status == 200, "reads go on"
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["writes"] == "refused"

        shared.set(now() + 60)
        assert (await client.put("/hello/Bob", json=BODY)).status == 204
        assert (await client.get("/readyz")).status == 200
        assert "writes" not in await (await client.get("/readyz")).json()
    finally:
        shared.remove()


async def test_a_commit_that_outlasts_the_deadline_is_never_acknowledged(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    """The deadline passes while the write is under way (a freeze, a slow disk): 503, "may or may not"."""
    shared = SharedDeadline.create(tmp_path / "deadline", now() + 60)
    app = create_app(_config(tmp_path, shared.path), clock=lambda: TODAY)
    client = await aiohttp_client(app)
    store = app[keys.STORE]
    original = store.upsert_birthday

    async def commit_then_lapse(username: str, born: object) -> None:
        await original(username, born)  # type: ignore[arg-type]
        shared.set(now() - 0.001)

    store.upsert_birthday = commit_then_lapse  # type: ignore[method-assign]
    try:
        answer = await client.put("/hello/Carol", json=BODY)
        assert answer.status == 503
        detail = (await answer.json())["detail"]
        assert "may or may not be kept" in detail and "Repeating the PUT is safe" in detail
        # It was committed locally: the refusal says so rather than pretending otherwise.
        shared.set(now() + 60)
        assert (await client.get("/hello/Carol")).status == 200
    finally:
        shared.remove()
