"""The hardened server (service/http/server.py) on a real port, spoken to over raw sockets: what aiohttp's
parser refuses, slow heads and bodies, the connection cap, clients that go away, accept() errors."""

import asyncio
import io
import json
import logging
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service.http import keys
from service.http.app import create_app
from service.http.server import RateLimitedLog, make_runner
from service.logs import JsonFormatter
from service.settings import Config
from tests.conftest import TODAY
from tests.support import client_port, server_has_closed, server_has_read, wait_until_async

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    app: web.Application
    port: int

    def count(self, route: str, method: str, status: int) -> int:
        return self.app[keys.METRICS].request_counts.get((route, method, status), 0)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log record as production writes it (one JSON object per line), into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(level)


def log_entries(buffer: io.StringIO, **match: Any) -> list[dict[str, Any]]:
    """The JSON lines whose fields include ``match``; every line must be one JSON object."""
    entries = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [entry for entry in entries if all(entry.get(k) == v for k, v in match.items())]


async def start(config: Config) -> tuple[web.AppRunner, Server]:
    app = create_app(config, clock=lambda: TODAY)
    runner = make_runner(app, config, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, Server(app, port)


@pytest.fixture
async def server(config: Config) -> AsyncIterator[Server]:
    runner, running = await start(replace(config, header_timeout=1.0, body_timeout=1.0, max_connections=3))
    yield running
    await runner.cleanup()


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One whole HTTP answer: the head, then as many bytes as its Content-Length says."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` on a new connection; the server's answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), wait)
    finally:
        writer.close()


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "100 KB URL"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", "malformed header"),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", "header too long"),
        (b"HELLO\r\n\r\n", "bad request line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "TLS to a plain port"),
    ],
)
async def test_what_the_parser_refuses_is_a_400_problem_logged_once_and_counted(
    server: Server, json_log: io.StringIO, request_bytes: bytes, reason: str
) -> None:
    status, headers, problem = parse_answer(await exchange(server.port, request_bytes))
    assert status == 400, reason
    assert headers["content-type"] == "application/problem+json"
    assert problem["status"] == 400 and problem["type"] == "/problems/malformed-request"
    assert "Traceback" not in problem["detail"]
    assert len(problem["detail"]) < 300
    assert server.count("parser", "UNKNOWN", 400) == 1
    logged = log_entries(json_log, route="parser")
    assert len(logged) == 1, json_log.getvalue()
    assert logged[0]["status"] == 400 and logged[0]["request_id"] == problem["requestId"]
    assert "error" in logged[0] and len(logged[0]["error"]) <= 200
    assert log_entries(json_log, level="error") == []


async def test_a_head_sent_a_byte_at_a_time_is_cut_off_with_408(
    server: Server, json_log: io.StringIO
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    answer = b""
    try:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: yes\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(read_answer(reader), 0.2)
            except TimeoutError:
                continue
            break
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    status, headers, problem = parse_answer(answer)
    assert status == 408 and headers["content-type"] == "application/problem+json"
    assert "head" in problem["detail"]
    assert 0.9 < elapsed < 3.0, elapsed
    assert server.count("connection", "UNKNOWN", 408) == 1
    assert (
        len(log_entries(json_log, message="connections closed: no whole request head within HEADER_TIMEOUT"))
        == 1
    )


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server: Server) -> None:
    started = time.monotonic()
    status, _, _ = parse_answer(await exchange(server.port, b""))
    assert status == 408
    assert time.monotonic() - started < 3.0


async def test_a_keep_alive_connection_may_idle_between_requests(server: Server) -> None:
    # The head timeout runs from a head's first byte, not over the pause between requests.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(read_answer(reader), 5)
            assert answer.startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(1.5)  # the point: idle for longer than HEADER_TIMEOUT
    finally:
        writer.close()


async def test_a_body_slower_than_the_body_timeout_gets_408(server: Server, database_path: Path) -> None:
    head = (
        b"PUT /hello/Slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 29\r\n\r\n"
    )
    started = time.monotonic()
    status, headers, problem = parse_answer(await exchange(server.port, head + b'{"dateOf'))
    assert status == 408 and headers["content-type"] == "application/problem+json"
    assert "body" in problem["detail"]
    assert time.monotonic() - started < 3.0
    assert server.count("/hello/{username}", "PUT", 408) == 1


