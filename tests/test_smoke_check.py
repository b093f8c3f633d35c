"""scripts/smoke_check.py, the pipeline's smoke and contract check, run as a process.

Against the real service (``python -m service`` on a free port and a real SQLite file) every case
holds; against a server that answers 200 to everything, and against nothing at all, it fails and says
which cases broke.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import free_port, wait_for_status

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "scripts" / "smoke_check.py"


def _smoke(url: str, user: str = "Deploysmoke", attempts: str = "3") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SMOKE), url, user, attempts, "0.1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def service_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    database = tmp_path / "hello.db"
    env = {
        **os.environ,
        "PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "DATABASE_PATH": str(database),
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_status(f"{url}/readyz")
        yield url, database
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_every_case_holds_against_the_real_service(service_url: tuple[str, Path]) -> None:
    url, database = service_url
    result = _smoke(url)

    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    passed = [line for line in lines if line.startswith("smoke: ok ")]
    assert len(passed) == 7, lines
    for case in (
        "-> 204",
        "-> 200 greeting",
        "(never stored) -> 404",
        "PUT /hello/Bad1Name -> 400",
        "GET /hello/Bad1Name -> 400",
        "(future) -> 400, nothing changed",
        "GET /readyz -> 200",
    ):
        assert any(case in line for line in passed), (case, lines)  # fmt: skip
    assert lines[-1] == f"smoke: {url} is ready and answers every contract case"

    # It wrote its one user, with the past date, and nothing else: the future date changed nothing.
    import pysqlite3.dbapi2 as sqlite

    connection = sqlite.connect(f"file:{database}?mode=ro", uri=True)
    try:
        assert connection.execute("SELECT username, date_of_birth FROM users").fetchall() == [
            ("Deploysmoke", "2000-02-29")
        ]
    finally:
        connection.close()

    # Run again (every deploy does): the user exists already, and every case still holds.
    assert _smoke(url).returncode == 0


def test_a_server_that_breaks_the_contract_fails_naming_the_cases() -> None:
    class AlwaysOk(BaseHTTPRequestHandler):
        def _ok(self) -> None:
            body = json.dumps({"message": "Hello, Deploysmoke! Your birthday is in 3 day(s)"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = _ok
        do_PUT = _ok

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysOk)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = _smoke(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()

    assert result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("smoke: FAIL ")]
    # Each failing case, by its name up to the colon; the unknown name and the future year vary.
    names = [re.sub(r"Smokeunknown[A-Za-z]+|\d{4}-01-01", "X", line.split(":")[1]) for line in failed]
    assert names == [
        " FAIL PUT /hello/Deploysmoke 2000-02-29 -> 204",
        " FAIL GET /hello/X (never stored) -> 404",
        " FAIL PUT /hello/Bad1Name -> 400",
        " FAIL GET /hello/Bad1Name -> 400",
        " FAIL PUT /hello/Deploysmoke X (future) -> 400, nothing changed",
    ]
    assert "failed 5 check(s)" in result.stderr.splitlines()[-1]


def test_nothing_listening_fails_after_the_attempts() -> None:
    result = _smoke(f"http://127.0.0.1:{free_port()}", attempts="2")
    assert result.returncode == 1
    assert result.stderr.count("/readyz answered nothing") == 2
    assert result.stderr.splitlines()[-1].endswith("failed 1 check(s): /readyz never answered 200")


def test_a_user_name_the_service_would_refuse_is_a_usage_error() -> None:
    result = _smoke("http://127.0.0.1:9", user="Deploy-smoke")
    assert result.returncode == 2 and "1 to 64 ASCII letters" in result.stderr
