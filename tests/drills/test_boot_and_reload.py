"""Drill: a worker that cannot start exits (metrics port taken), and SIGHUP reloads under load."""

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.drills.hardening import Prober
from tests.drills.stack import base_env, record_figures, tool
from tests.support import (
    ROOT,
    child_pids,
    free_port,
    killed_at_exit,
    put_birthday,
    start_gunicorn,
    stop,
    wait_for_status,
    wait_until,
)


def test_gunicorn_exits_with_the_boot_error_code_when_the_metrics_port_is_taken(tmp_path: Path) -> None:
    database = tmp_path / "hello.db"
    log_path = tmp_path / "gunicorn.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        started = time.monotonic()
        settings = {"DATABASE_PATH": str(database), "METRICS_PORT": str(taken.getsockname()[1])}
        with killed_at_exit(start_gunicorn(free_port(), log_path, **settings)) as process:
            code = process.wait(timeout=30)
        seconds = time.monotonic() - started
    log = log_path.read_text()
    record_figures("boot-failure-gunicorn", exit_code=code, seconds_to_exit=f"{seconds:.2f}")
    assert code == 3, log  # gunicorn's WORKER_BOOT_ERROR: the master stops too
    assert "Worker failed to boot" in log
    assert "database closed" in log  # the store opened before the failure was released
    assert not Path(f"{database}-wal").exists(), "the store was not closed cleanly"


def test_python_m_service_exits_non_zero_when_the_metrics_port_is_taken(tmp_path: Path) -> None:
    database = tmp_path / "hello.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **base_env(),
            "PORT": str(free_port()),
            "METRICS_PORT": str(taken.getsockname()[1]),
            "DATABASE_PATH": str(database),
        }
        started = time.monotonic()
        process = subprocess.run(
            [tool("python"), "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
        )
        seconds = time.monotonic() - started
    record_figures(
        "boot-failure-python-m-service", exit_code=process.returncode, seconds_to_exit=f"{seconds:.2f}"
    )
    assert process.returncode == 1, process.stderr
    entries = [json.loads(line) for line in process.stderr.splitlines()]  # every line is JSON
    assert [e["message"] for e in entries if e["level"] == "error"] == [
        "start-up failed; releasing what it had acquired",
        "start-up failed",
    ]
    assert any(e["message"] == "database closed" for e in entries)


@pytest.mark.slow
def test_sighup_reloads_without_a_failed_request(tmp_path: Path) -> None:
    port = free_port()
    process = start_gunicorn(port, tmp_path / "gunicorn.log", DATABASE_PATH=str(tmp_path / "hello.db"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_status(f"{base}/readyz")
        assert put_birthday(base, "Probe", "1990-01-01") == 204
        old_workers = set(child_pids(process.pid))
        assert len(old_workers) == 1

        def replaced() -> bool:
            workers = set(child_pids(process.pid))
            return bool(workers) and not workers & old_workers

        with Prober([f"{base}/hello/Probe", f"{base}/readyz"], max_requests=1500, max_seconds=12) as probe:
            time.sleep(1.5)  # pacing: probes of the running worker before the reload
            hup_at = time.monotonic()
            process.send_signal(signal.SIGHUP)
            wait_until(replaced, timeout=30, what="the old worker to be replaced")
            replaced_after = time.monotonic() - hup_at
            time.sleep(2.0)  # pacing: probes of the new worker after the reload
        assert process.poll() is None, "gunicorn exited on SIGHUP"
        wait_for_status(f"{base}/readyz")
        api = probe.statuses("/hello/")
        ready = probe.statuses("/readyz")
        record_figures(
            "sighup",
            requests=len(probe.results),
            api_failed=sum(status != 200 for status in api),
            readyz_200=ready.count(200),
            readyz_503=ready.count(503),
            readyz_no_answer=ready.count(None),
            old_worker_gone_after=f"{replaced_after:.2f}s",
            **{f"latency_{key}_ms": value for key, value in probe.latency_ms().items()},
        )
        assert len(api) > 50
        assert all(status == 200 for status in api), api
        # The old worker answers 503 (draining) from SIGTERM until it stops accepting; the new
        # one answers 200. Never no answer.
        assert None not in ready and set(ready) <= {200, 503}
    finally:
        assert stop(process) == 0
