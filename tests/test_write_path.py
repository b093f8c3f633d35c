"""The SQLite write path under load: the WAL index reader, checkpoints off the writer's thread, the
writer's wait for the write lock, and the TRACE_FILE timeline. Real files, real connections."""

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from service.http.app import create_app
from service.settings import Config
from service.store import Store, StoreUnavailable, checkpointer, open_store
from service.store.sqlite import SqliteStore, connect, migrate
from service.store.wal_index import WalIndex
from service.trace import load
from tests.conftest import TODAY
from tests.support import Litestream


def test_the_wal_index_reports_what_sqlite_reports(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    migrate(path)
    conn = connect(path)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        index = WalIndex(path)
        for i in range(200):
            conn.execute(
                "INSERT INTO users VALUES (?, '1990-01-01', '2026-01-01T00:00:00.000+00:00')", (f"u{i}",)
            )
        frames = index.frames()
        assert frames is not None
        logged, copied_before = frames
        assert logged >= 200 and copied_before == 0
        busy, log_frames, checkpointed = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, log_frames, checkpointed) == (0, logged, logged)
        assert index.frames() == (logged, logged)
        index.close()
    finally:
        conn.close()


def test_the_wal_index_is_none_before_the_database_exists(tmp_path: Path) -> None:
    assert WalIndex(tmp_path / "missing.db").frames() is None


async def test_sustained_writes_keep_the_wal_bounded_without_the_writer_checkpointing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small thresholds, so that a few thousand writes cross them many times; a checkpointer that
    # pauses between runs, so that the WAL is never wholly copied when the next write begins.
    monkeypatch.setattr(checkpointer, "CHECKPOINT_FRAMES", 50)
    monkeypatch.setattr(checkpointer, "RESTART_FRAMES", 400)
    monkeypatch.setattr(checkpointer, "MIN_PAUSE", 0.02)
    path = tmp_path / "hello.db"
    store = await SqliteStore.open(path)
    index = WalIndex(path)
    largest = 0
    writing = True

    async def writer(number: int) -> None:
        for i in range(150):
            await store.upsert_birthday(f"user{number}x{i}", date(1990, 1, 1 + i % 28))

    async def watch() -> None:
        nonlocal largest
        while writing:
            frames = index.frames()
            largest = max(largest, frames[0] if frames else 0)
            await asyncio.sleep(0.002)  # sampling the WAL's size while the writers write

    try:
        # The writing connection never checkpoints inside a COMMIT.
        autocheckpoint = await store._writer.call(
            lambda: store._writer._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert autocheckpoint == 0
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(writer(number) for number in range(16)))
        writing = False
        await watcher
        assert await store.count_users() == 16 * 150
    finally:
        await store.close()
        index.close()
    # Writes that never pause would fill the WAL with every frame of every transaction; the writer
    # makes it start over once it passes RESTART_FRAMES, at the latest at twice that (plus a
    # transaction or two in flight).
    assert 0 < largest < 2 * 400 + 200


