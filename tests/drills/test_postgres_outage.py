"""Drill: PostgreSQL goes away under load in the PostgreSQL profile, then comes back.

A real server (``tests/pg_server.py``, a cluster of its own so that the other tests' server is not
disturbed) and the production server (gunicorn with gunicorn.conf.py, ``DATABASE_URL`` set). Four
clients PUT new users and GET them back without pause while the database is

1. stopped as an operator or a failover would (``pg_ctl stop -m fast``), then started again, and
2. frozen (SIGSTOP on every server process: connections open, nothing answers), then thawed.

Every request must get an answer within the bound (the statement budget plus a margin, never the
client's own timeout), each a 2xx/404 or a 503 problem with Retry-After; ``/readyz`` 503 and
``/healthz`` 200 during the outage; the service answers again by itself once the database is back;
and every acknowledged write (204) is in PostgreSQL afterwards. Prints the figures.
"""

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.drills.load import PutThenGet, start_gunicorn_on_postgres
from tests.drills.stack import record_figures
from tests.pg_server import PostgresServer, postgres_server
from tests.support import child_pids, free_port, http_status, wait_for_status, wait_until

STATEMENT_TIMEOUT = 2.0
# The longest any answer may take: the statement budget, plus the HTTP round trip and scheduling on a
# busy 2-core machine. A client's own timeout (here 15 s) must never be what ends a request.
ANSWER_BOUND = STATEMENT_TIMEOUT + 1.5
CLIENT_TIMEOUT = 15.0
OUTAGE_SECONDS = 3.0


def start_gunicorn(url: str, port: int, log: Path) -> "subprocess.Popen[bytes]":
    return start_gunicorn_on_postgres(
        url,
        port,
        log,
        {
            "DATABASE_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT),
            "DATABASE_CONNECT_TIMEOUT": str(STATEMENT_TIMEOUT),
            "SHUTDOWN_TIMEOUT": "5",
        },
    )


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    with postgres_server() as started:
        yield started


def outage(
    load: PutThenGet, base_url: str, begin: Callable[[], object], end: Callable[[], object]
) -> tuple[float, float]:
    """``begin()`` the outage; time to the first 503; ``end()`` it after a while; time to the first 204."""
    began = time.monotonic()
    begin()
    first_503 = wait_until(lambda: any(a.status == 503 for a in load.since(began)), 10, "a 503", 0.02)
    assert http_status(f"{base_url}/readyz", timeout=CLIENT_TIMEOUT) == 503
    assert http_status(f"{base_url}/healthz", timeout=CLIENT_TIMEOUT) == 200
    time.sleep(OUTAGE_SECONDS)  # the point: the outage lasts this long
    end()
    ended = time.monotonic()
    recovery = wait_until(
        lambda: any(a.status == 204 and a.started >= ended for a in load.since(ended)), 30, "a 204", 0.02
    )
    wait_for_status(f"{base_url}/readyz", 200, timeout=30)
    return first_503, recovery


def signal_cluster(server: PostgresServer, signum: int) -> None:
    postmaster = server.postmaster_pid()
    for pid in [postmaster, *child_pids(postmaster)]:
        os.kill(pid, signum)


@pytest.mark.slow
def test_postgresql_down_and_frozen_answers_503_quickly_and_loses_no_acknowledged_write(
    server: PostgresServer, tmp_path: Path
) -> None:
    database = server.create_database()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    app = start_gunicorn(server.url(database), port, log)
    load = PutThenGet(base_url, client_timeout=CLIENT_TIMEOUT, seconds=120.0)
    try:
        wait_for_status(f"{base_url}/readyz", 200, timeout=60)
        started = time.monotonic()
        load.start()
        wait_until(lambda: load.successes_since(started) >= 50, 30, "the load to get going")

        stop_503, stop_recovery = outage(load, base_url, lambda: server.stop("fast"), server.start)
        time.sleep(1.0)  # pacing: a second of steady load between the two outages
        frozen = False

        def freeze() -> None:
            nonlocal frozen
            signal_cluster(server, signal.SIGSTOP)
            frozen = True

        def thaw() -> None:
            nonlocal frozen
            signal_cluster(server, signal.SIGCONT)
            frozen = False

        try:
            freeze_503, freeze_recovery = outage(load, base_url, freeze, thaw)
        finally:
            if frozen:
                thaw()
        time.sleep(1.0)  # pacing: a second of steady load after the last outage
    finally:
        load.stop()
        os.killpg(app.pid, signal.SIGTERM)
        app.wait(timeout=30)

    answers = load.answers
    statuses: dict[int, int] = {}
    for answer in answers:
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
    unavailable = [a for a in answers if a.status == 503]
    slowest = max(a.seconds for a in answers)
    stored = dict(server.sql("SELECT username, to_char(date_of_birth, 'YYYY-MM-DD') FROM users", database))
    lost = {name: born for name, born in load.acknowledged.items() if stored.get(name) != born}

    record_figures(
        "postgres-outage",
        requests=len(answers),
        statuses=",".join(f"{status}:{count}" for status, count in sorted(statuses.items())),
        stop_first_503_s=round(stop_503, 2),
        stop_recovery_s=round(stop_recovery, 2),
        freeze_first_503_s=round(freeze_503, 2),
        freeze_recovery_s=round(freeze_recovery, 2),
        slowest_answer_s=round(slowest, 2),
        acknowledged_writes=len(load.acknowledged),
        acknowledged_writes_lost=len(lost),
    )
    errors = [line for line in log.read_text().splitlines() if '"ERROR"' in line or "Traceback" in line]
    assert set(statuses) <= {200, 204, 503}, (statuses, errors[:3])
    assert unavailable and all(a.retry_after for a in unavailable)
    assert slowest < ANSWER_BOUND, f"an answer took {slowest:.2f} s"
    assert not lost, f"acknowledged writes lost: {sorted(lost)[:10]}"
