"""Drill: a slowloris flood (thousands of connections sending a header byte a second) against a real
gunicorn process, while a second client measures GET latency."""

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.drills.hardening import Prober
from tests.drills.stack import record_figures
from tests.support import (
    free_port,
    metrics_text,
    put_birthday,
    raise_open_files_limit,
    start_gunicorn,
    stop,
    wait_for_status,
    wait_until,
)

FLOOD_SOCKETS = 3000
FLOOD_SECONDS = 20.0
HEADER_TIMEOUT = 4.0


@pytest.fixture(autouse=True)
def enough_open_files() -> Iterator[None]:
    # The flood and gunicorn's worker (which inherits the limit) each hold FLOOD_SOCKETS sockets.
    yield from raise_open_files_limit(FLOOD_SOCKETS + 1000)


HEAD_TIMEOUT_LINE = "connections closed: no whole request head within HEADER_TIMEOUT"
HEAD = b"GET /hello/Probe HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nX-Padding: " + b"x" * 64


@pytest.mark.slow
def test_a_slowloris_flood_is_cut_off_and_the_service_keeps_answering(tmp_path: Path) -> None:
    log_path = tmp_path / "gunicorn.log"
    port, metrics_port = free_port(), free_port()
    process = start_gunicorn(
        port,
        log_path,
        DATABASE_PATH=str(tmp_path / "hello.db"),
        METRICS_PORT=str(metrics_port),
        HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        # Above the flood: this drill measures the head timeout; the cap has tests of its own.
        MAX_CONNECTIONS=str(FLOOD_SOCKETS + 1000),
    )
    base = f"http://127.0.0.1:{port}"
    flood: list[socket.socket] = []
    answers: dict[str, int] = {}

    def new_log_entries() -> list[dict[str, object]]:
        lines = log_path.read_text().splitlines()[lines_before:]
        return [json.loads(line) for line in lines if line.startswith("{")]

    def every_head_timeout_logged() -> bool:
        """The rate-limited lines' counts add up to every head time-out the server counted."""
        logged = sum(
            int(str(e.get("count", 0))) for e in new_log_entries() if e.get("message") == HEAD_TIMEOUT_LINE
        )
        return logged == _counted(metrics_text(metrics_port), route="connection", status="408")

    try:
        wait_for_status(f"{base}/readyz")
        assert put_birthday(base, "Probe", "1990-01-01") == 204
        lines_before = len(log_path.read_text().splitlines())

        with Prober(
            [f"{base}/hello/Probe"], interval=0.02, max_requests=4000, max_seconds=FLOOD_SECONDS + 60
        ) as probe:
            started = time.monotonic()
            for _ in range(FLOOD_SOCKETS):
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                conn.setblocking(False)
                flood.append(conn)
            opened_in = time.monotonic() - started
            open_conns = dict.fromkeys(flood, 0)
            cut_after: list[float] = []
            # Every socket gets the head timeout and some slack from the moment the last one opened
            # (opening them all took from 6 to 18 s on these shared machines).
            deadline = min(time.monotonic() + HEADER_TIMEOUT + 4.0, started + FLOOD_SECONDS + 60)
            while open_conns and time.monotonic() < deadline:
                tick = time.monotonic()
                for conn in list(open_conns):
                    sent = open_conns[conn]
                    try:
                        data = conn.recv(4096)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data is not None:  # the server answered or closed: the flood socket is done
                        status = data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
                        answers[status] = answers.get(status, 0) + 1
                        cut_after.append(time.monotonic() - started)
                        del open_conns[conn]
                        continue
                    try:
                        conn.send(HEAD[sent % len(HEAD) : sent % len(HEAD) + 1])
                        open_conns[conn] = sent + 1
                    except OSError:
                        answers["send failed"] = answers.get("send failed", 0) + 1
                        del open_conns[conn]
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))  # pacing: a byte a second
            still_open = len(open_conns)
            time.sleep(1.0)  # pacing: a little more probing after the flood
        # The last rate-limited summary line is written up to a second after the last time-out.
        wait_until(every_head_timeout_logged, timeout=10, what="the last summary line of head time-outs")
        log_lines = log_path.read_text().splitlines()[lines_before:]
        entries = [json.loads(line) for line in log_lines if line.startswith("{")]
        non_request = [e for e in entries if e.get("message") != "request"]
        statuses = probe.statuses("/hello/")
        latency = probe.latency_ms()
        record_figures(
            "slowloris",
            flood_sockets=FLOOD_SOCKETS,
            opened_in=f"{opened_in:.2f}s",
            flood_answers=answers,
            still_open_at_end=still_open,
            last_cut_at=f"{max(cut_after, default=0):.1f}s",
            gets=len(statuses),
            get_errors=sum(status != 200 for status in statuses),
            **{f"get_{key}_ms": value for key, value in latency.items()},
            log_lines=len(log_lines),
            log_lines_not_access=len(non_request),
        )
        assert statuses and all(status == 200 for status in statuses), statuses
        assert still_open == 0, "slow connections outlived the head timeout"
        assert answers.get("408", 0) >= FLOOD_SOCKETS * 0.9, answers
        # One access line per probe; besides those, a summary line a second at most.
        assert len(non_request) <= FLOOD_SECONDS + 10, non_request[:20]
        assert len(log_lines) == len(entries), "a log line that is not JSON"
        wait_for_status(f"{base}/readyz")
    finally:
        for conn in flood:
            conn.close()
        assert stop(process) == 0


def _counted(metrics: str, route: str, status: str) -> int:
    """hello_http_requests_total of ``route`` and ``status``, summed over methods, from a scrape."""
    total = 0.0
    for line in metrics.splitlines():
        if (
            line.startswith("hello_http_requests_total{")
            and f'route="{route}"' in line
            and f'status="{status}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)
