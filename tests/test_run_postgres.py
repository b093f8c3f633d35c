"""``make run-postgres``: a throwaway PostgreSQL server, the production server on it, Ctrl-C stops both.

Needs Debian's ``postgresql`` (skips and says so without it, fails under CI=true or REQUIRE_POSTGRES=1).
"""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.pg_server import server_binaries, skip_or_fail
from tests.support import free_port, wait_for_status

ROOT = Path(__file__).resolve().parents[1]


def _put(url: str) -> int:
    import urllib.request

    request = urllib.request.Request(
        url, data=b'{"dateOfBirth": "1990-05-17"}', method="PUT", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        status: int = response.status
        return status


def test_run_postgres_serves_on_a_throwaway_server_and_ctrl_c_stops_both() -> None:
    if server_binaries() is None:
        skip_or_fail("PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "METRICS_PORT": str(metrics),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    before = set(Path(tempfile.gettempdir()).glob("hello-pg-*"))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_postgres.py")],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_status(f"http://127.0.0.1:{port}/readyz", timeout=90)
        assert _put(f"http://127.0.0.1:{port}/hello/Alice") == 204
        folders = list(set(Path(tempfile.gettempdir()).glob("hello-pg-*")) - before)
        assert len(folders) == 1, folders
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]
    assert not any(folder.exists() for folder in folders), "the throwaway server's folder stays"
