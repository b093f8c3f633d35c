"""Writes stop the moment the watched Litestream process exits; a fence file says why.

A real child process stands in for Litestream here (the gate watches a process id, whatever runs
in it); tests/drills/test_supervision.py kills the real Litestream under load.
"""

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from service.http.app import create_app
from service.http.write_gate import WriteGate
from service.settings import Config
from tests.conftest import TODAY


@pytest.fixture
def stand_in() -> Iterator["subprocess.Popen[bytes]"]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_refusal_starts_when_the_process_exits(stand_in: "subprocess.Popen[bytes]") -> None:
    gate = WriteGate(stand_in.pid, None)
    gate.open()
    try:
        assert gate.refusal() is None
        stand_in.send_signal(signal.SIGKILL)
        stand_in.wait()
        assert gate.refusal() is not None
        assert "Litestream exited" in (gate.refusal() or "")
        assert not gate.fenced
    finally:
        gate.close()


def test_a_fence_file_gives_the_reason(stand_in: "subprocess.Popen[bytes]", tmp_path: Path) -> None:
    fence = tmp_path / "fence"
    fence.write_text("the lease on s3://bucket/path is now held by machine other")
    gate = WriteGate(stand_in.pid, fence)
    gate.open()
    try:
        stand_in.kill()
        stand_in.wait()
        assert "no longer the replica's writer" in (gate.refusal() or "")
        assert gate.fenced
        assert "machine other" in (gate.refusal() or "")
    finally:
        gate.close()


def test_a_process_already_gone_refuses_from_the_start(stand_in: "subprocess.Popen[bytes]") -> None:
    stand_in.kill()
    stand_in.wait()
    gate = WriteGate(stand_in.pid, None)  # reaped: the id is free (reused this soon: practically never)
    gate.open()
    assert gate.refusal() is not None and gate.pidfd is None
    gate.close()


def test_without_a_process_every_write_is_taken() -> None:
    gate = WriteGate(None, None)
    gate.open()
    assert gate.refusal() is None and gate.pidfd is None


async def test_the_api_refuses_writes_and_readiness_but_still_reads(
    aiohttp_client: AiohttpClient, stand_in: "subprocess.Popen[bytes]", tmp_path: Path
) -> None:
    config = Config(database_path=tmp_path / "hello.db", port=0, metrics_port=0, litestream_pid=stand_in.pid)
    client = await aiohttp_client(create_app(config, clock=lambda: TODAY))
    body = {"dateOfBirth": "1990-05-17"}
    assert (await client.put("/hello/Alice", json=body)).status == 204
    assert (await client.get("/readyz")).status == 200

    stand_in.kill()
    stand_in.wait()
    refused = await client.put("/hello/Bob", json=body)
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "5"
    assert refused.content_type == "application/problem+json"
    assert "replication stopped" in (await refused.json())["detail"]
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/hello/Alice")).status == 200
    assert (await client.get("/hello/Bob")).status == 404, "a refused write must not be stored"
