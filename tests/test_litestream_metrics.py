"""Litestream's metrics reach Prometheus through the service's metrics port; its debug pages do not.

A real Litestream (the project's litestream.yml, the binary from the virtualenv) listens on loopback;
the service's /metrics on METRICS_PORT carries its series after the service's own, and nothing else
of Litestream's port (Go's /debug/pprof/, /debug/vars) is served there.
"""

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from service.http import keys
from service.http.app import create_app
from service.settings import Config
from service.store.sqlite import migrate
from tests.conftest import TODAY
from tests.support import free_port, http_status, wait_until

ROOT = Path(__file__).resolve().parent.parent
LITESTREAM = Path(sys.executable).parent / "litestream"
Client = TestClient[web.Request, web.Application]
Litestream = tuple[str, "subprocess.Popen[bytes]"]

pytestmark = pytest.mark.slow


@pytest.fixture
def litestream_address(tmp_path: Path, database_path: Path) -> Iterator[Litestream]:
    """`litestream replicate` with the project's litestream.yml, metrics on a loopback port."""
    migrate(database_path)
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "DATABASE_PATH": str(database_path),
        "REPLICA_URL": f"file://{tmp_path / 'replica'}",
        "LITESTREAM_METRICS_ADDR": address,
        "LITESTREAM_SOCKET": str(tmp_path / "litestream.sock"),
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [str(LITESTREAM), "replicate", "-config", str(ROOT / "litestream.yml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def answering() -> bool:
        assert process.poll() is None, "Litestream exited at start"
        return http_status(f"http://{address}/metrics") == 200

    try:
        wait_until(answering, timeout=30, what="Litestream's metrics did not answer", interval=0.1)
        yield address, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


async def _get(client: Client, path: str) -> tuple[int, str]:
    port = client.app[keys.STATE].metrics_port
    async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


def _listeners(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


async def test_litestream_series_are_served_on_the_service_metrics_port_and_pprof_is_not(
    aiohttp_client: AiohttpClient,
    config: Config,
    litestream_address: Litestream,
) -> None:
    address, litestream = litestream_address
    # Litestream listens on loopback only: 127.0.0.1 is 0100007F in /proc/net/tcp.
    assert _listeners(int(address.rpartition(":")[2])) == {"0100007F"}
    client = await aiohttp_client(
        create_app(dataclasses.replace(config, litestream_metrics_addr=address), clock=lambda: TODAY)
    )
    status, text = await _get(client, "/metrics")
    assert status == 200
    # One exposition that parses, with no family declared twice (Prometheus would reject the whole
    # scrape). Names as declared: the parser drops counters' "_total", which Go's names collide on.
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families)), sorted(families)
    assert list(text_string_to_metric_families(text))
    assert "hello_users_stored" in families and "hello_disk_full" in families
    litestream_families = [name for name in families if name.startswith("litestream_")]
    assert "litestream_disk_full" in litestream_families, families
    assert "hello_litestream_metrics_up 1.0" in text
    print(f"\n{len(litestream_families)} litestream_* families served on the service's metrics port")

    # Litestream's debug pages are on its own port only, never on the service's.
    assert http_status(f"http://{address}/debug/pprof/") == 200
    for path in ("/debug/pprof/", "/debug/pprof/cmdline", "/debug/vars", "/metrics/../debug/pprof/"):
        status, body = await _get(client, path)
        assert status == 404, (path, status)
        assert "goroutine" not in body

    # Litestream gone: the scrape still answers with the service's own series and counts the miss.
    os.killpg(litestream.pid, signal.SIGKILL)
    litestream.wait(timeout=10)
    status, text = await _get(client, "/metrics")
    assert status == 200
    assert "hello_litestream_metrics_up 0.0" in text
    assert "hello_litestream_metrics_failures_total 1.0" in text
    assert "litestream_disk_full" not in text
    assert "hello_users_stored" in text