async def test_a_client_gone_mid_body_is_a_499_not_a_500(server: Server, json_log: io.StringIO) -> None:
    head = (
        b"PUT /hello/Gone HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 29\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head + b'{"dateOf')
    await writer.drain()
    await wait_until_async(lambda: server_has_read(server.port, [client_port(writer)]), 5, "nothing read")
    writer.close()
    await wait_until_async(lambda: server.count("/hello/{username}", "PUT", 499), 2.5, "no 499 counted")
    assert server.count("/hello/{username}", "PUT", 499) == 1
    assert server.count("/hello/{username}", "PUT", 500) == 0
    assert log_entries(json_log, level="error") == []
    lines = log_entries(json_log, message="request", status=499)
    assert len(lines) == 1 and lines[0]["level"] == "info"


async def test_connections_over_the_cap_get_503_at_once(server: Server, json_log: io.StringIO) -> None:
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
    clients = [client_port(writer) for _, writer in held]
    try:
        await wait_until_async(lambda: server_has_read(server.port, clients), 5, "not all accepted")
        status, headers, problem = parse_answer(
            await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n", 2)
        )
        assert status == 503 and headers["retry-after"] == "1"
        assert problem["type"] == "/problems/too-many-connections"
        assert server.count("connection", "UNKNOWN", 503) == 1
        assert len(log_entries(json_log, message="connections refused: MAX_CONNECTIONS are open")) == 1
    finally:
        for _, writer in held:
            writer.close()
    await wait_until_async(lambda: server_has_closed(server.port, clients), 5, "not all closed")
    status, _, _ = parse_answer(
        await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert status == 200


async def test_rate_limited_log_writes_one_line_then_one_summary_a_second(json_log: io.StringIO) -> None:
    limited = RateLimitedLog(logging.getLogger("test.limited"), logging.WARNING, "flood", interval=0.3)
    for _ in range(1000):
        limited.note(kind="x")
    assert [e["count"] for e in log_entries(json_log, message="flood")] == [1]
    await asyncio.sleep(0.4)  # the point: the summary comes once the interval has passed
    assert [e["count"] for e in log_entries(json_log, message="flood")] == [1, 999]
    await asyncio.sleep(0.4)  # the point: another interval passes, with nothing to log
    assert len(log_entries(json_log, message="flood")) == 2  # nothing new, nothing logged


def test_accept_errors_for_lack_of_open_files_are_logged_once_a_second(tmp_path: Path) -> None:
    # A real server process whose open-files limit is lowered once it serves: accept() then fails
    # with EMFILE while the test holds many connections.
    script = textwrap.dedent(
        f"""
        import asyncio, resource, sys
        from pathlib import Path
        from aiohttp import web
        from service.http.app import create_app
        from service.logs import configure_logging
        from service.http.server import make_runner
        from service.settings import Config

        async def main():
            configure_logging(20)
            config = Config(port=0, metrics_port=0, database_path=Path({str(tmp_path / "h.db")!r}))
            runner = make_runner(create_app(config), config, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            print(runner.addresses[0][1], flush=True)
            await asyncio.sleep(4)
            await runner.cleanup()

        asyncio.run(main())
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    held: list[socket.socket] = []
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        for _ in range(300):  # past the 128 files, and past the listen backlog: then refused
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            except OSError:
                break
        time.sleep(2.5)  # the point: accept() fails over more than two seconds, logged once a second
    finally:
        for conn in held:
            conn.close()
        try:
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert len(held) > 128
    entries = [json.loads(line) for line in stderr.splitlines()]
    accept_lines = [e for e in entries if e["message"].startswith("accept() failed")]
    assert accept_lines, stderr[-2000:]
    assert len(accept_lines) <= 6, accept_lines
    assert all("count" in e for e in accept_lines)
    assert not [e for e in entries if e["level"] == "error"], stderr[-2000:]