async def test_a_write_waits_for_a_lock_held_elsewhere_then_commits(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    store = await SqliteStore.open(path)
    holder = connect(path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        released = threading.Event()

        def release() -> None:
            time.sleep(0.3)  # the point: the lock is held for a while, and the write waits for it
            holder.execute("COMMIT")
            released.set()

        threading.Thread(target=release).start()
        await store.upsert_birthday("waited", date(1990, 5, 17))
        assert released.is_set()
        assert await store.find_birthday("waited") == date(1990, 5, 17)
    finally:
        await store.close()
        holder.close()


async def test_a_write_gives_up_after_the_lock_timeout_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_LOCK_TIMEOUT", 0.3)
    path = tmp_path / "hello.db"
    store = await SqliteStore.open(path)
    holder = connect(path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="stayed locked"):
            await store.upsert_birthday("never", date(1990, 5, 17))
        holder.execute("COMMIT")
        assert await store.find_birthday("never") is None
        await store.upsert_birthday("later", date(1990, 5, 17))
        assert await store.find_birthday("later") == date(1990, 5, 17)
    finally:
        await store.close()
        holder.close()


async def test_trace_file_holds_the_write_path_timeline(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    trace = tmp_path / "trace" / "timeline.jsonl"
    config = Config(
        host="127.0.0.1", port=0, database_path=tmp_path / "hello.db", metrics_port=0, trace_file=trace
    )
    app = create_app(config, clock=lambda: TODAY)
    client = await aiohttp_client(app)
    responses = await asyncio.gather(
        *(client.put(f"/hello/traced{chr(97 + i)}", json={"dateOfBirth": "1990-01-01"}) for i in range(20))
    )
    assert [r.status for r in responses] == [204] * 20
    assert not trace.exists()  # written when the worker stops
    await client.close()
    events = load(trace)
    kinds = {kind for kind, *_ in events}
    assert {"lock", "write", "commit"} <= kinds
    assert sum(count for kind, _, _, count in events if kind == "write") == 20
    assert all(end >= start for _, start, end, _ in events)
    # Every line is one JSON object.
    assert all(json.loads(line)["kind"] for line in trace.read_text().splitlines())


async def test_without_trace_file_nothing_is_recorded(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    from service.trace import TIMELINE

    config = Config(host="127.0.0.1", port=0, database_path=tmp_path / "hello.db", metrics_port=0)
    client = await aiohttp_client(create_app(config, clock=lambda: TODAY))
    before = len(TIMELINE.events())
    assert (await client.put("/hello/untraced", json={"dateOfBirth": "1990-01-01"})).status == 204
    assert not TIMELINE.enabled
    assert len(TIMELINE.events()) == before


async def test_a_put_that_meets_a_lock_for_too_long_is_answered_503(
    aiohttp_client: AiohttpClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_LOCK_TIMEOUT", 0.3)
    path = tmp_path / "hello.db"
    config = Config(host="127.0.0.1", port=0, database_path=path, metrics_port=0)
    client = await aiohttp_client(create_app(config, clock=lambda: TODAY))
    holder = connect(path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        response = await client.put("/hello/locked", json={"dateOfBirth": "1990-01-01"})
        assert response.status == 503
        assert response.headers["Retry-After"]
        assert "nothing was written" in (await response.json())["detail"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await client.get("/hello/locked")).status == 404
    assert (await client.put("/hello/locked", json={"dateOfBirth": "1990-01-01"})).status == 204


async def _write_until(store: Store, done: Callable[[], bool], what: str, timeout: float = 20) -> int:
    """Concurrent upserts, 50 at a time, until ``done()``; the rows written."""
    deadline = time.monotonic() + timeout
    written = 0
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.gather(
            *(store.upsert_birthday(f"u{written + i}", date(1990, 1, 1 + i % 28)) for i in range(50))
        )
        written += 50
    return written


def _copied_back(index: WalIndex) -> Callable[[], bool]:
    """Whether a checkpoint has copied frames into the database since the call: frames marked copied, or
    a WAL started over (fewer frames than before), which only a checkpoint that copied them all allows."""
    largest = 0

    def check() -> bool:
        nonlocal largest
        frames = index.frames() or (0, 0)
        if frames[1] > 0 or frames[0] < largest:
            return True
        largest = frames[0]
        return False

    return check


@pytest.mark.slow
async def test_beside_litestream_the_service_leaves_checkpoints_to_it(tmp_path: Path) -> None:
    # Litestream holds a read transaction from one of its checkpoints to the next (db.go:
    # acquireReadLock), so a checkpoint of the service's could copy nothing and would only take the
    # lock Litestream's own needs. Beside it (the supervisor hands its pid over), the service runs none,
    # and Litestream's checkpoint (min-checkpoint-page-count, 1,000 pages) copies the WAL back.
    path = tmp_path / "hello.db"
    migrate(path)
    litestream = Litestream(tmp_path, path)
    try:
        litestream.wait_for_first_sync()
        store = await open_store(Config(database_path=path, litestream_pid=litestream.process.pid))
        index = WalIndex(path)
        try:
            assert "sqlite-checkpointer" not in {thread.name for thread in threading.enumerate()}
            written = await _write_until(store, _copied_back(index), "Litestream's checkpoint")
            assert await store.count_users() == written
        finally:
            await store.close()
            index.close()
    finally:
        litestream.stop()


async def test_beside_litestream_the_service_itself_copies_nothing(tmp_path: Path) -> None:
    # The same setting with Litestream stopped (its pid: this process's, alive): no checkpoint at all.
    path = tmp_path / "hello.db"
    store = await open_store(Config(database_path=path, litestream_pid=os.getpid()))
    index = WalIndex(path)
    try:
        await _write_until(
            store, lambda: (index.frames() or (0, 0))[0] >= 3 * checkpointer.CHECKPOINT_FRAMES, "3,000 frames"
        )
        await asyncio.sleep(0.2)  # a checkpointer, if there were one, would have been woken by now
        frames = index.frames()
        assert frames is not None and frames[1] == 0
    finally:
        await store.close()
        index.close()


async def test_without_litestream_the_service_checkpoints_itself(tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    store = await open_store(Config(database_path=path))
    index = WalIndex(path)
    try:
        assert "sqlite-checkpointer" in {thread.name for thread in threading.enumerate()}
        await _write_until(store, _copied_back(index), "the service's checkpoint")
    finally:
        await store.close()
        index.close()
