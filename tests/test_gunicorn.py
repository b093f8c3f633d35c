"""The production server, a real gunicorn process: SIGTERM while requests are in flight."""

import signal
import socket
import sqlite3
import time
from pathlib import Path

from tests.support import (
    client_port,
    free_port,
    http_status,
    killed_at_exit,
    server_has_read,
    start_gunicorn,
    wait_for_status,
    wait_until,
)

BODY = b'{"dateOfBirth": "1990-04-01"}'


def send_put(port: int, username: str, body_bytes_sent: int = len(BODY)) -> socket.socket:
    """Send a PUT (its body only up to ``body_bytes_sent``); the connection, to read the answer."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=15)
    head = (
        f"PUT /hello/{username} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    )
    conn.sendall(head.encode() + BODY[:body_bytes_sent])
    return conn


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(tmp_path: Path) -> None:
    database = tmp_path / "hello.db"
    port = free_port()
    with killed_at_exit(start_gunicorn(port, DATABASE_PATH=str(database))) as server:
        wait_for_status(f"http://127.0.0.1:{port}/readyz")
        # Hold the database's write lock, as a long checkpoint would: the PUTs below wait for it
        # (busy_timeout), so they are in flight inside the server when SIGTERM arrives.
        blocker = sqlite3.connect(database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        names = ["Ann", "Bea", "Cat", "Dot", "Eve"]
        in_flight = [send_put(port, name) for name in names]
        clients = [client_port(conn) for conn in in_flight]
        wait_until(
            lambda: server_has_read(port, clients), timeout=10, what="the server did not read the PUTs"
        )

        server.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # the point: the server does not quit while the PUTs wait for the lock
        assert server.poll() is None, "the server quit with requests in flight"
        # New connections are refused while draining.
        assert http_status(f"http://127.0.0.1:{port}/healthz", timeout=1) is None

        blocker.execute("COMMIT")
        blocker.close()
        answers = [conn.recv(4096).split(b"\r\n", 1)[0] for conn in in_flight]
        for conn in in_flight:
            conn.close()
        assert answers == [b"HTTP/1.1 204 No Content"] * len(names)
        assert server.wait(timeout=30) == 0

    # The database was closed cleanly: the last connection checkpointed and removed the WAL.
    assert not Path(f"{database}-wal").exists()
    check = sqlite3.connect(database)
    try:
        stored = check.execute("SELECT username FROM users ORDER BY username").fetchall()
    finally:
        check.close()
    assert stored == [(name,) for name in names]


def test_readiness_turns_503_at_sigterm_before_the_socket_closes(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/readyz"
    with killed_at_exit(start_gunicorn(port, DATABASE_PATH=str(tmp_path / "hello.db"))) as server:
        wait_for_status(url)
        server.send_signal(signal.SIGTERM)
        answers: list[int | None] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (not answers or answers[-1] is not None):
            answers.append(http_status(url, timeout=1))
            time.sleep(0.002)  # sampling: every answer from SIGTERM until the socket closes
        assert server.wait(timeout=30) == 0
    # The master passes SIGTERM on to the worker within milliseconds (200s until then); from then
    # on 503 while the worker still accepts, then the socket closes (None), and never 200 again.
    first_503 = answers.index(503)
    assert set(answers[:first_503]) <= {200}
    assert set(answers[first_503:-1]) == {503}
    assert answers[-1] is None


def test_a_body_cut_off_by_shutdown_gets_503_at_once_not_a_hang(tmp_path: Path) -> None:
    # Once aiohttp starts its shutdown it reads nothing more from open connections, so a request
    # whose body was still on its way can never complete: it must be answered (503, retry) rather
    # than left to hold the worker for the whole graceful timeout.
    database = tmp_path / "hello.db"
    port = free_port()
    with killed_at_exit(start_gunicorn(port, DATABASE_PATH=str(database))) as server:
        wait_for_status(f"http://127.0.0.1:{port}/readyz")
        conn = send_put(port, "Cut", body_bytes_sent=10)
        wait_until(
            lambda: server_has_read(port, [client_port(conn)]), timeout=10, what="the server read nothing"
        )
        server.send_signal(signal.SIGTERM)
        answer = conn.recv(4096)
        conn.close()
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"application/problem+json" in answer
        assert server.wait(timeout=30) == 0
    check = sqlite3.connect(database)
    try:
        assert check.execute("SELECT count(*) FROM users").fetchone() == (0,)
    finally:
        check.close()
