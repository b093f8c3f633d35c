"""Drill: a rolling replacement of the PostgreSQL profile behind a load balancer, under load.

A real PostgreSQL server (the session's ``postgres_server``), two production servers (gunicorn with
gunicorn.conf.py, ``DATABASE_URL`` set, each on its own loopback port) and a real HAProxy on loopback
in front of them, checking ``/readyz`` every 200 ms as Fly's proxy and Kubernetes' endpoints do.
HAProxy has four server lines from the start: two for the first generation, two for their
replacements (down until something listens there).

Client threads PUT new users and GET them back through HAProxy, steadily and within bounds. Meanwhile,
for each old process in turn: a new one is started on its own port, the test waits until HAProxy
reports it UP, then the old one gets SIGTERM and must exit 0. Between SIGTERM and HAProxy's next check
the old process still serves (``/readyz`` answers 503 at once; gunicorn stops accepting about a second
later and drains); a request that reaches a listener that has just closed is retried by HAProxy
(``retries``, ``option redispatch``) on the other server.

Every request must succeed (no failed request) and every acknowledged write (204) must be in
PostgreSQL afterwards. Prints requests, failed, the longest gap between successful answers, and the
acknowledged writes lost. Without HAProxy the drill skips and says why, unless ``REQUIRE_HAPROXY=1``
or ``CI=true`` (``.ci/run`` installs it), where it fails instead.
"""

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.drills.load import PutThenGet, start_gunicorn_on_postgres
from tests.drills.stack import record_figures
from tests.pg_server import PostgresServer
from tests.support import free_port, wait_for_status, wait_until

CLIENT_TIMEOUT = 10.0
# SIGTERM to exit: gunicorn's drain budget (SHUTDOWN_TIMEOUT below) plus a margin.
SHUTDOWN_TIMEOUT = 5
EXIT_BOUND = SHUTDOWN_TIMEOUT + 10.0
LOAD_SECONDS_BOUND = 90.0
LOAD_REQUESTS_BOUND = 200_000
# A request line of HAProxy's log (option httplog) whose retries field (the fifth of the connection
# counts, "+" when redispatched) is not zero: a request that HAProxy had to try again.
RETRIED = re.compile(r" \d+/\d+/\d+/\d+/\+?[1-9]\d* \d+/\d+ \"(?:PUT|GET) /hello/")


def haproxy_required() -> bool:
    return os.environ.get("REQUIRE_HAPROXY") == "1" or os.environ.get("CI") == "true"


def haproxy_binary() -> str:
    """HAProxy's program; skips (or fails where it is required) when it is not installed."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        reason = "HAProxy is not installed (no haproxy on PATH or in /usr/sbin): apt-get install haproxy"
        if haproxy_required():
            pytest.fail(f"HAProxy is required here (REQUIRE_HAPROXY=1 or CI=true) but {reason}")
        pytest.skip(reason)
    return found


def haproxy_config(front_port: int, stats_port: int, backends: dict[str, int]) -> str:
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{port} check inter 200ms fastinter 200ms downinter 200ms rise 1 fall 1"
        for name, port in backends.items()
    )
    return f"""\
global
    log stderr format raw local0 info
    maxconn 512

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 15s
    timeout server 15s
    timeout check 1s
    timeout http-request 5s
    # A connection refused (or closed before any answer) by a server that is going away is tried
    # again, on the other server (redispatch on every retry).
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    # One request per server connection: no idle connection to a server that has gone.
    option http-server-close

frontend front
    bind 127.0.0.1:{front_port}
    default_backend app

backend app
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


def start_gunicorn(url: str, port: int, log: Path) -> "subprocess.Popen[bytes]":
    return start_gunicorn_on_postgres(url, port, log, {"SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)})


def server_states(stats_url: str) -> dict[str, str]:
    """HAProxy's view of each server of the ``app`` backend: name -> UP, DOWN, ... (from its CSV)."""
    with urllib.request.urlopen(f"{stats_url};csv", timeout=5) as response:
        text = response.read().decode()
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        row["svname"]: row["status"] for row in rows if row["pxname"] == "app" and row["svname"] != "BACKEND"
    }


@dataclass
class Fleet:
    """Every process the drill starts, each in its own process group, all stopped at teardown."""

    processes: list["subprocess.Popen[bytes]"] = field(default_factory=list)

    def add(self, process: "subprocess.Popen[bytes]") -> "subprocess.Popen[bytes]":
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    started = Fleet()
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def haproxy() -> str:
    return haproxy_binary()


@pytest.mark.slow
def test_rolling_replacement_behind_haproxy_fails_no_request_and_loses_no_write(
    haproxy: str, postgres_server: PostgresServer, fleet: Fleet, tmp_path: Path
) -> None:
    database = postgres_server.create_database()
    url = postgres_server.url(database)
    ports = {name: free_port() for name in ("old1", "old2", "new1", "new2")}
    front_port, stats_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{front_port}"
    stats_url = f"http://127.0.0.1:{stats_port}/stats"
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(front_port, stats_port, ports))
    check = subprocess.run(
        [haproxy, "-c", "-q", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr + check.stdout

    log = tmp_path / "gunicorn.log"
    haproxy_log = (tmp_path / "haproxy.log").open("ab")
    old = {}
    for name in ("old1", "old2"):
        old[name] = fleet.add(start_gunicorn(url, ports[name], log))
    for name in ("old1", "old2"):
        wait_for_status(f"http://127.0.0.1:{ports[name]}/readyz", 200, timeout=60)
    balancer = fleet.add(
        subprocess.Popen(
            [haproxy, "-db", "-f", str(config)],
            start_new_session=True,
            stdout=haproxy_log,
            stderr=subprocess.STDOUT,
        )
    )
    wanted = {"old1": "UP", "old2": "UP", "new1": "DOWN", "new2": "DOWN"}

    def seen(expected: dict[str, str]) -> Callable[[], bool]:
        """A check: HAProxy reports every named server in the expected state."""

        def check() -> bool:
            try:
                states = server_states(stats_url)
            except OSError:
                return False
            return all(states.get(name, "").startswith(state) for name, state in expected.items())

        return check

    def answered_since(moment: float, count: int = 50) -> Callable[[], bool]:
        return lambda: load.successes_since(moment) >= count

    wait_until(seen(wanted), 30, f"HAProxy to see {wanted}")

    load = PutThenGet(
        base_url,
        pause=0.005,
        client_timeout=CLIENT_TIMEOUT,
        seconds=LOAD_SECONDS_BOUND,
        max_answers=LOAD_REQUESTS_BOUND,
        prefix="z",
    )
    replacements: list[tuple[float, float]] = []
    exit_codes: list[int | None] = []
    try:
        load.start()
        wait_until(answered_since(time.monotonic()), 30, "the load to get going")
        for old_name, new_name in (("old1", "new1"), ("old2", "new2")):
            began = time.monotonic()
            fleet.add(start_gunicorn(url, ports[new_name], log))
            healthy = wait_until(seen({new_name: "UP"}), 60, f"HAProxy to see {new_name} UP")
            process = old[old_name]
            os.killpg(process.pid, signal.SIGTERM)
            try:
                exit_codes.append(process.wait(timeout=EXIT_BOUND))
            except subprocess.TimeoutExpired:
                exit_codes.append(None)
            replacements.append((healthy, time.monotonic() - began - healthy))
            # Answers keep coming after the old one is gone, before the next step.
            wait_until(answered_since(time.monotonic()), 30, "answers after the replacement")
        final = {"old1": "DOWN", "old2": "DOWN", "new1": "UP", "new2": "UP"}
        wait_until(seen(final), 10, f"HAProxy to see {final}")
        time.sleep(1.0)  # pacing: the load goes on against the new processes alone for a second
    finally:
        load.stop()
        balancer.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
        try:
            balancer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            balancer.kill()
            balancer.wait(timeout=10)
        haproxy_log.close()

    stored = dict(
        postgres_server.sql("SELECT username, to_char(date_of_birth, 'YYYY-MM-DD') FROM users", database)
    )
    lost = {name: born for name, born in load.acknowledged.items() if stored.get(name) != born}
    failed = load.failed()
    statuses: dict[int, int] = {}
    for answer in load.answers:
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
    balancer_log = (tmp_path / "haproxy.log").read_text(errors="replace")
    retried = len(RETRIED.findall(balancer_log))
    served = {name: balancer_log.count(f" front app/{name} ") for name in ports}
    record_figures(
        "zero-downtime",
        requests=len(load.answers),
        failed=len(failed),
        statuses=",".join(f"{status}:{count}" for status, count in sorted(statuses.items())),
        longest_gap_s=round(load.longest_gap(), 3),
        acknowledged_writes=len(load.acknowledged),
        acknowledged_writes_lost=len(lost),
        new_healthy_s=",".join(f"{healthy:.2f}" for healthy, _ in replacements),
        old_exit_s=",".join(f"{stopped:.2f}" for _, stopped in replacements),
        retried_by_haproxy=retried,
        served_by=",".join(f"{name}:{count}" for name, count in served.items()),
    )
    assert exit_codes == [0, 0], f"old processes' exit codes: {exit_codes}"
    assert not failed, f"failed requests: {statuses}; first: {failed[:5]}"
    assert not lost, f"acknowledged writes lost: {sorted(lost)[:10]}"
    assert len(load.acknowledged) >= 100, "too little load to mean anything"
    assert all(served.values()), f"every process, old and new, must have served requests: {served}"
